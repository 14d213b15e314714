"""Admission: what happens to a request delivery before it may join a batch.

:func:`admit` is the rule, with no I/O: a message that can never be processed is
rejected; a redelivery of a task this consumer already answered (the ack was lost) is
acked without a second answer; a task whose client already had its 504 is acked
unprocessed; everything else goes to the batch driver. :class:`Admission` applies it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass

from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import ClassifyTask, MalformedMessage, decode_task
from rabbit_serve.transport import Inbound

logger = logging.getLogger("rabbit_serve.consumer")


@dataclass(frozen=True)
class Delivery:
    """An admitted task and the delivery that settles it."""

    task: ClassifyTask
    inbound: Inbound
    received_at: float  # wall clock, comparable with task.sent_at


class Action(enum.Enum):
    BATCH = "batch"
    ACK = "ack"
    REJECT = "reject"


@dataclass(frozen=True)
class Verdict:
    action: Action
    task: ClassifyTask | None = None
    outcome: Outcome | None = None
    rework: Rework | None = None
    reason: str = ""


def admit(inbound: Inbound, answered: Container[str], now: float) -> Verdict:
    try:
        task = decode_task(
            inbound.body, dict(inbound.headers), inbound.message_id, inbound.reply_to
        )
    except MalformedMessage as exc:
        # It can never succeed: requeueing would only poison the queue.
        return Verdict(Action.REJECT, outcome=Outcome.MALFORMED, reason=str(exc))
    if inbound.redelivered and task.id in answered:
        # Answered before, but the ack was lost: do not answer twice. Its outcome was
        # counted when it was answered.
        return Verdict(Action.ACK, task, rework=Rework.DUPLICATE, reason="already answered")
    if task.remaining(now) <= 0:
        # Its client has already had a 504: the work would be wasted.
        return Verdict(Action.ACK, task, outcome=Outcome.EXPIRED, reason="expired")
    return Verdict(Action.BATCH, task)


class Admission:
    """The request queue's consumer callback: admits each delivery, settles what is not
    admitted, and submits the rest to ``submit`` (the batch driver)."""

    def __init__(
        self,
        answered: Container[str],
        tally: Tally,
        submit: Callable[[Delivery], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._answered = answered
        self._tally = tally
        self._submit = submit
        self._clock = clock

    async def on_request(self, inbound: Inbound) -> None:
        if inbound.redelivered:
            self._tally.again(Rework.REDELIVERED)
        now = self._clock()
        verdict = admit(inbound, self._answered, now)
        if verdict.action is Action.BATCH:
            assert verdict.task is not None
            self._tally.queue_wait(max(now - verdict.task.sent_at, 0) * 1000)
            # Last: once submitted, the delivery is the batch's to settle.
            self._submit(Delivery(verdict.task, inbound, now))
            return
        if verdict.action is Action.REJECT:
            logger.warning("rejecting malformed message %s: %s", inbound.message_id, verdict.reason)
            await inbound.reject()
        else:
            await inbound.ack()
        if verdict.outcome is not None:
            self._tally.outcome(verdict.outcome)
        if verdict.rework is not None:
            self._tally.again(verdict.rework)
