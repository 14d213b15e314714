"""The classifier call: poison isolation, the timeout, and failures where nothing ran."""

from __future__ import annotations

import asyncio
import math
import time

import orjson
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, PendingCallsLimitExceeded
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from consumer.admission import Delivery
from consumer.classify import POISON_MESSAGE, BatchProcessor
from consumer.dedup import RecentIds
from consumer.failures import CallTimedOut, WrongAnswer, by_chance, cancel_on_abandon, not_run
from consumer.handback import HandBack
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import decode_reply
from tests.factories import make_task
from tests.fakes import FakeClassifier, FakeInbound, FakePublisher, PoisonClassifier, task_error

REPLY = "r.a"
WEBHOOKS = "test.webhooks"


class Rig:
    def __init__(self, classifier: FakeClassifier, **options: float) -> None:
        self.publisher = FakePublisher()
        self.tally = Tally()
        self.hand_back = HandBack(
            self.publisher, self.tally, RecentIds(), webhook_queue=WEBHOOKS, model_name="m"
        )
        self.classifier = classifier
        settings = {"retry_delay": 0.001, "requeue_delay": 0.0, **options}
        self.process = BatchProcessor(classifier, self.hand_back, self.tally, **settings)

    def results(self) -> dict[bytes, object]:
        """Each answered image's result, by its bytes (the tests name images by them)."""
        out = {}
        for message, _ in self.publisher.published:
            for result in decode_reply(message.body):
                out[f"image-{result.index}".encode()] = result
        return out


def batch(n: int, callback: str | None = None) -> list[Delivery]:
    out = []
    for i in range(n):
        reply = None if callback else REPLY
        task = make_task(
            reply, index=i, image=f"image-{i}".encode(), top_k=2, callback_url=callback
        )
        out.append(Delivery(task, FakeInbound.of(task), time.time()))
    return out


def settled(items: list[Delivery]) -> list[str | None]:
    return [d.inbound.settled_as for d in items]  # type: ignore[attr-defined]


def image(i: int) -> bytes:
    return f"image-{i}".encode()


@pytest.mark.parametrize(
    ("error", "confirm"),
    [(ActorDiedError(), 1), (task_error(ValueError("decoder bug")), 0)],
    ids=["crash", "own_code"],
)
async def test_a_poison_image_is_isolated_and_only_it_fails(error, confirm):
    rig = Rig(PoisonClassifier(poison=frozenset({image(5)}), poison_error=error))
    items = batch(16)
    await rig.process(items, alone=False)
    results = rig.results()
    poison = results.pop(image(5))
    assert poison.error is not None and poison.error.status == 422
    assert poison.error.message == POISON_MESSAGE and poison.predictions is None
    assert len(results) == 15 and all(r.predictions and r.error is None for r in results.values())
    assert settled(items) == ["ack"] * 16
    assert rig.tally.outcomes == {Outcome.ANSWERED: 15, Outcome.POISON: 1}
    # The whole batch, then two halves per level; a crash is confirmed once more alone.
    assert len(rig.classifier.calls) == 1 + 2 * 4 + confirm
    assert rig.tally.rework == {}


async def test_batch_mates_are_answered_before_the_search_ends():
    rig = Rig(PoisonClassifier(poison=frozenset({image(7)})))
    await rig.process(batch(8), alone=False)
    answered_in_order = [
        [r.index for r in decode_reply(m.body)] for m, _ in rig.publisher.published
    ]
    # The healthy half goes first, as soon as it succeeds; the poison's answer is last.
    assert answered_in_order[0] == [0, 1, 2, 3] and answered_in_order[-1] == [7]


@pytest.mark.parametrize("n", [2, 3, 5, 7, 12, 32])
async def test_the_calls_for_one_poison_grow_with_log2_of_the_batch(n):
    rig = Rig(PoisonClassifier(poison=frozenset({image(n - 1)})))
    items = batch(n)
    await rig.process(items, alone=False)
    assert len(rig.classifier.calls) <= 2 + 2 * math.ceil(math.log2(n))
    assert rig.tally.outcomes == {Outcome.ANSWERED: n - 1, Outcome.POISON: 1}
    assert settled(items) == ["ack"] * n


async def test_two_poisons_in_one_half_are_both_isolated():
    rig = Rig(PoisonClassifier(poison=frozenset({image(1), image(2)})))
    await rig.process(batch(8), alone=False)
    results = rig.results()
    assert {i for i in range(8) if results[image(i)].error is not None} == {1, 2}
    assert rig.tally.outcomes == {Outcome.ANSWERED: 6, Outcome.POISON: 2}


async def test_a_webhook_poison_posts_its_422_through_the_outbox():
    rig = Rig(PoisonClassifier(poison=frozenset({image(0)})))
    items = batch(2, callback="https://hooks.example.com/in")
    await rig.process(items, alone=False)
    bodies = {
        orjson.loads(m.body)["index"]: orjson.loads(m.body) for m in rig.publisher.to(WEBHOOKS)
    }
    assert bodies[0]["error"]["status"] == 422 and bodies[1]["predictions"]
    assert rig.tally.outcomes == {Outcome.WEBHOOK_QUEUED: 1, Outcome.POISON: 1}


