"""Hand-back under broker trouble: an alarm costs no delivery, a return is no loop."""

from __future__ import annotations

from consumer.dedup import RecentIds
from consumer.handback import Answer, HandBack
from consumer.outcomes import Outcome, Rework, Tally
from rabbit_serve.messages import ClassifyResult
from rabbit_serve.transport import Outbound, PublishTimedOut, PublishUnroutable
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


class ReturningPublisher:
    async def publish(self, message: Outbound, routing_key: str) -> None:
        raise PublishUnroutable(f"no queue {routing_key!r}")


async def test_a_result_with_nowhere_to_go_is_counted_and_acked_not_requeued():
    # Requeueing it would loop: the reply queue it names is gone for good.
    tally = Tally()
    answered = RecentIds()
    hand_back = HandBack(ReturningPublisher(), tally, answered, webhook_queue="w", model_name="m")
    item, inbound = answer()
    await hand_back.answer([item], outcome=Outcome.DEAD_LETTERED)
    assert inbound.settled_as == "ack" and item.task.id in answered
    assert tally.outcomes[Outcome.UNROUTABLE] == 1 and tally.outcomes[Outcome.DEAD_LETTERED] == 0
    assert tally.rework[Rework.HANDBACK_FAILED] == 0
