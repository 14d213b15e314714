"""API keys for the public endpoints, compared in constant time, enforced by the ``/v1`` router.

Every route on :func:`v1_router` depends on :func:`require_api_key`, so an endpoint added
there is protected without a line of its own; ``/healthz`` lives outside it and stays open
for load balancers. The keys come from the replica's :class:`~ingress.keys.KeyRing`
(``API_KEYS`` plus ``API_KEYS_FILE``, re-read as it changes). The key a request was let in
with is left in ``request.state.api_key`` (``None`` when keys are off) for the per-key
limits.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.datastructures import Headers

from ingress.service import Service

UNAUTHORIZED = "missing or invalid API key"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="rabbit-serve"'}


def presented_key(headers: Headers) -> str | None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def key_matches(presented: str | None, keys: tuple[str, ...]) -> bool:
    """True if ``presented`` is one of ``keys``.

    Every key is compared, each in constant time, so neither the position of a
    match nor a common prefix shows in the response time.
    """
    if presented is None:
        return False
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched


async def require_api_key(request: Request, service: Service) -> None:
    """401 with a ``WWW-Authenticate`` challenge unless API keys are off or the request
    carries one of them. Configured keys that are all gone (an emptied key file) refuse
    everyone: never anonymous service by accident."""
    request.state.api_key = None
    if not service.keys.enabled:
        return
    presented = presented_key(request.headers)
    if not key_matches(presented, await service.keys.current()):
        raise HTTPException(401, UNAUTHORIZED, headers=CHALLENGE)
    request.state.api_key = presented


def v1_router() -> APIRouter:
    """A router for ``/v1`` whose every route requires an API key (when keys are set)."""
    return APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
