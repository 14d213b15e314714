"""Admission of request deliveries: malformed, duplicates, expiry, and what is batched."""

from __future__ import annotations

import time

from consumer.admission import Action, Admission, Delivery, admit
from consumer.dedup import RecentIds
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import H_TOP_K
from tests.factories import make_task
from tests.fakes import FakeInbound


class Rig:
    def __init__(self) -> None:
        self.answered = RecentIds()
        self.tally = Tally()
        self.submitted: list[Delivery] = []
        self.admission = Admission(self.answered, self.tally, self.submitted.append)


async def test_a_valid_task_is_submitted_unsettled():
    rig = Rig()
    task = make_task()
    inbound = FakeInbound.of(task)
    await rig.admission.on_request(inbound)
    assert [d.task.id for d in rig.submitted] == [task.id] and rig.submitted[0].inbound is inbound
    assert inbound.settled_as is None  # the batch settles it
    assert rig.tally.outcomes == {} and rig.tally.rework == {}


async def test_a_malformed_message_is_rejected_never_requeued():
    rig = Rig()
    message = FakeInbound.of(make_task())
    inbound = FakeInbound(message.body, {**message.headers, H_TOP_K: "five"}, "m1", "r.a")
    await rig.admission.on_request(inbound)
    assert inbound.settled_as == "reject" and rig.submitted == []
    assert rig.tally.outcomes == {Outcome.MALFORMED: 1}
    no_reply = FakeInbound(b"img", message.headers, "m2", None)
    assert admit(no_reply, set(), time.time()).action is Action.REJECT


async def test_a_redelivery_of_an_answered_task_is_acked_not_answered_again():
    rig = Rig()
    task = make_task()
    rig.answered.add(task.id)
    inbound = FakeInbound.of(task, redelivered=True)
    await rig.admission.on_request(inbound)
    assert inbound.settled_as == "ack" and rig.submitted == []
    # Its outcome was counted when it was answered: this is rework, not a second outcome.
    assert rig.tally.outcomes == {}
    assert rig.tally.rework == {Rework.REDELIVERED: 1, Rework.DUPLICATE: 1}


async def test_a_redelivery_of_an_unanswered_task_is_batched_and_flagged():
    rig = Rig()
    inbound = FakeInbound.of(make_task(), redelivered=True)
    await rig.admission.on_request(inbound)
    assert len(rig.submitted) == 1 and inbound.settled_as is None
    assert rig.tally.rework == {Rework.REDELIVERED: 1} and rig.tally.outcomes == {}


async def test_an_answered_id_without_the_redelivered_flag_is_processed():
    # Only the broker's flag says it may be a duplicate; ids are unique per task.
    rig = Rig()
    task = make_task()
    rig.answered.add(task.id)
    await rig.admission.on_request(FakeInbound.of(task))
    assert len(rig.submitted) == 1


async def test_expired_work_is_acked_unprocessed():
    rig = Rig()
    inbound = FakeInbound.of(make_task(ttl=-1.0))
    await rig.admission.on_request(inbound)
    assert inbound.settled_as == "ack" and rig.submitted == []
    assert rig.tally.outcomes == {Outcome.EXPIRED: 1}
