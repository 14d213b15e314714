"""Where a webhook may point, and how a receiver knows the POST came from us.

Destination policy (SSRF): the host must be on ``WEBHOOK_ALLOWED_HOSTS`` when
that list is set, and every address it resolves to must be public unless
``WEBHOOK_ALLOW_PRIVATE`` is on. The ingress checks at request time for an
early 422; the consumer checks again at delivery time and connects to the
address it checked, so a DNS answer that changes in between cannot redirect it.

Signature: ``X-Rabbit-Serve-Signature: t=<unix seconds>,v1=<hex>`` where
``hex = HMAC-SHA256(WEBHOOK_SECRET, b"<t>." + body)``. A receiver recomputes
it over the raw body and rejects old timestamps (replays); see :func:`verify`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Rabbit-Serve-Signature"
ID_HEADER = "X-Rabbit-Serve-Id"
DEFAULT_TOLERANCE_S = 300
RESOLVE_TIMEOUT_S = 5.0


class WebhookRefused(ValueError):
    """The destination is not allowed; the message says why."""


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Exact names, or ``*.example.com`` for any subdomain (not the apex). Empty: all."""
    if not allowed:
        return True
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def is_public(address: str) -> bool:
    """True for globally routable unicast addresses (also unwraps IPv4-mapped IPv6)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allowed_hosts: tuple[str, ...], allow_private: bool) -> str:
    """Checks that need no DNS: scheme, host, allowlist, literal IP addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"callback_url must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise WebhookRefused("callback_url must not carry credentials")
    host = parts.hostname
    if not host_allowed(host, allowed_hosts):
        raise WebhookRefused(f"callback_url host {host!r} is not in WEBHOOK_ALLOWED_HOSTS")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not allow_private and host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
            raise WebhookRefused("callback_url points at localhost") from None
        return host
    if not allow_private and not is_public(host):
        raise WebhookRefused(f"callback_url points at a non-public address ({host})")
    return host


async def resolve(url: str, allowed_hosts: tuple[str, ...], allow_private: bool) -> list[str]:
    """All addresses of the URL's host, after the policy passed for every one of them."""
    host = check_url(url, allowed_hosts, allow_private)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT_S
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise WebhookRefused(f"callback_url host {host!r} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        private = [a for a in addresses if not is_public(a)]
        if private:
            raise WebhookRefused(
                f"callback_url host {host!r} resolves to a non-public address ({private[0]})"
            )
    if not addresses:
        raise WebhookRefused(f"callback_url host {host!r} has no address")
    return addresses


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver runs: constant-time compare, and no replays older than ``tolerance_s``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
        presented = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, presented)
