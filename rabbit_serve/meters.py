"""Rates measured over a sliding window, for the autoscaling signals.

Pure: every method takes the time, so the tests drive a clock of their own. Both meters
keep one-second buckets, so their memory is bounded by the window whatever the load.
"""

from __future__ import annotations

import math
from collections import deque


class RateWindow:
    """Events per second over the last ``window_s`` seconds (a count, e.g. images)."""

    def __init__(self, window_s: float = 10.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._window_s = window_s
        self._buckets: deque[tuple[int, float]] = deque()  # (whole second, count)
        self._started: float | None = None

    def add(self, count: float, now: float) -> None:
        if self._started is None:
            self._started = now
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + count)
        else:
            self._buckets.append((second, count))
        self._expire(now)

    def rate(self, now: float) -> float:
        """Events per second; a meter younger than its window divides by its age, so a
        fresh replica's first second is not read as a tenth of its real rate."""
        if self._started is None:
            return 0.0
        span = min(self._window_s, max(now - self._started, 1.0))
        return self.total(now) / span

    def total(self, now: float) -> float:
        """Events in the window; the oldest bucket, which the window's edge cuts, counts
        the share of its second inside the window (events are taken as spread evenly)."""
        self._expire(now)
        horizon = now - self._window_s
        return sum(
            count * min(1.0, max(0.0, second + 1 - horizon)) for second, count in self._buckets
        )

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        while self._buckets and self._buckets[0][0] + 1 <= horizon:
            self._buckets.popleft()


class BusyMeter:
    """How fast a replica works while it works: items per second of wall-clock time with
    at least one call in progress. Calls that overlap count their wall time once, so two
    batches side by side on two cores read as twice the rate of one, as they are.

    ``capacity`` is that rate over the window; ``busy_fraction`` the share of the window
    spent busy (a replica at 1.0 is saturated, and its ``capacity`` is what it can do).
    Busy time is booked into one-second buckets as it passes, so a replica that never
    goes idle is measured over the window too, not over its whole busy stretch.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._window_s = window_s
        self._running = 0
        self._marked: float | None = None  # busy time is booked up to here
        self._busy: deque[list[float]] = deque()  # [whole second, busy seconds in it]
        self._items = RateWindow(window_s)
        self._created: float | None = None

    def start(self, now: float) -> None:
        if self._created is None:
            self._created = now
        self._book(now)
        self._running += 1

    def finish(self, items: float, now: float) -> None:
        if self._running <= 0:
            raise RuntimeError("finish() without start()")
        self._book(now)
        self._running -= 1
        self._items.add(items, now)

    def busy_seconds(self, now: float) -> float:
        self._book(now)
        horizon = now - self._window_s
        return sum(busy * min(1.0, max(0.0, second + 1 - horizon)) for second, busy in self._busy)

    def items(self, now: float) -> float:
        return self._items.total(now)

    def capacity(self, now: float, min_busy_s: float = 1.0) -> float | None:
        """Items per busy second, or ``None`` with less than ``min_busy_s`` of work seen:
        too little to say what the replica can do."""
        busy = self.busy_seconds(now)
        if busy < min_busy_s:
            return None
        return self.items(now) / busy

    def busy_fraction(self, now: float) -> float:
        if self._created is None:
            return 0.0
        span = min(self._window_s, max(now - self._created, 1e-9))
        return min(self.busy_seconds(now) / span, 1.0)

    def _book(self, now: float) -> None:
        """Add the busy time since the last mark to its seconds' buckets."""
        if self._running > 0 and self._marked is not None and now > self._marked:
            at = self._marked
            while at < now:
                second = math.floor(at)
                upto = min(now, second + 1.0)
                if self._busy and self._busy[-1][0] == second:
                    self._busy[-1][1] += upto - at
                else:
                    self._busy.append([second, upto - at])
                at = upto
        self._marked = now
        horizon = now - self._window_s
        while self._busy and self._busy[0][0] + 1 <= horizon:
            self._busy.popleft()
