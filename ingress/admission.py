"""One request's admission at an ingress replica: the byte budget it may hold and its
key's open-request slot, taken on entry and given back on every way out.

Shared by every route that queues work (``/v1/classify``, ``/v2/.../infer``), so the
limits of :mod:`ingress.limits` apply the same whatever the protocol.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ingress.limits import ByteBudget, Hold, KeyLimits


@dataclass
class Admitted:
    """What a request holds while it runs: its share of the byte budget, and its key."""

    hold: Hold
    _limits: KeyLimits
    _key: str | None

    def charge(self, images: int) -> None:
        """Spend ``images`` of the key's rate (raises ``Refused``); free without a key."""
        if self._key is not None:
            self._limits.charge(self._key, images, time.monotonic())


@asynccontextmanager
async def admitted(
    budget: ByteBudget, limits: KeyLimits, key: str | None
) -> AsyncIterator[Admitted]:
    """Raises ``Refused`` when ``key`` (``None``: keys off, not limited) already has its
    maximum of requests open; what was taken is given back whatever happens inside,
    a client gone and the handler cancelled included."""
    hold = budget.hold()
    entered = False
    try:
        if key is not None:
            limits.enter(key, time.monotonic())
            entered = True
        yield Admitted(hold, limits, key)
    finally:
        hold.release()
        if entered and key is not None:
            limits.leave(key, time.monotonic())
