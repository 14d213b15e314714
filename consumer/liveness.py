"""Why a consumer replica is not healthy, in words, for Serve's health check."""

from __future__ import annotations

import asyncio

# A broker outage shorter than this is ridden out by the robust connection; a longer
# one fails the health check (with the reason), and Serve restarts the replica.
BROKER_LOST_GRACE_S = 30.0


class Liveness:
    """Tracks how long the broker has been out of reach; :meth:`problem` says what is
    wrong, or ``None``. Called on every health check (``now`` is monotonic)."""

    def __init__(self, started: float, grace: float = BROKER_LOST_GRACE_S) -> None:
        self._grace = grace
        # Not connected yet counts as out of reach since the start.
        self._disconnected_since: float | None = started

    def problem(
        self,
        runner: asyncio.Task[None] | None,
        connected: bool,
        now: float,
        broker_error: str | None = None,
    ) -> str | None:
        if runner is not None and runner.done() and not runner.cancelled():
            exc = runner.exception()
            if exc is not None:
                return f"consumer loop died: {exc!r}"
        if connected:
            self._disconnected_since = None
            return None
        if self._disconnected_since is None:
            self._disconnected_since = now
            return None
        out_for = now - self._disconnected_since
        if out_for <= self._grace:
            return None
        detail = f" ({broker_error})" if broker_error else ""
        return f"no broker connection for {out_for:.0f}s{detail}"
