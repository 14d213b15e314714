"""The webhook outbox: what goes in (a result rendered as its public webhook body) and
the sender that takes each entry out, POSTs it, and acks it.

The outbox holds exactly the bytes that are POSTed and signed, so what a receiver
gets does not depend on which consumer sends it. Each entry is acked whatever the
POST's outcome: the retry bound is the webhook policy's, not the broker's.
"""

from __future__ import annotations

import logging

import httpx

from consumer.outcomes import Outcome, Tally
from consumer.webhook import WebhookPolicy, deliver
from rabbit_serve.messages import H_CALLBACK_URL, RESULT_CONTENT_TYPE, ClassifyResult
from rabbit_serve.render import webhook_body
from rabbit_serve.transport import Inbound, Outbound

logger = logging.getLogger("rabbit_serve.consumer")


def outbox_entry(result: ClassifyResult, callback_url: str, model: str) -> Outbound:
    return Outbound(
        webhook_body(result, model),
        content_type=RESULT_CONTENT_TYPE,
        message_id=result.id,
        headers={H_CALLBACK_URL: callback_url},
        # Durably handed to the outbox (confirmed): the request can be acked.
        persistent=True,
    )


def callback_url(inbound: Inbound) -> str | None:
    url = inbound.headers.get(H_CALLBACK_URL)
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    return url if isinstance(url, str) and url else None


class WebhookSender:
    """The outbox's consumer callback."""

    def __init__(self, client: httpx.AsyncClient, policy: WebhookPolicy, tally: Tally) -> None:
        self._client = client
        self._policy = policy
        self._tally = tally

    async def on_entry(self, inbound: Inbound) -> None:
        url = callback_url(inbound)
        if url is None:
            logger.warning("rejecting outbox entry %s: no callback URL", inbound.message_id)
            await inbound.reject()
            self._tally.outcome(Outcome.MALFORMED)
            return
        delivered = await deliver(
            self._client,
            url,
            inbound.body,
            policy=self._policy,
            task_id=inbound.message_id or "",
        )
        await inbound.ack()
        self._tally.outcome(Outcome.WEBHOOK_DELIVERED if delivered else Outcome.WEBHOOK_FAILED)
