"""What a failed classifier call says: nothing ran, chance, or the classifier's own code.

- *Not run*: Serve had no replica for the call, or pushed back (:data:`NOT_RUN`).
  Nothing ran, so it says nothing about the images: wait and call again.
- *Chance*: the replica died or was unreachable mid-call, or the call passed
  ``CLASSIFY_TIMEOUT``. It may be the infrastructure, or an image that kills replicas.
- *Own code*: the classifier's own code raised (a ``RayTaskError`` wrapping, say, a
  ``ValueError``), or answered nonsense. It will fail the same way again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ray.exceptions import PendingCallsLimitExceeded, RayError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

# Raised by Serve's router before any replica ran the call.
NOT_RUN: tuple[type[BaseException], ...] = (
    ReplicaUnavailableError,
    DeploymentUnavailableError,
    BackPressureError,
    PendingCallsLimitExceeded,
)
# Infrastructure that failed mid-call: a dead actor or node, a lost object, a timeout.
CHANCE: tuple[type[BaseException], ...] = (
    RayError,
    RayServeException,
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
)


class ClassifierUnavailable(Exception):
    """No replica took the call within ``unavailable_wait``."""


class CallTimedOut(TimeoutError):
    """The call passed ``CLASSIFY_TIMEOUT``; it was cancelled."""


class WrongAnswer(ValueError):
    """The classifier answered with the wrong number of outcomes."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: a ``RayTaskError``'s cause, a Serve error's ``__cause__``."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in out):
        out.append(current)
        if isinstance(current, RayTaskError):
            cause = current.cause
            current = cause if isinstance(cause, BaseException) else None
        elif isinstance(current, RayServeException):
            current = current.__cause__
        else:
            current = None
    return out


def not_run(exc: BaseException) -> bool:
    """Whether no replica ran the call (so it says nothing about its images)."""
    for link in _chain(exc):
        if isinstance(link, RayTaskError):
            return False  # raised inside a replica: it did run
        if isinstance(link, NOT_RUN):
            return True
    return False


def by_chance(exc: BaseException) -> bool:
    """Whether a call that ran may have failed for the infrastructure's sake, not its
    input's: checked inside ``RayTaskError`` (which is also an instance of its cause)."""
    last = _chain(exc)[-1]
    return isinstance(last, CHANCE) and not isinstance(last, RayTaskError)


async def cancel_on_abandon(response: Awaitable[Any]) -> Any:
    """Await a Serve ``DeploymentResponse``, cancelling the request if the wait is
    abandoned (a timeout): awaiting one does not cancel the request by itself."""
    try:
        return await response
    except asyncio.CancelledError:
        cancel = getattr(response, "cancel", None)
        if cancel is not None:
            cancel()
        raise
