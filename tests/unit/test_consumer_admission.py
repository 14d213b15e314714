"""Admission of request deliveries: malformed, duplicates, bundles, and what is batched."""

from __future__ import annotations

from consumer.admission import Action, Admission, Delivery, admit
from consumer.dedup import RecentIds
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import H_TOP_K, encode_bundle
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
    assert [v.action for v in admit(no_reply, set())] == [Action.REJECT]


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


async def test_work_past_its_deadline_by_this_clock_is_still_batched():
    # Expiry is the broker's TTL alone: a consumer clock ahead of the ingress's by any
    # amount must not drop work.
    rig = Rig()
    inbound = FakeInbound.of(make_task(ttl=-3600.0))
    await rig.admission.on_request(inbound)
    assert len(rig.submitted) == 1 and inbound.settled_as is None
    assert rig.tally.outcomes == {}


def bundle_inbound(count: int = 3, **kwargs) -> tuple[FakeInbound, list]:
    tasks = [
        make_task(
            id=f"req-{i}", index=i, image=b"img%d" % i, pixels=10 + i, sent_at=1.5, deadline=9.5
        )
        for i in range(count)
    ]
    message = encode_bundle(tasks)
    inbound = FakeInbound(
        message.body, message.headers, message.message_id, message.reply_to, **kwargs
    )
    return inbound, tasks


async def test_a_bundle_is_submitted_as_one_delivery_per_image():
    rig = Rig()
    inbound, tasks = bundle_inbound(3)
    await rig.admission.on_request(inbound)
    assert [d.task for d in rig.submitted] == tasks
    assert [d.inbound.message_id for d in rig.submitted] == ["req-0", "req-1", "req-2"]
    assert all(d.inbound is not inbound for d in rig.submitted)
    for delivery in rig.submitted[:-1]:
        await delivery.inbound.ack()
        assert inbound.settled_as is None  # not until every part is settled
    await rig.submitted[-1].inbound.ack()
    assert inbound.settled_as == "ack"


async def test_a_redelivered_bundle_skips_the_parts_already_answered():
    rig = Rig()
    inbound, _ = bundle_inbound(3, redelivered=True)
    rig.answered.add("req-0")
    rig.answered.add("req-2")
    await rig.admission.on_request(inbound)
    assert [d.task.id for d in rig.submitted] == ["req-1"]
    assert inbound.settled_as is None
    assert rig.tally.rework == {Rework.REDELIVERED: 1, Rework.DUPLICATE: 2}
    await rig.submitted[0].inbound.ack()
    assert inbound.settled_as == "ack"


async def test_a_redelivered_bundle_answered_in_full_is_acked_without_work():
    rig = Rig()
    inbound, tasks = bundle_inbound(2, redelivered=True)
    for task in tasks:
        rig.answered.add(task.id)
    await rig.admission.on_request(inbound)
    assert rig.submitted == [] and inbound.settled_as == "ack"


async def test_an_inconsistent_bundle_is_rejected_whole():
    rig = Rig()
    good, _ = bundle_inbound(2)
    inbound = FakeInbound(good.body[:-1], good.headers, good.message_id, good.reply_to)
    await rig.admission.on_request(inbound)
    assert inbound.settled_as == "reject" and rig.submitted == []
    assert rig.tally.outcomes == {Outcome.MALFORMED: 1}
