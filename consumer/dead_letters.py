"""The dead-letter answerer: a client whose message the broker gave up on is told so.

A message that kept failing (the request queue's delivery limit) would otherwise leave
its client waiting for its timeout; it is answered with a 503 through the usual
hand-back (reply queue or webhook outbox). Work that expired in the queue, or whose
client's deadline has passed, is acked unanswered: its client already had a 504.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from consumer.handback import Answer, HandBack
from consumer.outcomes import Outcome, Tally
from rabbit_serve.messages import (
    ClassifyResult,
    ErrorInfo,
    MalformedMessage,
    dead_letter_reason,
    decode_task,
)
from rabbit_serve.transport import Inbound

logger = logging.getLogger("rabbit_serve.consumer")


def dead_letter_error(reason: str, delivery_limit: int) -> ErrorInfo:
    if reason == "delivery_limit":
        why = f"it failed {delivery_limit + 1} times"
    else:
        why = f"the broker dead-lettered it ({reason})"
    return ErrorInfo(503, f"the image could not be classified: {why}; retry later")


class DeadLetterAnswerer:
    """The dead-letter queue's consumer callback."""

    def __init__(
        self,
        hand_back: HandBack,
        tally: Tally,
        delivery_limit: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hand_back = hand_back
        self._tally = tally
        self._delivery_limit = delivery_limit
        self._clock = clock

    async def on_dead_letter(self, inbound: Inbound) -> None:
        headers = dict(inbound.headers)
        reason = dead_letter_reason(headers)
        if reason == "expired":
            await inbound.ack()
            self._tally.outcome(Outcome.EXPIRED)
            return
        try:
            task = decode_task(inbound.body, headers, inbound.message_id, inbound.reply_to)
        except MalformedMessage as exc:
            await inbound.ack()
            if reason == "rejected":
                # A consumer rejected it as malformed and counted it then.
                logger.debug("dropping rejected message %s: %s", inbound.message_id, exc)
            else:
                self._tally.outcome(Outcome.MALFORMED)
            return
        if task.remaining(self._clock()) <= 0:
            await inbound.ack()
            self._tally.outcome(Outcome.EXPIRED)
            return
        logger.warning("task %s dead-lettered (%s); answering with an error", task.id, reason)
        result = ClassifyResult(
            id=task.id,
            request_id=task.request_id,
            index=task.index,
            error=dead_letter_error(reason, self._delivery_limit),
        )
        await self._hand_back.answer([Answer(inbound, task, result)], outcome=Outcome.DEAD_LETTERED)
