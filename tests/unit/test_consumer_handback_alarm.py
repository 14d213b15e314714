"""A broker alarm that begins while a result waits for its confirm costs no delivery."""

from __future__ import annotations

from consumer.dedup import RecentIds
from consumer.handback import Answer, HandBack
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import ClassifyResult
from rabbit_serve.transport import Outbound, PublishTimedOut
from tests.factories import make_task
from tests.fakes import FakeInbound


class AlarmedPublisher:
    """Times out ``timeouts`` times while ``blocked``, then confirms."""

    def __init__(self, timeouts: int, blocked: bool) -> None:
        self.timeouts = timeouts
        self.blocked = blocked
        self.attempts = 0
        self.published: list[str] = []

    async def publish(self, message: Outbound, routing_key: str) -> None:
        self.attempts += 1
        if self.attempts <= self.timeouts:
            raise PublishTimedOut("no confirm")
        self.published.append(routing_key)


def answer() -> tuple[Answer, FakeInbound]:
    task = make_task("r.a")
    inbound = FakeInbound.of(task)
    result = ClassifyResult(task.id, task.request_id, task.index, predictions=[])
    return Answer(inbound, task, result), inbound


async def test_a_confirm_lost_to_an_alarm_is_published_again_not_requeued():
    publisher = AlarmedPublisher(timeouts=2, blocked=True)
    tally = Tally()
    hand_back = HandBack(publisher, tally, RecentIds(), webhook_queue="w", model_name="m")
    item, inbound = answer()
    await hand_back.answer([item])
    assert publisher.attempts == 3 and publisher.published == ["r.a"]
    assert inbound.settled_as == "ack" and tally.outcomes[Outcome.ANSWERED] == 1
    assert tally.rework[Rework.HANDBACK_FAILED] == 0


async def test_a_timeout_without_an_alarm_still_goes_back_to_the_queue():
    publisher = AlarmedPublisher(timeouts=1, blocked=False)
    tally = Tally()
    hand_back = HandBack(publisher, tally, RecentIds(), webhook_queue="w", model_name="m")
    item, inbound = answer()
    await hand_back.answer([item])
    assert publisher.attempts == 1 and inbound.settled_as == "requeue"
    assert tally.rework[Rework.HANDBACK_FAILED] == 1
