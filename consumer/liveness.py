"""Why a consumer replica is not healthy, in words, for Serve's health check.

Only what a restart can fix makes it unhealthy: the consume loop died, the broker has
been out of reach past a grace period, or the consumer holds work and has finished no
batch for ``STALL_TIMEOUT`` (its event loop or its classifier calls are stuck). A
broker alarm that blocks publishing is not one of them: every consumer waits it out,
and a new replica would wait too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

# A broker outage shorter than this is ridden out by the robust connection; a longer
# one fails the health check (with the reason), and Serve restarts the replica.
BROKER_LOST_GRACE_S = 30.0
# The broker cancels a consumer whose queue was deleted; the consumer declares it and
# consumes again within seconds (BatchingConsumer._keep_consuming). Past this, it has not.
CONSUMER_LOST_GRACE_S = 5.0


@dataclass(frozen=True)
class Progress:
    """What the consumer holds and when it last finished a batch (monotonic seconds)."""

    held: int = 0
    last_progress: float = 0.0
    blocked: bool = False
    consuming: bool = True  # the request queue's consumer is live on its channel


class Liveness:
    """Tracks how long the broker has been out of reach and how long work has been held
    without progress; :meth:`problem` says what is wrong, or ``None``. Called on every
    health check (``now`` is monotonic)."""

    def __init__(
        self, started: float, grace: float = BROKER_LOST_GRACE_S, stall: float | None = None
    ) -> None:
        self._grace = grace
        self._stall = stall
        # Not connected yet counts as out of reach since the start.
        self._disconnected_since: float | None = started
        self._busy_since: float | None = None
        self._cancelled_since: float | None = None

    def problem(
        self,
        runner: asyncio.Task[None] | None,
        connected: bool,
        now: float,
        broker_error: str | None = None,
        progress: Progress | None = None,
    ) -> str | None:
        if runner is not None and runner.done() and not runner.cancelled():
            exc = runner.exception()
            if exc is not None:
                return f"consumer loop died: {exc!r}"
        stalled = self._stalled(progress, now) if connected else None
        if connected:
            self._disconnected_since = None
            return self._cancelled(progress, now) or stalled
        if self._disconnected_since is None:
            self._disconnected_since = now
            return None
        out_for = now - self._disconnected_since
        if out_for <= self._grace:
            return None
        detail = f" ({broker_error})" if broker_error else ""
        return f"no broker connection for {out_for:.0f}s{detail}"

    def _cancelled(self, progress: Progress | None, now: float) -> str | None:
        if progress is None or progress.consuming:
            self._cancelled_since = None
            return None
        if self._cancelled_since is None:
            self._cancelled_since = now
        gone_for = now - self._cancelled_since
        if gone_for <= CONSUMER_LOST_GRACE_S:
            return None
        return (
            f"not consuming the request queue for {gone_for:.0f}s: the broker cancelled the "
            "consumer (was the queue deleted?) and it was not restored"
        )

    def _stalled(self, progress: Progress | None, now: float) -> str | None:
        if progress is None or self._stall is None:
            return None
        if progress.held == 0 or progress.blocked:
            # Idle, or waiting out a broker alarm: the clock starts again with new work.
            self._busy_since = None
            return None
        if self._busy_since is None:
            self._busy_since = now
        quiet = now - max(self._busy_since, progress.last_progress)
        if quiet <= self._stall:
            return None
        return (
            f"no batch finished for {quiet:.0f}s while holding {progress.held} message(s) "
            f"(STALL_TIMEOUT {self._stall:g}s)"
        )
