"""The batching rule, with no I/O and no clock of its own, so it tests without a broker.

A batch goes out when it holds ``max_size`` items, or ``timeout`` seconds after
*its own* first item arrived, whichever comes first -- provided fewer than
``max_in_flight`` batches are still at the classifier. While every slot is busy,
items keep collecting, so batches grow under load instead of queueing up small.

With ``dispatch_when_idle`` (the default), nothing waits while no batch at all is
in flight: a lone request at an idle classifier goes out at once instead of
sitting out ``timeout``. Under load there is always a batch in flight, so the
size/timeout rule above decides.

The caller feeds events (:meth:`add`, :meth:`on_timer`, :meth:`on_done`) with the
current time, dispatches the batches each event returns, and keeps one timer
armed for :attr:`Step.wake_at`. A timer that fires for a batch which already
left (a stale timer) finds nothing due and does nothing.

With a ``weight`` (an image's decoded pixels, say) and ``max_weight``, a batch also
closes early when the next item would push its total weight past ``max_weight``: that
batch is complete and goes out like a full one. An item heavier than ``max_weight`` on
its own still goes, alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Step(Generic[T]):
    """What the caller must do after an event."""

    batches: list[list[T]]
    # When the oldest waiting item's batch falls due, if a timer is needed for it.
    wake_at: float | None


@dataclass
class Batcher(Generic[T]):
    max_size: int
    timeout: float
    max_in_flight: int = 1
    dispatch_when_idle: bool = True
    # Off unless both are given; an item's weight is taken once, when it arrives.
    weight: Callable[[T], int] | None = field(default=None, kw_only=True)
    max_weight: int = field(default=0, kw_only=True)
    # (item, arrived at, weight)
    _waiting: deque[tuple[T, float, int]] = field(default_factory=deque)
    _in_flight: int = 0

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be >= 1")
        if self.timeout < 0:
            raise ValueError("timeout must be >= 0")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.max_weight < 0:
            raise ValueError("max_weight must be >= 0")

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def add(self, item: T, now: float) -> Step[T]:
        """An item arrived at ``now``."""
        weight = self.weight(item) if self.weight is not None and self.max_weight > 0 else 0
        self._waiting.append((item, now, weight))
        return self._pump(now)

    def on_timer(self, now: float) -> Step[T]:
        """The armed timer fired (perhaps late, early or stale: the rule re-checks)."""
        return self._pump(now)

    def on_done(self, now: float) -> Step[T]:
        """A dispatched batch finished, freeing its slot."""
        if self._in_flight <= 0:
            raise RuntimeError("on_done without a batch in flight")
        self._in_flight -= 1
        return self._pump(now)

    def drain(self) -> list[T]:
        """Everything still waiting, e.g. at shutdown."""
        items = [item for item, _, _ in self._waiting]
        self._waiting.clear()
        return items

    def _next_batch(self) -> tuple[int, bool]:
        """How many waiting items the next batch takes, and whether it is complete (full,
        or closed by the weight budget) rather than still open to more items."""
        limit = min(self.max_size, len(self._waiting))
        if self.max_weight <= 0:
            return limit, limit == self.max_size
        count, total = 0, 0
        for _, _, weight in self._waiting:
            if count == limit or (count > 0 and total + weight > self.max_weight):
                break
            count, total = count + 1, total + weight
        return count, count == self.max_size or count < len(self._waiting)

    def _pump(self, now: float) -> Step[T]:
        batches: list[list[T]] = []
        while self._waiting and self._in_flight < self.max_in_flight:
            due_at = self._waiting[0][1] + self.timeout
            idle = self.dispatch_when_idle and self._in_flight == 0
            count, complete = self._next_batch()
            if not complete and now < due_at and not idle:
                break
            batches.append([self._waiting.popleft()[0] for _ in range(count)])
            self._in_flight += 1
        wake_at = None
        if self._waiting and self._in_flight < self.max_in_flight:
            wake_at = self._waiting[0][1] + self.timeout
        return Step(batches, wake_at)
