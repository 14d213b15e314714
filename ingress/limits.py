"""What one ingress replica lets in: per-key rate and concurrency, and a byte budget.

Pure bookkeeping, no I/O and no clock of its own (callers pass ``now``): every rule is
unit-tested with numbers. All of it lives on one replica's event loop, so nothing here
locks; the limits are per replica, not cluster-wide (the README says so).

- :class:`KeyLimits`: a token bucket of images per API key (a request of N images costs
  N) and a count of its open requests. Each key has its own state, so one key that hits
  its limit never takes anything from another.
- :class:`ByteBudget`: request body bytes the replica holds at once. A request reserves
  its ``Content-Length`` before its body is read, or what has arrived so far when it
  declares none, and gives it all back when it finishes, however it finishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class Refused(Exception):
    """Not let in: ``status`` (429 or 503) with a ``Retry-After`` of ``retry_after`` s."""

    def __init__(self, status: int, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def retry_after(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1 (0 would invite a spin)."""
    return max(1, math.ceil(seconds))


@dataclass
class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` could be taken; 0 if it can be now.

        A cost above ``burst`` needs only a full bucket (else it could never pass) and
        then leaves it in debt, so the long-run rate still holds.
        """
        self._refill(now)
        missing = min(cost, self.burst) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` and return 0, or take nothing and return :meth:`wait`."""
        waiting = self.wait(cost, now)
        if waiting == 0:
            self.tokens -= cost
        return waiting

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass
class _KeyState:
    bucket: TokenBucket | None
    open: int = 0


class KeyLimits:
    """Per-key limits: ``rate`` images/s with ``burst``, ``max_concurrent`` open requests.

    ``rate`` 0 or ``max_concurrent`` 0 turns that limit off. A request calls
    :meth:`enter` before its body is read, :meth:`charge` once it knows how many images
    it carries, and :meth:`leave` when it finishes (also after a refusal by ``charge``).
    """

    def __init__(self, rate: float, burst: int, max_concurrent: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_concurrent = max_concurrent
        self._keys: dict[str, _KeyState] = {}

    def __len__(self) -> int:
        """Keys with state: those with a request open or a bucket not yet full."""
        return len(self._keys)

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            bucket = TokenBucket(self.rate, self.burst) if self.rate > 0 else None
            state = self._keys[key] = _KeyState(bucket)
        return state

    def enter(self, key: str, now: float) -> None:
        """Count one more open request of ``key``; 429 if it has its maximum open, or its
        bucket has not even one image's worth (refused before the body is read)."""
        state = self._state(key)
        if self.max_concurrent and state.open >= self.max_concurrent:
            raise Refused(
                429,
                f"this API key has {state.open} requests open at this ingress replica, "
                f"its limit (KEY_MAX_CONCURRENT); retry when one has finished",
            )
        if state.bucket is not None and (waiting := state.bucket.wait(1, now)):
            raise self._over_rate(waiting)
        state.open += 1

    def charge(self, key: str, images: int, now: float) -> None:
        """Take ``images`` tokens from ``key``'s bucket, or 429 with how long to wait."""
        bucket = self._state(key).bucket
        if bucket is not None and (waiting := bucket.take(images, now)):
            raise self._over_rate(waiting)

    def leave(self, key: str, now: float) -> None:
        """One request of ``key`` finished. A key with nothing open and a full bucket is
        forgotten: state is kept only for keys in use, however many were ever valid."""
        state = self._keys.get(key)
        if state is None:
            return
        state.open = max(0, state.open - 1)
        if state.open == 0 and (state.bucket is None or state.bucket.full(now)):
            del self._keys[key]

    def _over_rate(self, waiting: float) -> Refused:
        seconds = retry_after(waiting)
        return Refused(
            429,
            f"this API key is over its rate of {self.rate:g} images/s (burst {self.burst}) "
            f"at this ingress replica (KEY_RATE_LIMIT); retry in {seconds} s",
            seconds,
        )


class ByteBudget:
    """At most ``limit`` request body bytes held at once; see :class:`Hold`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def hold(self) -> Hold:
        """An empty reservation for one request."""
        return Hold(self)


class Hold:
    """One request's share of a :class:`ByteBudget`; grows, then is released once."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.reserved = 0

    def cover(self, size: int) -> None:
        """Make the reservation at least ``size`` bytes, or 503 (nothing taken)."""
        extra = size - self.reserved
        if extra <= 0:
            return
        budget = self._budget
        if budget.used + extra > budget.limit:
            raise Refused(
                503,
                f"this ingress replica holds {budget.used} bytes of request bodies and "
                f"{size} more would pass MAX_INFLIGHT_BYTES ({budget.limit}); nothing was "
                "queued: retry later",
            )
        budget.used += extra
        self.reserved = size

    def release(self) -> None:
        """Give everything back; a second call does nothing."""
        self._budget.used -= self.reserved
        self.reserved = 0
