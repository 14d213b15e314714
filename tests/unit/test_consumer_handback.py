"""The hand-back rule and the classifier call, against the in-memory broker stand-in."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError, RayServeException

from consumer.admission import Delivery
from consumer.classify import BatchProcessor, may_pass
from consumer.dedup import RecentIds
from consumer.handback import HandBack
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import H_CALLBACK_URL, decode_reply
from tests.factories import make_task
from tests.fakes import FakeClassifier, FakeInbound, FakePublisher, task_error

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
        self.process = BatchProcessor(
            self.classifier, self.hand_back, self.tally, attempts=3, retry_delay=0.001
        )

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


@pytest.mark.parametrize(
    "error",
    [
        ActorDiedError(),
        ActorUnavailableError("restarting", None),
        BackPressureError(num_queued_requests=9, max_queued_requests=8),
        TimeoutError("no answer"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_failure_that_may_pass_is_retried_in_process(error):
    rig = Rig(FakeClassifier(fail_with=error, fail_times=2))
    batch = rig.batch("r.a")
    await rig.process(batch, alone=False)
    assert len(rig.classifier.calls) == 3
    assert settled(batch) == ["ack"] and rig.tally.outcomes == {Outcome.ANSWERED: 1}


async def test_a_failure_that_keeps_passing_requeues_the_batch_after_the_attempts():
    rig = Rig(FakeClassifier(fail_with=ActorDiedError(), fail_times=99))
    batch = rig.batch("r.a", "r.b")
    await rig.process(batch, alone=False)
    assert len(rig.classifier.calls) == 3
    assert settled(batch) == ["requeue", "requeue"]
    assert rig.tally.rework == {Rework.REQUEUED: 2} and rig.tally.outcomes == {}


async def test_a_deterministic_classifier_error_is_requeued_without_retries():
    rig = Rig(FakeClassifier(fail_with=task_error(ValueError("bad input")), fail_times=99))
    batch = rig.batch("r.a")
    await rig.process(batch, alone=False)
    # One call per delivery: the broker's delivery limit bounds the calls, then the
    # dead-letter answerer tells the client.
    assert len(rig.classifier.calls) == 1
    assert settled(batch) == ["requeue"] and rig.publisher.published == []


def test_may_pass_looks_inside_ray_task_errors():
    assert not may_pass(task_error(ValueError("deterministic")))
    assert not may_pass(ValueError("deterministic"))
    assert may_pass(task_error(ActorDiedError()))
    assert may_pass(task_error(BackPressureError(1, 1)))
    upstream = RayServeException("upstream actor died")
    upstream.__cause__ = ActorDiedError()
    assert may_pass(upstream)
    assert not may_pass(RayServeException("something else"))


async def test_a_wrong_number_of_outcomes_requeues_the_batch():
    class Short(FakeClassifier):
        async def __call__(self, images, top_ks, alone):
            return (await super().__call__(images, top_ks, alone))[:-1]

    rig = Rig(Short())
    batch = rig.batch("r.a", "r.a")
    await rig.process(batch, alone=False)
    assert settled(batch) == ["requeue", "requeue"]
