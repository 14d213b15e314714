"""API keys for the public endpoints, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers


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
