"""The consumer's parts wired as the deployment wires them, on the in-memory broker:
every message ends settled once, and counted once."""

from __future__ import annotations

import asyncio

from ray.serve.exceptions import BackPressureError

from consumer.admission import Admission, Delivery
from consumer.batching import Batcher
from consumer.classify import BatchProcessor
from consumer.dead_letters import DeadLetterAnswerer
from consumer.dedup import RecentIds
from consumer.driver import BatchDriver
from consumer.guard import guarded
from consumer.handback import HandBack
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import decode_reply, encode_bundle
from tests.factories import make_task
from tests.fakes import FakeClassifier, FakeInbound, FakePublisher, task_error


class Consumer:
    def __init__(self, classifier: FakeClassifier, publisher: FakePublisher) -> None:
        self.tally = Tally()
        self.answered = RecentIds()
        self.hand_back = HandBack(
            publisher, self.tally, self.answered, webhook_queue="test.webhooks", model_name="m"
        )
        processor = BatchProcessor(
            classifier, self.hand_back, self.tally, retry_delay=0.001, requeue_delay=0.0
        )
        self.driver: BatchDriver[Delivery] = BatchDriver(
            Batcher(4, timeout=0.01, max_in_flight=2), processor, on_error=processor.on_error
        )
        admission = Admission(self.answered, self.tally, self.driver.submit)
        self.on_request = guarded(admission.on_request, self.tally, "admission")

    async def idle(self) -> None:
        for _ in range(100):
            await asyncio.sleep(0.005)
            if self.driver.waiting == 0 and self.driver.in_flight == 0:
                return
        raise AssertionError("the consumer did not go idle")


async def test_every_message_is_settled_once_and_counted_once():
    # No replica took the first call: it is waited out, not counted against the images.
    classifier = FakeClassifier(fail_with=BackPressureError(1, 1), fail_times=1)
    consumer = Consumer(classifier, FakePublisher())
    good = [FakeInbound.of(make_task(f"r.{i % 2}", image=b"img")) for i in range(10)]
    # Past its deadline by this clock: still answered (expiry is the broker's TTL alone).
    late = [FakeInbound.of(make_task("r.0", ttl=-1.0))]
    malformed = [FakeInbound(b"", {}, "junk", "r.0")]
    for inbound in good + late + malformed:
        await consumer.on_request(inbound)
    await consumer.idle()
    assert [i.settled_as for i in good] == ["ack"] * 10
    assert late[0].settled_as == "ack" and malformed[0].settled_as == "reject"
    assert consumer.tally.outcomes == {Outcome.ANSWERED: 11, Outcome.MALFORMED: 1}
    assert sum(consumer.tally.outcomes.values()) == 12  # one per message
    assert len(classifier.calls) >= 2  # the first call failed, and was retried


async def test_replies_are_one_per_replica_per_batch_and_a_redelivery_is_not_reanswered():
    publisher = FakePublisher()
    consumer = Consumer(FakeClassifier(), publisher)
    tasks = [make_task(f"r.{i % 2}", image=b"img") for i in range(4)]
    for task in tasks:
        await consumer.on_request(FakeInbound.of(task))
    await consumer.idle()
    delivered = [r.id for m, _ in publisher.published for r in decode_reply(m.body)]
    assert sorted(delivered) == sorted(t.id for t in tasks)
    # No more publishes than batches x replicas.
    assert len(publisher.published) <= 2 * sum(consumer.tally.batch_sizes.values())
    # The ack of the first was lost: it comes back redelivered and is only acked.
    again = FakeInbound.of(tasks[0], redelivered=True)
    await consumer.on_request(again)
    await consumer.idle()
    assert again.settled_as == "ack" and len(delivered) == 4
    assert consumer.tally.outcomes == {Outcome.ANSWERED: 4}
    assert consumer.tally.rework == {Rework.REDELIVERED: 1, Rework.DUPLICATE: 1}


async def test_a_hung_publish_holds_the_acks_and_the_slot_until_confirmed():
    publisher = FakePublisher(mode="hang")
    consumer = Consumer(FakeClassifier(), publisher)
    inbound = FakeInbound.of(make_task("r.0"))
    await consumer.on_request(inbound)
    await asyncio.sleep(0.05)
    assert inbound.settled_as is None and consumer.driver.in_flight == 1
    publisher.release()
    await consumer.idle()
    assert inbound.settled_as == "ack"


async def test_a_deterministic_failure_costs_delivery_limit_plus_one_calls_then_a_503():
    """The broker's part played by hand: a requeued message comes back redelivered until
    the delivery limit, then goes to the dead-letter queue and its answerer."""
    limit = 3
    error = task_error(ValueError("the model rejects this input"))
    classifier = FakeClassifier(fail_with=error, fail_times=10**6)
    publisher = FakePublisher()
    consumer = Consumer(classifier, publisher)
    answerer = DeadLetterAnswerer(consumer.hand_back, consumer.tally, delivery_limit=limit)
    task = make_task("r.0")
    for delivery in range(limit + 1):
        inbound = FakeInbound.of(task, redelivered=delivery > 0)
        await consumer.on_request(inbound)
        await consumer.idle()
        assert inbound.settled_as == "requeue"
    dead = FakeInbound.of(task)
    dead.headers = {**dead.headers, "x-first-death-reason": "delivery_limit"}
    await answerer.on_dead_letter(dead)
    assert len(classifier.calls) == limit + 1
    (result,) = decode_reply(publisher.to("r.0")[0].body)
    assert result.error is not None and result.error.status == 503
    assert dead.settled_as == "ack"
    # Counted once, at its final state; the deliveries before it are rework.
    assert consumer.tally.outcomes == {Outcome.DEAD_LETTERED: 1}
    assert consumer.tally.rework[Rework.REQUEUED] == limit + 1


async def test_a_bundle_is_answered_image_by_image_and_acked_once():
    publisher = FakePublisher()
    consumer = Consumer(FakeClassifier(), publisher)
    tasks = [make_task("r.0", id=f"b-{i}", request_id="b", index=i) for i in range(6)]
    message = encode_bundle(tasks)
    inbound = FakeInbound(message.body, message.headers, message.message_id, message.reply_to)
    await consumer.on_request(inbound)
    await consumer.idle()
    assert inbound.settled_as == "ack"
    answered = sorted(r.id for m in publisher.to("r.0") for r in decode_reply(m.body))
    assert answered == [t.id for t in tasks]
    assert consumer.tally.outcomes == {Outcome.ANSWERED: 6}
