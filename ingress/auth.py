"""API keys for the public endpoints, compared in constant time, enforced by the ``/v1`` router.

Every route on :func:`v1_router` depends on :func:`require_api_key`, so an endpoint added
there is protected without a line of its own; ``/healthz`` lives outside it and stays open
for load balancers.
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
    carries one of them."""
    keys = service.settings.api_keys
    if keys and not key_matches(presented_key(request.headers), keys):
        raise HTTPException(401, UNAUTHORIZED, headers=CHALLENGE)


def v1_router() -> APIRouter:
    """A router for ``/v1`` whose every route requires an API key (when keys are set)."""
    return APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
