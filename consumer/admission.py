"""Admission: what happens to a request delivery before it may join a batch.

:func:`admit` is the rule, with no I/O: a message that can never be processed is
rejected; a redelivery of a task this consumer already answered (the ack was lost) is
acked without a second answer; everything else goes to the batch driver.
:class:`Admission` applies it to every task of a delivery: one for a one-image message,
one per image of a bundle (each settled through a :class:`consumer.bundle.Part`).

No work is dropped here for being old: that would compare the ingress's clock
(``task.deadline``) with this one. The broker's per-message TTL, counted by the broker
from enqueue, drops (and dead-letters as ``expired``) what waited too long. So a sync
task taken just before its TTL runs out may be classified up to one batch after its
client's 504; its ingress replica no longer waits for that id and drops the result.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass

from consumer.bundle import parts
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import ClassifyTask, MalformedMessage
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
    # What settles this task: the delivery itself, or its bundle part. None: the whole
    # delivery (a malformed message).
    inbound: Inbound | None = None


def admit(inbound: Inbound, answered: Container[str]) -> list[Verdict]:
    """One verdict per task of the delivery, in order."""
    try:
        tasks = parts(inbound)
    except MalformedMessage as exc:
        # It can never succeed: requeueing would only poison the queue.
        return [Verdict(Action.REJECT, outcome=Outcome.MALFORMED, reason=str(exc))]
    return [_admit_task(part, task, inbound.redelivered, answered) for part, task in tasks]


def _admit_task(
    part: Inbound, task: ClassifyTask, redelivered: bool, answered: Container[str]
) -> Verdict:
    if redelivered and task.id in answered:
        # Answered before, but the ack was lost (or a bundle was requeued for a
        # sibling): do not answer twice. Its outcome was counted when it was answered.
        return Verdict(
            Action.ACK, task, rework=Rework.DUPLICATE, reason="already answered", inbound=part
        )
    return Verdict(Action.BATCH, task, inbound=part)


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
        for verdict in admit(inbound, self._answered):
            await self._apply(verdict, inbound, now)

    async def _apply(self, verdict: Verdict, inbound: Inbound, now: float) -> None:
        target = verdict.inbound or inbound
        if verdict.action is Action.BATCH:
            assert verdict.task is not None
            self._tally.queue_wait(max(now - verdict.task.sent_at, 0) * 1000)
            # Last: once submitted, the delivery (or part) is the batch's to settle.
            self._submit(Delivery(verdict.task, target, now))
            return
        if verdict.action is Action.REJECT:
            logger.warning("rejecting malformed message %s: %s", inbound.message_id, verdict.reason)
            await target.reject()
        else:
            await target.ack()
        if verdict.outcome is not None:
            self._tally.outcome(verdict.outcome)
        if verdict.rework is not None:
            self._tally.again(verdict.rework)
