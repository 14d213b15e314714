"""Progress for ``rabbit-serve classify``: a bar redrawn in place on a terminal, plain
lines every few seconds otherwise (a log file, CI), and the summary at the end.

The text is built by pure functions of the counts and the clock; :class:`Progress` only
decides when to write it, so a run of 100,000 images costs a few hundred writes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24
# Images/s over this recent window: the rate now, not the average since the start, so
# the ETA follows a broker outage and the recovery after it.
RATE_WINDOW_S = 10.0
TTY_INTERVAL_S = 0.1
PLAIN_INTERVAL_S = 5.0


def duration(seconds: float | None) -> str:
    """``1:02:03``, ``2:03`` or ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(remaining: int, rate: float) -> float | None:
    return remaining / rate if rate > 0 else None


def bar_line(done: int, total: int, failed: int, rate: float) -> str:
    """``[#########...............]  120/200  60%  45.2 img/s  ETA 0:02  1 failed``"""
    fraction = done / total if total else 1.0
    filled = int(BAR_WIDTH * fraction)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    line = (
        f"[{bar}] {done:>{len(str(total))}}/{total} {fraction:4.0%} "
        f"{rate:6.1f} img/s  ETA {duration(eta(total - done, rate))}"
    )
    return line + (f"  {failed} failed" if failed else "")


def plain_line(done: int, total: int, failed: int, rate: float) -> str:
    return (
        f"{done}/{total} images, {failed} failed, {rate:.1f} img/s, "
        f"ETA {duration(eta(total - done, rate))}"
    )


def summary_line(done: int, failed: int, skipped: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    line = (
        f"classified {done} images: {done - failed} ok, {failed} failed, "
        f"in {duration(elapsed)} ({rate:.1f} img/s)"
    )
    return line + (f"; {skipped} skipped, already in the output" if skipped else "")


class Rate:
    """Completions per second over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self._started: float | None = None

    def add(self, now: float) -> None:
        if self._started is None:
            self._started = now
        self._times.append(now)
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def per_second(self, now: float) -> float:
        """0 after ``window`` seconds without a completion: a stalled run has no ETA."""
        self._forget(now)
        if self._started is None or not self._times:
            return 0.0
        span = min(self.window, now - self._started)
        return len(self._times) / span if span > 0 else 0.0


class Progress:
    """Counts images as they finish and shows it on ``stream``."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self._stream, self._tty, self._clock = stream, tty, clock
        self._rate = Rate()
        self._started = clock()
        self._last_draw = float("-inf")

    def step(self, failed: bool) -> None:
        now = self._clock()
        self.done += 1
        self.failed += failed
        self._rate.add(now)
        interval = TTY_INTERVAL_S if self._tty else PLAIN_INTERVAL_S
        if now - self._last_draw >= interval or self.done == self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        rate = self._rate.per_second(now)
        if self._tty:
            # \r and erase-to-end: the bar is redrawn in place, never scrolls.
            line = bar_line(self.done, self.total, self.failed, rate)
            self._stream.write(f"\r{line}\x1b[K")
        else:
            self._stream.write(plain_line(self.done, self.total, self.failed, rate) + "\n")
        self._stream.flush()

    def finish(self, skipped: int) -> str:
        """Ends the bar's line and returns the summary."""
        if self._tty and self.done:
            self._stream.write("\n")
        return summary_line(self.done, self.failed, skipped, self._clock() - self._started)
