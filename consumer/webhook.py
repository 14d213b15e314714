"""Posting a result to a client's webhook, with bounded retries and backoff."""

from __future__ import annotations

import asyncio
import logging

import httpx

logger = logging.getLogger("rabbit_serve.consumer")

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


async def deliver(
    client: httpx.AsyncClient, url: str, body: bytes, *, attempts: int, timeout: float
) -> bool:
    """POST ``body`` until a 2xx; ``False`` once ``attempts`` are spent.

    4xx other than 408/429 means the receiver rejected the payload: retrying
    would not change its mind, so we stop at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            response = await client.post(
                url,
                content=body,
                headers={"content-type": "application/json"},
                timeout=timeout,
                follow_redirects=False,
            )
            if response.is_success:
                return True
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                logger.warning("webhook %s rejected the result: HTTP %s", url, response.status_code)
                return False
            logger.info(
                "webhook %s answered HTTP %s (attempt %d)", url, response.status_code, attempt
            )
        except httpx.HTTPError as exc:
            logger.info("webhook %s failed: %s (attempt %d)", url, exc, attempt)
        if attempt < attempts:
            await asyncio.sleep(backoff_delay(attempt))
    return False
