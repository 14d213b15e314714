"""Posting a result to a client's webhook: checked destination, signed, bounded retries.

:func:`post_once` is one attempt; :func:`deliver` the retry loop with backoff. The
outbox sender (:mod:`consumer.outbox`) runs its own loop around :func:`post_once`, as
it records each attempt in the shared ledger first. :func:`webhook_client` and
:meth:`WebhookPolicy.from_settings` are what a consumer builds them from.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from rabbit_serve.settings import Settings
from rabbit_serve.webhook_security import (
    ID_HEADER,
    SIGNATURE_HEADER,
    WebhookRefused,
    resolve,
    sign,
)

logger = logging.getLogger("rabbit_serve.consumer")

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0


@dataclass(frozen=True)
class WebhookPolicy:
    """Where results may be POSTed and how; the defaults are the settings' defaults."""

    secret: str = ""
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    allowed_ports: tuple[int, ...] = (80, 443)  # empty: any port
    attempts: int = 3
    timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            secret=settings.webhook_secret,
            allowed_hosts=settings.webhook_allowed_hosts,
            allow_private=settings.webhook_allow_private,
            allowed_ports=settings.webhook_allowed_ports,
            attempts=settings.webhook_max_attempts,
            timeout=settings.webhook_timeout,
        )


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The client webhooks are POSTed with.

    It ignores ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY`` unless ``WEBHOOK_TRUST_ENV``:
    a proxy picked up from the environment would make the connection somewhere other
    than the address the policy checked (and a proxy inside the network reaches what
    the policy keeps out). CA settings (``SSL_CERT_FILE``/``SSL_CERT_DIR``) are still
    honoured: they decide whom to trust, not where to connect.
    """
    return httpx.AsyncClient(
        trust_env=settings.webhook_trust_env,
        verify=httpx.create_ssl_context(trust_env=True),
    )


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


def _pinned_request(
    client: httpx.AsyncClient,
    url: str,
    address: str,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
) -> httpx.Request:
    """A request to ``address`` that still names the original host (Host header, TLS SNI
    and certificate check), so the connection goes exactly where the policy looked."""
    parts = urlsplit(url)
    target = httpx.URL(url).copy_with(host=address)
    headers = {**headers, "host": parts.netloc.rsplit("@", 1)[-1]}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return client.build_request(
        "POST", target, content=body, headers=headers, extensions=extensions, timeout=timeout
    )


class Posted(enum.Enum):
    """What one POST attempt came to."""

    DELIVERED = "delivered"  # a 2xx
    RETRY = "retry"  # may pass: a 5xx, 408, 429, or no answer
    REFUSED = "refused"  # will not pass: the policy, a redirect, another 4xx


def id_headers(task_id: str) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if task_id:
        # Receivers deduplicate on this: a result may be posted more than once.
        headers[ID_HEADER] = task_id
    return headers


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    policy: WebhookPolicy,
    task_id: str = "",
    attempt: int = 1,
) -> Posted:
    """One POST of ``body``, to the address the policy checked.

    Not worth retrying: a refused destination, a redirect (never followed: it could
    point anywhere), and 4xx other than 408/429 (the receiver said no).
    """
    headers = id_headers(task_id)
    try:
        addresses = await resolve(
            url, policy.allowed_hosts, policy.allow_private, policy.allowed_ports
        )
        if policy.secret:
            # Signed for this URL as the client wrote it: not replayable to another one.
            headers[SIGNATURE_HEADER] = sign(policy.secret, body, url)
        request = _pinned_request(client, url, addresses[0], headers, body, policy.timeout)
        response = await client.send(request, follow_redirects=False)
        await response.aclose()
    except WebhookRefused as exc:
        logger.warning("webhook %s refused by policy: %s", url, exc)
        return Posted.REFUSED
    except httpx.HTTPError as exc:
        logger.info("webhook %s failed: %r (attempt %d)", url, exc, attempt)
        return Posted.RETRY
    if response.is_success:
        return Posted.DELIVERED
    status = response.status_code
    if response.is_redirect or (400 <= status < 500 and status not in (408, 429)):
        logger.warning("webhook %s refused the result: HTTP %s", url, status)
        return Posted.REFUSED
    logger.info("webhook %s answered HTTP %s (attempt %d)", url, status, attempt)
    return Posted.RETRY


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    policy: WebhookPolicy,
    task_id: str = "",
    spent: int = 0,
) -> bool:
    """POST ``body`` until a 2xx; ``False`` once ``policy.attempts`` are spent (``spent``
    of them before this call) or the receiver refused it (see :func:`post_once`)."""
    for attempt in range(spent + 1, policy.attempts + 1):
        posted = await post_once(client, url, body, policy=policy, task_id=task_id, attempt=attempt)
        if posted is not Posted.RETRY:
            return posted is Posted.DELIVERED
        if attempt < policy.attempts:
            await asyncio.sleep(backoff_delay(attempt))
    return False
