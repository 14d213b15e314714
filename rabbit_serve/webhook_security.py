"""Where a webhook may point, and how a receiver knows the POST came from us, for it.

Destination policy (SSRF): the port must be on ``WEBHOOK_ALLOWED_PORTS`` (80 and 443
unless set; ``*``: any), the host on ``WEBHOOK_ALLOWED_HOSTS`` when that list is set,
and every address the host resolves to must be public unless ``WEBHOOK_ALLOW_PRIVATE``
is on. The ingress checks at request time for an early 422; the consumer checks again
at delivery time and connects to the address it checked, so a DNS answer that changes
in between cannot redirect it.

"Public" is stricter than :attr:`ipaddress.IPv6Address.is_global`, which (on the
Python this runs on) lets through addresses that carry an IPv4 address for a
translator or relay to unwrap: IPv4-compatible ``::a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``,
NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo
``2001::/32``, and the deprecated site-local ``fec0::/10``. These are refused, not
unwrapped: where the packet finally goes is decided by a NAT64 gateway, a 6to4 relay
or a Teredo relay whose own policy we cannot see (a gateway inside the operator's
network may well translate ``64:ff9b::10.0.0.1`` to ``10.0.0.1``), and no receiver
needs them. The one form that is unwrapped is IPv4-mapped ``::ffff:a.b.c.d``: a
dual-stack socket connects to exactly that IPv4 address, so it is judged as one.

Hosts written as a number other than a dotted quad (``2130706433``, ``0x7f.1``,
``0177.0.0.1``, ``127.1``) are refused before any lookup: the resolver would read
them as IPv4 addresses, and a WHATWG URL parser would too.

Signature: ``X-Rabbit-Serve-Signature: t=<unix seconds>,v2=<hex>`` where
``hex = HMAC-SHA256(WEBHOOK_SECRET, b"<t>." + url + b"." + body)`` and ``url`` is the
``callback_url`` exactly as the client gave it. Binding the URL means a body captured
at one receiver cannot be replayed to another that shares the secret. A receiver
recomputes it over its own URL and the raw body and rejects old timestamps; see
:func:`verify`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
import socket
import time
import unicodedata
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Rabbit-Serve-Signature"
ID_HEADER = "X-Rabbit-Serve-Id"
SIGNATURE_SCHEME = "v2"
DEFAULT_TOLERANCE_S = 300
RESOLVE_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"http": 80, "https": 443}

# Refused although Python's is_global may say otherwise (see the module docstring).
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # IPv4-compatible (deprecated, RFC 4291); also :: and ::1
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT, RFC 2765)
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64 local-use prefix (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056, deprecated by RFC 7526)
        "2001::/32",  # Teredo (RFC 4380)
        "fec0::/10",  # site-local (deprecated, RFC 3879)
        "3fff::/20",  # documentation (RFC 9637), unknown to older Pythons
    )
)
# The IPv4 side of 6to4: an anycast relay (deprecated, RFC 7526).
_REFUSED_V4 = (ipaddress.IPv4Network("192.88.99.0/24"),)

# A last label that is a number: the resolver (inet_aton) and WHATWG URL parsers read
# such a host as an IPv4 address in decimal, octal or hex, whole or in parts.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
# What the IDNA codec (used by socket.getaddrinfo for non-ASCII names) takes for a dot.
_IDNA_DOTS = re.compile("[\u3002\uff0e\uff61]")


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
    """True for globally routable unicast addresses that need no translator or relay.

    IPv4-mapped IPv6 is judged as the IPv4 address it maps; the other forms that embed
    an IPv4 address are refused whatever they embed.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in _REFUSED_V6):
            return False
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _REFUSED_V4):
        return False
    return ip.is_global and not ip.is_multicast


def ascii_view(host: str) -> str:
    """The host as the resolver will see it: the IDNA codec maps full-width digits and
    ideographic dots to ASCII before the lookup (full-width "127.1" reaches 127.0.0.1),
    so the checks look at that."""
    return _IDNA_DOTS.sub(".", unicodedata.normalize("NFKC", host)).lower()


def is_numeric_host(host: str) -> bool:
    """A host the resolver would take for an IPv4 address though it is no dotted quad
    (``2130706433``, ``0x7f.1``, ``127.1``): callers have already tried it as an IP."""
    labels = ascii_view(host).rstrip(".").split(".")
    return _NUMERIC_LABEL.fullmatch(labels[-1]) is not None


def url_port(url: str) -> int:
    """The port a URL connects to (the scheme's default when none is written)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise WebhookRefused(f"callback_url has an invalid port: {url!r}") from None
    return DEFAULT_PORTS.get(parts.scheme, 0) if port is None else port


def check_url(
    url: str,
    allowed_hosts: tuple[str, ...],
    allow_private: bool,
    allowed_ports: tuple[int, ...] = (),
) -> str:
    """Checks that need no DNS: scheme, host, port, allowlists, literal IP addresses.

    ``allowed_ports``: empty means any port; callers pass ``WEBHOOK_ALLOWED_PORTS``.
    Returns the host to resolve.
    """
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise WebhookRefused(f"callback_url must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise WebhookRefused("callback_url must not carry credentials")
    host = parts.hostname
    _check_host(host, allowed_hosts, allow_private)
    port = url_port(url)
    if allowed_ports and port not in allowed_ports:
        ports = ",".join(map(str, allowed_ports))
        raise WebhookRefused(f"callback_url port {port} is not in WEBHOOK_ALLOWED_PORTS ({ports})")
    return host


def _check_host(host: str, allowed_hosts: tuple[str, ...], allow_private: bool) -> None:
    if not host_allowed(host, allowed_hosts):
        raise WebhookRefused(f"callback_url host {host!r} is not in WEBHOOK_ALLOWED_HOSTS")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:
        if not allow_private and not is_public(host):
            raise WebhookRefused(f"callback_url points at a non-public address ({host})")
        return
    if is_numeric_host(host):
        # Refused even with WEBHOOK_ALLOW_PRIVATE: nobody needs it, and the signed URL
        # would not say which address was meant.
        raise WebhookRefused(
            f"callback_url host {host!r} is a number; write an IP address in its usual form"
        )
    name = ascii_view(host).rstrip(".")
    if not allow_private and (
        name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")
    ):
        raise WebhookRefused("callback_url points at localhost")


async def resolve(
    url: str,
    allowed_hosts: tuple[str, ...],
    allow_private: bool,
    allowed_ports: tuple[int, ...] = (),
) -> list[str]:
    """All addresses of the URL's host, after the policy passed for every one of them."""
    host = check_url(url, allowed_hosts, allow_private, allowed_ports)
    port = url_port(url)
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


def signature(secret: str, timestamp: int, url: str, body: bytes) -> str:
    """The hex HMAC-SHA256 over ``b"<t>." + url + b"." + body``."""
    signed = f"{timestamp}.".encode() + url.encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, url: str, timestamp: int | None = None) -> str:
    """The signature header value for ``body`` POSTed to ``url`` (the callback_url as
    the client gave it)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SIGNATURE_SCHEME}={signature(secret, t, url, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    url: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver at ``url`` runs: constant-time compare, and no replays older than
    ``tolerance_s``. A body signed for another URL does not verify."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
        presented = fields[SIGNATURE_SCHEME]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, t, url, body), presented)
