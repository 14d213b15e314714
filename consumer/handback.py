"""The hand-back rule: publish a result with the broker's confirm, and only then ack.

The results bound for one ingress replica leave in a single reply message, so a batch
costs one publish and one delivery per replica instead of one per image; a webhook
result goes, rendered, to the durable outbox, one entry per image. A publish that is
not confirmed leaves its requests unacked: they go back to the queue (requeued, or
redelivered by the broker when the connection that held them is gone), and the
ingress ignores a second result for the same task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from typing import NamedTuple, Protocol, TypeVar

from consumer.dedup import RecentIds
from consumer.outbox import outbox_entry
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import RESULT_CONTENT_TYPE, ClassifyResult, ClassifyTask, encode_reply
from rabbit_serve.transport import (
    Inbound,
    Outbound,
    Publisher,
    PublishFailed,
    PublishTimedOut,
    PublishUnroutable,
    SettleFailed,
)

logger = logging.getLogger("rabbit_serve.consumer")

# Times a result whose confirm was held up by a broker alarm is published again.
BLOCKED_REPUBLISHES = 3


class _Settles(Protocol):
    @property
    def inbound(self) -> Inbound: ...


_HasInbound = TypeVar("_HasInbound", bound=_Settles)


class Answer(NamedTuple):
    inbound: Inbound
    task: ClassifyTask
    result: ClassifyResult


class HandBack:
    def __init__(
        self,
        publisher: Publisher,
        tally: Tally,
        answered: RecentIds,
        *,
        webhook_queue: str,
        model_name: str,
    ) -> None:
        self._publisher = publisher
        self._tally = tally
        self._answered = answered
        self._webhook_queue = webhook_queue
        self._model_name = model_name

    async def answer(self, answers: Sequence[Answer], *, outcome: Outcome | None = None) -> None:
        """Hand back every answer, then ack its request. ``outcome`` overrides what is
        counted (``answered`` / ``webhook_queued``), e.g. for a dead letter."""
        replies: dict[str, list[Answer]] = defaultdict(list)
        webhooks: list[Answer] = []
        for answer in self.live(answers):
            if answer.task.callback_url:
                webhooks.append(answer)
            else:
                replies[answer.task.reply_to or ""].append(answer)
        await asyncio.gather(
            *(
                self._settle(
                    group,
                    outcome or Outcome.ANSWERED,
                    Outbound(
                        encode_reply([a.result for a in group]),
                        content_type=RESULT_CONTENT_TYPE,
                        # Its queue is exclusive and dies with its replica: nothing to persist.
                        persistent=False,
                    ),
                    queue,
                )
                for queue, group in replies.items()
            ),
            *(
                self._settle(
                    [answer],
                    outcome or Outcome.WEBHOOK_QUEUED,
                    outbox_entry(answer.result, answer.task.callback_url or "", self._model_name),
                    self._webhook_queue,
                )
                for answer in webhooks
            ),
        )

    def live(self, items: Sequence[_HasInbound]) -> list[_HasInbound]:
        """The items whose delivery can still be settled; a stale one (its channel
        closed, so the broker delivers it again) is counted as rework and dropped."""
        stale = [item for item in items if item.inbound.stale]
        if stale:
            logger.warning("%d message(s) went stale (their channel closed): dropped", len(stale))
            self._tally.again(Rework.STALE, len(stale))
        return [item for item in items if not item.inbound.stale]

    async def requeue(self, inbounds: Sequence[Inbound], kind: Rework = Rework.REQUEUED) -> None:
        """Back to the queue: a failure that may pass, or one the delivery limit bounds."""
        self._tally.again(kind, len(inbounds))
        for inbound in inbounds:
            await settle(inbound.requeue(), inbound)

    async def _publish(self, message: Outbound, routing_key: str) -> None:
        """Publish; a confirm that timed out because a broker alarm began meanwhile is
        tried again (the next attempt waits for the alarm to clear), so an alarm never
        spends a message's delivery limit. The first copy may land too: the ingress
        drops a second result, the webhook ledger a second POST."""
        for _ in range(BLOCKED_REPUBLISHES):
            try:
                await self._publisher.publish(message, routing_key)
                return
            except PublishTimedOut:
                if not getattr(self._publisher, "blocked", False):
                    raise
                logger.warning("a broker alarm held a result to %r; publishing again", routing_key)
        await self._publisher.publish(message, routing_key)

    async def _settle(
        self, answers: list[Answer], outcome: Outcome, message: Outbound, routing_key: str
    ) -> None:
        try:
            await self._publish(message, routing_key)
        except PublishUnroutable:
            # Nobody will ever take it (the ingress replica that waited is gone, and its
            # exclusive queue with it): going round the queue again would only loop.
            logger.warning(
                "%d result(s) for %r had nowhere to go; dropping them", len(answers), routing_key
            )
            await self._done(answers, Outcome.UNROUTABLE)
            return
        except PublishFailed as exc:
            logger.warning(
                "could not hand back %d result(s) (%s); they go back to the queue",
                len(answers),
                exc,
            )
            await self.requeue([a.inbound for a in answers], Rework.HANDBACK_FAILED)
            return
        await self._done(answers, outcome)

    async def _done(self, answers: list[Answer], outcome: Outcome) -> None:
        # A channel that closed while the result was published takes its messages back:
        # their redeliveries are answered and counted, not these copies.
        answers = self.live(answers)
        self._tally.outcome(outcome, len(answers))
        for answer in answers:
            self._answered.add(answer.task.id)
            await settle(answer.inbound.ack(), answer.inbound)


async def settle(settling: Awaitable[None], inbound: Inbound) -> bool:
    """Await an ack/requeue/reject; ``False`` (logged) if it could not reach the broker,
    which then redelivers the message by itself."""
    try:
        await settling
    except SettleFailed as exc:
        logger.warning("message %s will be redelivered: %s", inbound.message_id, exc)
        return False
    return True
