"""The dead-letter answerer: a client whose message the broker gave up on is told so.

A message that kept failing (the request queue's delivery limit), or that the broker
dead-lettered for another reason, would otherwise leave its client waiting; it is
answered with a 503 through the usual hand-back (reply queue or webhook outbox). A
sync client that already had its 504 drops the late answer (its ingress replica no
longer waits for that id).

A message that expired in the queue (reason ``expired``: its TTL, set by the ingress,
ran out before any consumer took it) is answered only if it is a webhook job: its
client was told 202 and waits for a POST, so it gets an error result (``WEBHOOK_JOB_TTL``
passed). An expired sync task is acked unanswered: its client had its 504.

No clocks are compared here: which work is too old is the broker's TTL, measured by
the broker alone, so a consumer whose clock is off by any amount answers the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from consumer.handback import Answer, HandBack
from consumer.outcomes import Outcome, Tally
from rabbit_serve.messages import (
    H_CALLBACK_URL,
    ClassifyResult,
    ClassifyTask,
    ErrorInfo,
    MalformedMessage,
    dead_letter_reason,
    decode_task,
)
from rabbit_serve.transport import Inbound

logger = logging.getLogger("rabbit_serve.consumer")


# One dead letter as the tasks it carries, each with the delivery that settles it (a
# multi-image bundle: one part each, settling the real delivery once all are).
Parts = Callable[[Inbound], Sequence[tuple[Inbound, ClassifyTask]]]


def single_task(inbound: Inbound) -> list[tuple[Inbound, ClassifyTask]]:
    """The parts of a one-image message; raises :class:`MalformedMessage`."""
    task = decode_task(inbound.body, dict(inbound.headers), inbound.message_id, inbound.reply_to)
    return [(inbound, task)]


def dead_letter_error(reason: str, delivery_limit: int) -> ErrorInfo:
    if reason == "delivery_limit":
        why = f"it failed {delivery_limit + 1} times"
    else:
        why = f"the broker dead-lettered it ({reason})"
    return ErrorInfo(503, f"the image could not be classified: {why}; retry later")


def expired_job_error(job_ttl: float | None) -> ErrorInfo:
    ttl = "" if job_ttl is None else f" ({job_ttl:g} s)"
    return ErrorInfo(
        504,
        f"the job waited longer than WEBHOOK_JOB_TTL{ttl} for a consumer and was not "
        "classified; submit it again",
    )


class DeadLetterAnswerer:
    """The dead-letter queue's consumer callback. ``webhook_job_ttl``: only to say it
    in the error an expired webhook job is answered with. ``parts``: how a dead letter
    is decoded into tasks (a bundle expander; default: one task per message)."""

    def __init__(
        self,
        hand_back: HandBack,
        tally: Tally,
        delivery_limit: int,
        *,
        webhook_job_ttl: float | None = None,
        parts: Parts = single_task,
    ) -> None:
        self._hand_back = hand_back
        self._tally = tally
        self._delivery_limit = delivery_limit
        self._job_ttl = webhook_job_ttl
        self._parts = parts

    async def on_dead_letter(self, inbound: Inbound) -> None:
        headers = dict(inbound.headers)
        reason = dead_letter_reason(headers)
        if reason == "expired" and not headers.get(H_CALLBACK_URL):
            # A sync task: its client had its 504; nothing to decode.
            await inbound.ack()
            self._tally.outcome(Outcome.EXPIRED)
            return
        try:
            parts = self._parts(inbound)
        except MalformedMessage as exc:
            await inbound.ack()
            if reason == "rejected":
                # A consumer rejected it as malformed and counted it then.
                logger.debug("dropping rejected message %s: %s", inbound.message_id, exc)
            else:
                self._tally.outcome(Outcome.MALFORMED)
            return
        if reason == "expired":
            logger.warning(
                "webhook job %s expired in the queue; posting an error", inbound.message_id
            )
            error = expired_job_error(self._job_ttl)
        else:
            logger.warning(
                "message %s dead-lettered (%s); answering with an error", inbound.message_id, reason
            )
            error = dead_letter_error(reason, self._delivery_limit)
        answers = [
            Answer(part, task, ClassifyResult(task.id, task.request_id, task.index, error=error))
            for part, task in parts
        ]
        await self._hand_back.answer(answers, outcome=Outcome.DEAD_LETTERED)