@pytest.mark.parametrize("n", [1, 2, 8, 16])
@pytest.mark.parametrize(
    "error", [ActorDiedError(), task_error(ValueError("bad model"))], ids=["crash", "own_code"]
)
async def test_when_every_part_fails_it_is_the_classifier_and_all_go_back(n, error):
    rig = Rig(FakeClassifier(fail_with=error, fail_times=10**6))
    items = batch(n)
    await rig.process(items, alone=False)
    assert settled(items) == ["requeue"] * n
    assert rig.publisher.published == [] and rig.tally.outcomes == {}
    assert rig.tally.rework == {Rework.REQUEUED: n}
    # The whole batch and its two halves: a broken classifier is not bisected further.
    assert len(rig.classifier.calls) == (1 if n == 1 else 3)


async def test_a_crash_that_passes_on_the_second_try_alone_is_not_poison():
    # The replica died under the batch and under its first half, then came back.
    rig = Rig(FakeClassifier(fail_with=ActorDiedError(), fail_times=2))
    items = batch(2)
    await rig.process(items, alone=False)
    assert [len(images) for images, *_ in rig.classifier.calls] == [2, 1, 1, 1]
    assert rig.tally.outcomes == {Outcome.ANSWERED: 2}
    assert all(r.predictions for r in rig.results().values())


async def test_a_hung_call_times_out_and_the_hung_image_is_isolated():
    rig = Rig(PoisonClassifier(hang=frozenset({image(2)})), timeout=0.05)
    items = batch(4)
    started = time.monotonic()
    await asyncio.wait_for(rig.process(items, alone=False), timeout=5)
    assert rig.results()[image(2)].error.status == 422
    assert rig.tally.outcomes == {Outcome.ANSWERED: 3, Outcome.POISON: 1}
    # Four calls held the image that hangs, each abandoned at its timeout.
    assert 0.2 <= time.monotonic() - started < 2.0


async def test_a_lone_hung_call_is_a_failure_and_goes_back_to_the_queue():
    rig = Rig(PoisonClassifier(hang=frozenset({image(0)})), timeout=0.05)
    items = batch(1)
    before = rig.process.last_progress
    await asyncio.wait_for(rig.process(items, alone=True), timeout=2)
    assert settled(items) == ["requeue"]
    assert rig.process.last_progress > before


async def test_the_timeout_cancels_the_call():
    cancelled = asyncio.Event()

    async def classify(images, top_ks, alone):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rig = Rig(FakeClassifier(), timeout=0.02)
    rig.process._classify = classify
    await asyncio.wait_for(rig.process(batch(1), alone=False), timeout=5)
    assert cancelled.is_set()


async def test_cancel_on_abandon_cancels_the_serve_request():
    class Response:
        cancelled = False

        def __await__(self):
            return asyncio.Event().wait().__await__()

        def cancel(self):
            self.cancelled = True

    response = Response()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(cancel_on_abandon(response), timeout=0.01)
    assert response.cancelled


@pytest.mark.parametrize(
    "error",
    [
        BackPressureError(num_queued_requests=9, max_queued_requests=8),
        ReplicaUnavailableError("none"),
        DeploymentUnavailableError("Classifier"),
        PendingCallsLimitExceeded("too many"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_call_no_replica_ran_is_waited_out_not_split(error):
    rig = Rig(FakeClassifier(fail_with=error, fail_times=3))
    items = batch(4)
    await rig.process(items, alone=False)
    assert [len(images) for images, *_ in rig.classifier.calls] == [4] * 4
    assert settled(items) == ["ack"] * 4 and rig.tally.outcomes == {Outcome.ANSWERED: 4}


async def test_no_replica_for_too_long_requeues_the_batch_unsplit():
    rig = Rig(
        FakeClassifier(fail_with=BackPressureError(1, 1), fail_times=10**6),
        retry_delay=0.01,
        unavailable_wait=0.05,
    )
    items = batch(4)
    await rig.process(items, alone=False)
    assert settled(items) == ["requeue"] * 4 and rig.tally.outcomes == {}
    assert all(len(images) == 4 for images, *_ in rig.classifier.calls)
    assert 2 <= len(rig.classifier.calls) <= 6


async def test_a_wrong_number_of_outcomes_is_a_failure_of_the_classifier():
    class Short(FakeClassifier):
        async def __call__(self, images, top_ks, alone):
            return (await super().__call__(images, top_ks, alone))[:-1]

    rig = Rig(Short())
    items = batch(2)
    await rig.process(items, alone=False)
    assert settled(items) == ["requeue", "requeue"] and rig.publisher.published == []


async def test_progress_is_marked_when_a_batch_finishes():
    rig = Rig(FakeClassifier())
    before = rig.process.last_progress
    await asyncio.sleep(0.01)
    await rig.process(batch(2), alone=False)
    assert rig.process.last_progress > before


def test_failures_are_told_apart():
    # Nothing ran: Serve's router refused it.
    assert not_run(BackPressureError(1, 1)) and not_run(ReplicaUnavailableError("x"))
    assert not not_run(ActorDiedError()) and not not_run(ValueError("x"))
    # Raised inside the replica, even by a call it made itself: it did run.
    assert not not_run(task_error(BackPressureError(1, 1)))
    # Chance: the infrastructure failed mid-call.
    for error in (ActorDiedError(), ActorUnavailableError("x", None), CallTimedOut("t")):
        assert by_chance(error)
    assert by_chance(task_error(ActorDiedError()))
    upstream = RayServeException("upstream actor died")
    upstream.__cause__ = ActorDiedError()
    assert by_chance(upstream)
    # The classifier's own code: it will fail the same way again.
    assert not by_chance(task_error(ValueError("deterministic")))
    assert not by_chance(ValueError("deterministic")) and not by_chance(WrongAnswer("1 of 2"))
