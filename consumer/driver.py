"""The batch driver: runs a :class:`~consumer.batching.Batcher` on the event loop.

Self-contained, like Ray Serve's ``batching.py``: the caller hands in items with
:meth:`BatchDriver.submit` and supplies the coroutine each batch is dispatched to. The
driver owns the batching rule's clock (one asyncio timer, armed for the oldest waiting
item), the in-flight slots (a slot frees when its batch's coroutine returns or
raises), and the tasks that run the batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from consumer.batching import Batcher, Step

logger = logging.getLogger("rabbit_serve.consumer")

T = TypeVar("T")

# handle(batch, alone): ``alone`` when this batch is the only one in flight and nothing
# waits behind it (a lone request the classifier may give more threads).
BatchHandler = Callable[[list[T], bool], Awaitable[None]]
ErrorHandler = Callable[[list[T], Exception], Awaitable[None]]


class BatchDriver(Generic[T]):
    """Feeds :class:`Batcher` events with the loop's clock and dispatches its batches.

    ``on_error`` gets a batch whose handler raised (after it was logged), so its items
    can be settled; an exception is never dropped silently.
    """

    def __init__(
        self,
        batcher: Batcher[T],
        handle: BatchHandler[T],
        *,
        on_error: ErrorHandler[T] | None = None,
    ) -> None:
        self._batcher = batcher
        self._handle = handle
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._items_in_flight = 0
        self._closed = False

    @property
    def waiting(self) -> int:
        return self._batcher.waiting

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def items_in_flight(self) -> int:
        """Items in the batches in flight."""
        return self._items_in_flight

    @property
    def timer_at(self) -> float | None:
        """Loop time the armed timer fires at, if one is armed."""
        return self._timer_at

    def submit(self, item: T) -> None:
        if self._closed:
            raise RuntimeError("the batch driver is closed")
        self._apply(self._batcher.add(item, self._loop.time()))

    async def close(self, timeout: float | None = None) -> list[T]:
        """Dispatch nothing more, let the batches in flight finish (up to ``timeout``), and
        return what was still waiting, never dispatched."""
        self._closed = True
        self._arm(None)
        left = self._batcher.drain()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        return left

    def _apply(self, step: Step[T]) -> None:
        """Dispatch what the batcher released and keep exactly one timer armed."""
        for batch in step.batches:
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm(None if self._closed else step.wake_at)

    def _arm(self, wake_at: float | None) -> None:
        if wake_at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, wake_at
        if wake_at is not None:
            self._timer = self._loop.call_at(wake_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._apply(self._batcher.on_timer(self._loop.time()))

    async def _run(self, batch: list[T]) -> None:
        alone = self._batcher.in_flight <= 1 and self._batcher.waiting == 0
        self._items_in_flight += len(batch)
        try:
            await self._handle(batch, alone)
        except Exception as exc:
            logger.exception("a batch of %d failed unexpectedly", len(batch))
            if self._on_error is not None:
                try:
                    await self._on_error(batch, exc)
                except Exception:
                    logger.exception("settling a failed batch of %d failed too", len(batch))
        finally:
            self._items_in_flight -= len(batch)
            # Frees the slot; an overdue batch that waited for it leaves now.
            self._apply(self._batcher.on_done(self._loop.time()))
