"""Is the classifier there? Asked by ``/healthz`` and ``/v1/model``, answered with a reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("rabbit_serve.ingress")

HEALTH_PROBE_TIMEOUT_S = 2.0
_MAX_REASON_CHARS = 300


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"classifier did not answer within {timeout:g}s"
    # Ray's errors (an actor that died or is unavailable, no replicas yet) say what
    # happened in their first line; the rest is a traceback from another process.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"classifier unavailable: {type(exc).__name__}"
    if text:
        reason += f": {text}"
    return reason[:_MAX_REASON_CHARS]


class ClassifierProbe:
    """Calls the classifier's ``info()``; keeps the last answer for ``/v1/model``.

    ``info`` is the call to make (``handle.info.remote`` in a replica; a plain
    coroutine function in tests).
    """

    def __init__(
        self,
        info: Callable[[], Awaitable[dict[str, Any]]],
        timeout: float = HEALTH_PROBE_TIMEOUT_S,
    ) -> None:
        self._info = info
        self._timeout = timeout
        self._last_reason: str | None = None

    async def check(self) -> tuple[dict[str, Any] | None, str | None]:
        """``(info, None)`` when the classifier answered, else ``(None, reason)``."""
        try:
            info = await asyncio.wait_for(self._info(), timeout=self._timeout)
        except Exception as exc:
            reason = _describe(exc, self._timeout)
            # Load balancers probe every few seconds: say it when it changes, not each time.
            if reason != self._last_reason:
                logger.warning("classifier not ready: %s", reason)
            self._last_reason = reason
            return None, reason
        if self._last_reason is not None:
            logger.info("classifier ready again")
            self._last_reason = None
        return info, None
