"""The batching rule, with no I/O, so it tests without a broker or a clock.

A batch goes out when it holds ``max_size`` items, or ``timeout`` seconds after
*its own* first item arrived, whichever comes first. Every batch gets a
generation number; a timer armed for one batch carries that number, so a timer
that fires after its batch already left by size (a stale timer) does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Opened:
    """Returned by :meth:`BatchAccumulator.add` when an item starts a new batch:
    the caller arms a timer for ``deadline`` carrying ``generation``."""

    generation: int
    deadline: float


@dataclass
class BatchAccumulator(Generic[T]):
    max_size: int
    timeout: float
    _items: list[T] = field(default_factory=list)
    _generation: int = 0
    _deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be >= 1")
        if self.timeout < 0:
            raise ValueError("timeout must be >= 0")

    def __len__(self) -> int:
        return len(self._items)

    @property
    def deadline(self) -> float | None:
        """When the open batch is due, or ``None`` if nothing is waiting."""
        return self._deadline

    def add(self, item: T, now: float) -> tuple[Opened | None, list[T] | None]:
        """Add one item at time ``now``.

        Returns ``(opened, batch)``: ``opened`` is set when this item started a
        batch that is still waiting (arm its timer); ``batch`` is set when the
        item filled the batch, which the caller dispatches at once.
        """
        opened = None
        if not self._items:
            self._deadline = now + self.timeout
            opened = Opened(self._generation, self._deadline)
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return None, self._take()
        return opened, None

    def on_timer(self, generation: int) -> list[T] | None:
        """Called by the timer armed for ``generation``; returns that batch.

        A stale timer (its batch already left by size) returns ``None``.
        """
        if generation != self._generation or not self._items:
            return None
        return self._take()

    def drain(self) -> list[T]:
        """Whatever is waiting, e.g. at shutdown (may be empty)."""
        return self._take() if self._items else []

    def _take(self) -> list[T]:
        batch, self._items = self._items, []
        self._deadline = None
        self._generation += 1
        return batch
