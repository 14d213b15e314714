"""The hand-back rule, against the in-memory broker stand-in (the classifier call's own
rules: test_consumer_classify.py)."""

from __future__ import annotations

import asyncio
import time

import orjson

from consumer.admission import Delivery
from consumer.classify import BatchProcessor
from consumer.dedup import RecentIds
from consumer.handback import HandBack
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import H_CALLBACK_URL, decode_reply
from tests.factories import make_task
from tests.fakes import FakeClassifier, FakeInbound, FakePublisher

WEBHOOKS = "test.webhooks"
MODEL = "test-model"


class Rig:
    def __init__(self, classifier: FakeClassifier | None = None, **publisher: object) -> None:
        self.publisher = FakePublisher(**publisher)  # type: ignore[arg-type]
        self.tally = Tally()
        self.answered = RecentIds()
        self.hand_back = HandBack(
            self.publisher, self.tally, self.answered, webhook_queue=WEBHOOKS, model_name=MODEL
        )
        self.classifier = classifier or FakeClassifier()
        self.process = BatchProcessor(self.classifier, self.hand_back, self.tally)

    @staticmethod
    def batch(*reply_tos: str | None, callback: str | None = None) -> list[Delivery]:
        out = []
        for i, reply_to in enumerate(reply_tos):
            task = make_task(reply_to, index=i, image=f"image-{i}".encode(), top_k=2)
            if callback:
                task = make_task(None, index=i, callback_url=callback, image=b"img", top_k=1)
            out.append(Delivery(task, FakeInbound.of(task), time.time()))
        return out


def settled(batch: list[Delivery]) -> list[str | None]:
    return [d.inbound.settled_as for d in batch]  # type: ignore[attr-defined]


async def test_results_are_acked_only_after_the_publish_is_confirmed():
    rig = Rig(mode="hang")
    batch = rig.batch("r.a", "r.a")
    running = asyncio.create_task(rig.process(batch, alone=False))
    await asyncio.sleep(0.01)
    assert rig.classifier.calls and settled(batch) == [None, None]  # waiting for the confirm
    rig.publisher.release()
    await running
    assert settled(batch) == ["ack", "ack"]
    assert rig.tally.outcomes == {Outcome.ANSWERED: 2}


async def test_an_unconfirmed_publish_acks_nothing_and_the_batch_goes_back():
    rig = Rig(mode="fail")
    batch = rig.batch("r.a", "r.b")
    await rig.process(batch, alone=False)
    assert settled(batch) == ["requeue", "requeue"]
    assert rig.tally.outcomes == {}  # not a final state: each is counted when done
    assert rig.tally.rework == {Rework.HANDBACK_FAILED: 2}
    assert not any(d.task.id in rig.answered for d in batch)


async def test_a_stale_delivery_is_neither_classified_nor_answered_nor_counted():
    # Its channel closed (the consumer's connection dropped, SIGSTOP past the heartbeat):
    # the broker redelivers it, and the redelivery is the one answered and counted.
    rig = Rig()
    batch = rig.batch("r.a", "r.a")
    batch[1].inbound.stale = True  # type: ignore[misc]
    await rig.process(batch, alone=False)
    assert [len(images) for images, *_ in rig.classifier.calls] == [1]
    assert [r.index for r in decode_reply(rig.publisher.to("r.a")[0].body)] == [0]
    assert settled(batch) == ["ack", None]
    assert rig.tally.outcomes == {Outcome.ANSWERED: 1}
    assert rig.tally.rework == {Rework.STALE: 1}
    assert batch[1].task.id not in rig.answered  # its redelivery is not a duplicate


async def test_a_delivery_gone_stale_during_the_publish_is_not_counted_or_remembered():
    rig = Rig(mode="hang")
    batch = rig.batch("r.a", "r.a")
    running = asyncio.create_task(rig.process(batch, alone=False))
    await asyncio.sleep(0.01)
    batch[0].inbound.stale = True  # type: ignore[misc]
    rig.publisher.release()
    await running
    assert settled(batch) == [None, "ack"]
    assert rig.tally.outcomes == {Outcome.ANSWERED: 1}
    assert rig.tally.rework == {Rework.STALE: 1}
    assert [d.task.id in rig.answered for d in batch] == [False, True]


async def test_a_batch_all_stale_calls_nothing():
    rig = Rig()
    batch = rig.batch("r.a")
    batch[0].inbound.stale = True  # type: ignore[misc]
    await rig.process(batch, alone=False)
    assert not rig.classifier.calls and not rig.publisher.published
    assert rig.tally.rework == {Rework.STALE: 1}


async def test_one_reply_per_ingress_replica_per_batch():
    rig = Rig()
    batch = rig.batch("r.a", "r.b", "r.a", "r.a", "r.b")
    await rig.process(batch, alone=False)
    assert sorted(key for _, key in rig.publisher.published) == ["r.a", "r.b"]
    (reply_a,) = rig.publisher.to("r.a")
    results = decode_reply(reply_a.body)
    assert [r.index for r in results] == [0, 2, 3]
    assert all(r.batch_size == 5 and r.predictions for r in results)
    assert not reply_a.persistent  # its queue is exclusive: nothing to persist
    assert settled(batch) == ["ack"] * 5


async def test_only_the_replica_whose_publish_failed_is_requeued():
    rig = Rig(fail_to={"r.b"})
    batch = rig.batch("r.a", "r.b", "r.a")
    await rig.process(batch, alone=False)
    assert settled(batch) == ["ack", "requeue", "ack"]
    assert rig.tally.outcomes == {Outcome.ANSWERED: 2}


async def test_webhook_results_go_to_the_outbox_rendered_as_the_public_body():
    rig = Rig()
    batch = rig.batch(None, None, callback="https://hooks.example.com/in")
    await rig.process(batch, alone=False)
    entries = rig.publisher.to(WEBHOOKS)
    assert len(entries) == 2 and all(e.persistent for e in entries)
    body = orjson.loads(entries[0].body)
    assert body["id"] == batch[0].task.id and body["model"] == MODEL
    assert body["predictions"] and {"request_id", "index", "batch_size", "timings_ms"} <= set(body)
    assert entries[0].headers[H_CALLBACK_URL] == "https://hooks.example.com/in"
    assert entries[0].message_id == batch[0].task.id
    assert settled(batch) == ["ack", "ack"]
    assert rig.tally.outcomes == {Outcome.WEBHOOK_QUEUED: 2}


async def test_a_bad_image_fails_alone():
    rig = Rig(FakeClassifier(bad=frozenset({b"image-1"})))
    batch = rig.batch("r.a", "r.a")
    await rig.process(batch, alone=False)
    first, second = decode_reply(rig.publisher.to("r.a")[0].body)
    assert first.predictions and second.error is not None and second.error.status == 422


async def test_the_alone_flag_reaches_the_classifier():
    rig = Rig()
    await rig.process(rig.batch("r.a"), alone=True)
    await rig.process(rig.batch("r.a"), alone=False)
    assert [alone for *_, alone in rig.classifier.calls] == [True, False]
