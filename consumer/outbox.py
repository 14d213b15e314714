"""The webhook outbox: what goes in (a result rendered as its public webhook body) and
the sender that takes each entry out, POSTs it, and settles it.

The outbox holds exactly the bytes that are POSTed and signed (for the callback URL
the entry carries, so the signature names its receiver), so what a receiver gets does
not depend on which consumer sends it; the destination is checked again at each POST.
An entry is acked once a POST was answered 2xx; once the receiver (or the policy)
refused it or ``WEBHOOK_MAX_ATTEMPTS`` are spent, it is rejected, and the broker moves
it to ``WEBHOOK_DEAD_LETTER_QUEUE``, where an operator lists and replays it
(``python -m rabbit_serve.webhook_dlq``).

With a ledger (:mod:`deployments.ledger`, one memory for every consumer), each attempt
is recorded before its POST and each 2xx after it, keyed by task id. So an entry
redelivered to another consumer (its first consumer died, or lost its ack) is not
POSTed again once delivered, and continues its attempt count instead of starting
over. The at-least-once bound: at most one extra POST per consumer that dies during a
POST (before the 2xx was recorded), and none for a consumer that dies after the 2xx was
recorded, while the ledger remembers it (``WEBHOOK_DEDUP_WINDOW``, and its one replica
lives). Two copies of one result in the outbox at the same moment (its request was
handed back twice) may each be POSTed once; one after the other, the second is not.
Without a ledger, or while it cannot be reached, this process's own memory is all
there is: an entry redelivered elsewhere is POSTed again with a fresh budget.
Receivers deduplicate on the ``X-Rabbit-Serve-Id`` header either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import httpx

from consumer.dedup import RecentIds
from consumer.outcomes import Outcome, Rework, Tally
from consumer.webhook import Posted, WebhookPolicy, backoff_delay, post_once
from rabbit_serve.ledger import H_REPLAYS, WebhookRecord, webhook_key
from rabbit_serve.messages import H_CALLBACK_URL, RESULT_CONTENT_TYPE, ClassifyResult
from rabbit_serve.render import webhook_body
from rabbit_serve.transport import Inbound, Outbound

logger = logging.getLogger("rabbit_serve.consumer")

# A ledger call slower than this is taken as a ledger out of reach: the POST goes
# ahead on this process's own count rather than wait on it.
LEDGER_TIMEOUT_S = 2.0


class WebhookLedger(Protocol):
    """What the sender needs of the ledger (:class:`deployments.ledger.LedgerClient`)."""

    async def webhook_attempt(self, task_id: str) -> WebhookRecord: ...

    async def webhook_delivered(self, task_id: str) -> None: ...


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


def replays(inbound: Inbound) -> int:
    value = inbound.headers.get(H_REPLAYS, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class WebhookSender:
    """The outbox's consumer callback. ``ledger``: shared across consumers; ``None``
    (tests, a deployment without one): this process's memory only."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        policy: WebhookPolicy,
        tally: Tally,
        ledger: WebhookLedger | None = None,
        *,
        ledger_timeout: float = LEDGER_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._policy = policy
        self._tally = tally
        self._ledger = ledger
        self._ledger_timeout = ledger_timeout
        # Delivered here: a lost ack's redelivery is skipped even without the ledger.
        self._delivered = RecentIds()

    async def on_entry(self, inbound: Inbound) -> None:
        url = callback_url(inbound)
        if url is None:
            logger.warning("rejecting outbox entry %s: no callback URL", inbound.message_id)
            await inbound.reject()
            self._tally.outcome(Outcome.MALFORMED)
            return
        task_id = inbound.message_id or ""
        key = webhook_key(task_id, replays(inbound))
        spent = 0  # attempts known here; the ledger may know of more
        while key not in self._delivered:
            record = await self._attempt(key)
            if record is not None and record.delivered:
                break
            spent = max(spent, record.attempts if record is not None else 0)
            if spent >= self._policy.attempts:
                await self._dead_letter(inbound, url, f"{spent} attempts spent")
                return
            spent += 1
            posted = await post_once(
                self._client, url, inbound.body, policy=self._policy, task_id=task_id, attempt=spent
            )
            if posted is Posted.DELIVERED:
                await self._record_delivered(key)
                self._delivered.add(key)
                await inbound.ack()
                self._tally.outcome(Outcome.WEBHOOK_DELIVERED)
                return
            if posted is Posted.REFUSED or spent >= self._policy.attempts:
                why = "refused" if posted is Posted.REFUSED else f"{spent} attempts spent"
                await self._dead_letter(inbound, url, why)
                return
            await asyncio.sleep(backoff_delay(spent))
        # Delivered before (by this or another consumer): its outcome was counted then.
        logger.info("webhook result %s was delivered before; not posting it again", key)
        await inbound.ack()
        self._tally.again(Rework.DUPLICATE)

    async def _dead_letter(self, inbound: Inbound, url: str, why: str) -> None:
        logger.warning(
            "webhook result %s to %s not delivered (%s): to the webhook dead-letter queue",
            inbound.message_id,
            url,
            why,
        )
        await inbound.reject()
        self._tally.outcome(Outcome.WEBHOOK_FAILED)

    async def _attempt(self, key: str) -> WebhookRecord | None:
        """The ledger's record before this attempt (which it counts); ``None`` without
        a ledger or when it cannot be reached (logged: the POST goes ahead)."""
        if self._ledger is None:
            return None
        try:
            return await asyncio.wait_for(
                self._ledger.webhook_attempt(key), timeout=self._ledger_timeout
            )
        except Exception as exc:
            logger.warning("webhook ledger unreachable (%r); posting %s without it", exc, key)
            return None

    async def _record_delivered(self, key: str) -> None:
        if self._ledger is None:
            return
        try:
            await asyncio.wait_for(
                self._ledger.webhook_delivered(key), timeout=self._ledger_timeout
            )
        except Exception as exc:
            # Acked anyway: only a redelivery of this entry could POST it again.
            logger.warning("webhook ledger unreachable (%r); %s delivered, unrecorded", exc, key)
