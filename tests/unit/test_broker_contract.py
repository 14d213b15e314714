"""The broker seam's newer rules: returns, alarms, queue caps and the supported version."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiormq
import pytest

from rabbit_serve import broker
from rabbit_serve._amqp import _UNBLOCKED_ATTR, is_blocked, unblocked_event
from rabbit_serve.broker_version import (
    MINIMUM,
    SUPPORTED,
    UnsupportedBroker,
    check_version,
    parse_version,
    server_version,
)
from rabbit_serve.settings import Settings
from rabbit_serve.transport import Outbound, PublishBlocked, PublishRefused, PublishUnroutable


class ReturningExchange:
    async def publish(self, message, routing_key, *, mandatory=True):
        returned = SimpleNamespace(
            delivery=aiormq.spec.Basic.Return(
                reply_code=312, reply_text="NO_ROUTE", routing_key=routing_key
            )
        )
        raise aiormq.exceptions.PublishError(returned, None)  # type: ignore[arg-type]


def fake_connection(unblocked: asyncio.Event) -> SimpleNamespace:
    raw = SimpleNamespace(**{_UNBLOCKED_ATTR: unblocked})
    return SimpleNamespace(transport=SimpleNamespace(connection=raw))


def test_aiormq_still_keeps_the_blocked_state_where_we_read_it():
    # The attribute is private to aiormq: this fails first if an upgrade renames it.
    connection = aiormq.Connection("amqp://guest:guest@127.0.0.1/")
    assert isinstance(getattr(connection, _UNBLOCKED_ATTR), asyncio.Event)


async def test_a_returned_message_is_unroutable_and_still_a_refusal():
    channel = SimpleNamespace(default_exchange=ReturningExchange(), is_closed=False)
    publisher = broker.AioPikaPublisher(channel, timeout=1.0)  # type: ignore[arg-type]
    with pytest.raises(PublishUnroutable) as caught:
        await publisher.publish(Outbound(b"x", content_type="t"), "gone")
    assert isinstance(caught.value, PublishRefused)


async def test_while_blocked_a_client_publish_fails_at_once_and_a_result_waits():
    unblocked = asyncio.Event()  # cleared: blocked
    connection = fake_connection(unblocked)
    assert is_blocked(connection) and unblocked_event(connection) is unblocked
    sent = []

    class Exchange:
        async def publish(self, message, routing_key, *, mandatory=True):
            sent.append(routing_key)

    channel = SimpleNamespace(default_exchange=Exchange(), is_closed=False)
    at_once = broker.AioPikaPublisher(channel, timeout=1.0, connection=connection)  # type: ignore[arg-type]
    assert at_once.blocked
    with pytest.raises(PublishBlocked):
        await at_once.publish(Outbound(b"x", content_type="t"), "q")
    patient = broker.AioPikaPublisher(
        channel,  # type: ignore[arg-type]
        timeout=1.0,
        connection=connection,  # type: ignore[arg-type]
        wait_unblocked=None,
    )
    waiting = asyncio.create_task(patient.publish(Outbound(b"x", content_type="t"), "q"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and sent == []
    unblocked.set()
    await asyncio.wait_for(waiting, 1.0)
    assert sent == ["q"] and not is_blocked(connection)


def test_no_transport_is_not_blocked():
    assert not is_blocked(None) and not is_blocked(SimpleNamespace(transport=None))


def test_the_request_queue_is_capped_in_bytes_too():
    settings = Settings(max_queue_bytes=123, max_queue_length=7)
    arguments = broker.request_queue_arguments(settings)
    assert arguments["x-max-length-bytes"] == 123 and arguments["x-max-length"] == 7
    assert arguments["x-overflow"] == "reject-publish"


def test_the_webhook_outbox_dead_letters_to_its_own_queue():
    settings = Settings(webhook_dead_letter_queue="hooks.dead")
    arguments = broker.webhook_queue_arguments(settings)
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == "hooks.dead"
    assert arguments["x-queue-type"] == "quorum"


@pytest.mark.parametrize(
    "text,parsed",
    [("3.10.8", (3, 10, 8)), ("3.13.7-1", (3, 13, 7)), ("4.0", (4, 0, 0)), ("3.9.13", (3, 9, 13))],
)
def test_versions_parse(text, parsed):
    assert parse_version(text) == parsed


def test_below_the_floor_is_refused_with_what_to_do():
    with pytest.raises(UnsupportedBroker, match=r"3\.9\.13 is too old.*>=3\.10\.0"):
        check_version("3.9.13")
    assert check_version("3.10.8") is None and check_version("3.13.7") is None
    assert "newer than the tested range" in (check_version("4.1.0") or "")
    assert server_version({"version": b"3.10.8"}) == "3.10.8"
    assert SUPPORTED.startswith(">=" + ".".join(map(str, MINIMUM)))


def test_garbage_is_not_a_version():
    with pytest.raises(ValueError):
        parse_version("rabbit")


def test_a_consumer_the_broker_cancelled_is_seen():
    from rabbit_serve._amqp import is_consuming

    live: dict[str, object] = {"ctag-1": object()}
    raw = SimpleNamespace(consumers=live)
    queue = SimpleNamespace(_consumers={"ctag-1": {}}, channel=SimpleNamespace(_channel=raw))
    # aio-pika keeps the aiormq channel in an UnderlayChannel's .channel.
    queue.channel._channel = SimpleNamespace(channel=raw)
    assert is_consuming(queue)  # type: ignore[arg-type]
    live.clear()  # Basic.Cancel: aiormq forgets the tag
    assert not is_consuming(queue)  # type: ignore[arg-type]
    queue.channel._channel = None  # the channel is being re-opened
    assert not is_consuming(queue)  # type: ignore[arg-type]
    assert is_consuming(None) and is_consuming(SimpleNamespace(_consumers={}))  # type: ignore[arg-type]
