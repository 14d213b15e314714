"""What the Producer tells a client when the broker does not take its work."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from ingress.producer import Producer, client_message
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import encode_task
from rabbit_serve.settings import Settings
from rabbit_serve.transport import PublishFailed, PublishRefused, PublishTimedOut
from tests.factories import make_task


@pytest.mark.parametrize(
    "exc,text",
    [
        (PublishRefused("nack"), "the request queue is full; retry after the Retry-After delay"),
        (PublishTimedOut("5s"), "message broker did not confirm the publish in time"),
        (
            PublishFailed("channel closed"),
            "the publish to the message broker did not complete: channel closed",
        ),
    ],
)
def test_each_publish_failure_has_a_message_for_the_client(exc, text):
    assert client_message(exc) == text


async def test_before_any_connection_a_publish_is_refused_at_once():
    producer = Producer(Settings(), "unit", lambda result: None)
    assert not producer.ready
    with pytest.raises(ServiceUnavailable, match="message broker is not reachable"):
        await producer.publish(encode_task(make_task(producer.reply_queue)))


def test_an_alarm_and_a_missing_queue_each_say_what_happened():
    from rabbit_serve.transport import PublishBlocked, PublishUnroutable

    assert "blocking publishes (a memory or disk alarm)" in client_message(PublishBlocked("x"))
    assert "request queue does not exist" in client_message(PublishUnroutable("x"))


def test_a_replica_without_a_connection_says_why_it_is_not_ready():
    producer = Producer(Settings(), "unit", lambda result: None)
    assert producer.problem() == "message broker is not connected" and not producer.blocked


class SilentPublisher:
    """Never confirms until ``answer`` is set; counts what was sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.silent = True
        self.ready = True
        self.blocked = False

    async def publish(self, message, routing_key):
        from rabbit_serve.transport import PublishTimedOut

        self.sent += 1
        if self.silent:
            await asyncio.sleep(0.05)
            raise PublishTimedOut("no confirm")


def connected_producer(publisher: SilentPublisher) -> Producer:
    producer = Producer(Settings(), "unit", lambda result: None)
    connected = asyncio.Event()
    connected.set()
    producer._connection = SimpleNamespace(is_closed=False, connected=connected, transport=None)  # type: ignore[assignment]
    producer._publisher = publisher  # type: ignore[assignment]
    return producer


async def test_after_a_lost_confirm_only_one_publish_at_a_time_probes_the_broker():
    publisher = SilentPublisher()
    producer = connected_producer(publisher)
    message = encode_task(make_task(producer.reply_queue))
    with pytest.raises(ServiceUnavailable, match="did not confirm"):
        await producer.publish(message)
    assert producer.problem() == "message broker has stopped confirming publishes"
    # One probe goes out; everything sent meanwhile is refused at once, unsent.
    outcomes = await asyncio.gather(
        *(producer.publish(message) for _ in range(5)), return_exceptions=True
    )
    assert publisher.sent == 2
    assert sum("stopped confirming" in str(o) for o in outcomes) == 4
    # Confirms are back: every publish goes through again.
    publisher.silent = False
    await producer.publish(message)
    await asyncio.gather(*(producer.publish(message) for _ in range(3)))
    assert publisher.sent == 6 and producer.problem() is None
