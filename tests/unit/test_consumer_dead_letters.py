"""The dead-letter answerer: clients of work the broker gave up on get an explicit 503;
webhook jobs that expired in the queue get an error POSTed; no clocks compared."""

from __future__ import annotations

import orjson
import pytest

from consumer.dead_letters import DeadLetterAnswerer
from consumer.dedup import RecentIds
from consumer.handback import HandBack
from consumer.outcomes import Outcome, Tally
from rabbit_serve.messages import decode_reply
from tests.factories import make_task
from tests.fakes import FakeInbound, FakePublisher

LIMIT = 2


class Rig:
    def __init__(self, **publisher: object) -> None:
        self.publisher = FakePublisher(**publisher)  # type: ignore[arg-type]
        self.tally = Tally()
        self.hand_back = HandBack(
            self.publisher, self.tally, RecentIds(), webhook_queue="test.webhooks", model_name="m"
        )
        self.answerer = DeadLetterAnswerer(
            self.hand_back, self.tally, delivery_limit=LIMIT, webhook_job_ttl=3600.0
        )


def dead(task, reason: str, **kwargs) -> FakeInbound:
    inbound = FakeInbound.of(task, **kwargs)
    inbound.headers = {**inbound.headers, "x-first-death-reason": reason}
    return inbound


async def test_work_that_kept_failing_is_answered_with_a_503_then_acked():
    rig = Rig()
    task = make_task("r.a")
    inbound = dead(task, "delivery_limit")
    await rig.answerer.on_dead_letter(inbound)
    (result,) = decode_reply(rig.publisher.to("r.a")[0].body)
    assert result.id == task.id and result.predictions is None
    assert result.error is not None and result.error.status == 503
    assert "could not be classified" in result.error.message
    assert f"failed {LIMIT + 1} times" in result.error.message
    assert inbound.settled_as == "ack"
    assert rig.tally.outcomes == {Outcome.DEAD_LETTERED: 1}


async def test_a_dead_lettered_webhook_task_is_answered_through_the_outbox():
    rig = Rig()
    task = make_task(None, callback_url="https://hooks.example.com/x")
    await rig.answerer.on_dead_letter(dead(task, "delivery_limit"))
    (entry,) = rig.publisher.to("test.webhooks")
    assert orjson.loads(entry.body)["error"]["status"] == 503
    # Counted once, as the dead letter it is (its outbox entry is counted when sent).
    assert rig.tally.outcomes == {Outcome.DEAD_LETTERED: 1}


async def test_the_answer_is_not_acked_unless_confirmed():
    rig = Rig(mode="fail")
    inbound = dead(make_task("r.a"), "delivery_limit")
    await rig.answerer.on_dead_letter(inbound)
    assert inbound.settled_as == "requeue" and rig.tally.outcomes == {}


async def test_a_sync_task_that_expired_in_the_queue_is_acked_unanswered():
    rig = Rig()
    inbound = dead(make_task("r.a"), "expired")
    await rig.answerer.on_dead_letter(inbound)
    assert inbound.settled_as == "ack" and rig.publisher.published == []
    assert rig.tally.outcomes == {Outcome.EXPIRED: 1}


async def test_a_webhook_job_that_expired_in_the_queue_gets_an_error_posted():
    rig = Rig()
    task = make_task(None, callback_url="https://hooks.example.com/x")
    inbound = dead(task, "expired")
    await rig.answerer.on_dead_letter(inbound)
    (entry,) = rig.publisher.to("test.webhooks")
    body = orjson.loads(entry.body)
    assert entry.message_id == task.id
    assert body["error"]["status"] == 504
    assert "WEBHOOK_JOB_TTL (3600 s)" in body["error"]["message"]
    assert inbound.settled_as == "ack"
    assert rig.tally.outcomes == {Outcome.DEAD_LETTERED: 1}


@pytest.mark.parametrize("ttl", [-3600.0, 3600.0])
async def test_no_clock_is_compared_a_dead_letter_is_answered_whatever_its_deadline(ttl):
    # The deadline was set by another node's clock: only the broker's TTL decides.
    rig = Rig()
    inbound = dead(make_task("r.a", ttl=ttl), "delivery_limit")
    await rig.answerer.on_dead_letter(inbound)
    (result,) = decode_reply(rig.publisher.to("r.a")[0].body)
    assert result.error is not None and result.error.status == 503
    assert inbound.settled_as == "ack" and rig.tally.outcomes == {Outcome.DEAD_LETTERED: 1}


@pytest.mark.parametrize("reason", ["rejected", "maxlen", "unknown"])
async def test_other_reasons_are_answered_with_a_503(reason):
    rig = Rig()
    inbound = dead(make_task("r.a"), reason)
    await rig.answerer.on_dead_letter(inbound)
    (result,) = decode_reply(rig.publisher.to("r.a")[0].body)
    assert result.error is not None and result.error.status == 503
    assert f"({reason})" in result.error.message


async def test_every_part_of_a_dead_letter_is_answered():
    tasks = [make_task("r.a", id=f"req-{i}", index=i) for i in range(3)]
    inbound = dead(tasks[0], "delivery_limit")
    parts = [(FakeInbound.of(task), task) for task in tasks]
    rig = Rig()
    rig.answerer = DeadLetterAnswerer(
        rig.hand_back, rig.tally, delivery_limit=LIMIT, parts=lambda _: parts
    )
    await rig.answerer.on_dead_letter(inbound)
    results = decode_reply(rig.publisher.to("r.a")[0].body)
    assert [r.id for r in results] == ["req-0", "req-1", "req-2"]
    assert all(part.settled_as == "ack" for part, _ in parts)
    assert rig.tally.outcomes == {Outcome.DEAD_LETTERED: 3}


async def test_a_rejected_malformed_message_is_not_counted_twice():
    rig = Rig()
    rejected = FakeInbound(b"", {"x-first-death-reason": "rejected"}, "m1", None)
    await rig.answerer.on_dead_letter(rejected)
    assert rejected.settled_as == "ack" and rig.tally.outcomes == {}  # counted when rejected
    other = FakeInbound(b"", {"x-first-death-reason": "delivery_limit"}, "m2", None)
    await rig.answerer.on_dead_letter(other)
    assert other.settled_as == "ack" and rig.tally.outcomes == {Outcome.MALFORMED: 1}
