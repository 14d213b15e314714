"""The request queue's guarantees, checked against the real broker (no Ray needed),
and the consumer's dead-letter handling through the running app."""

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

from ingress.producer import Producer
from rabbit_serve import broker
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import (
    ClassifyTask,
    dead_letter_reason,
    decode_reply,
    encode_task,
)
from rabbit_serve.settings import Settings
from rabbit_serve.transport import SettleFailed
from tests.factories import make_task
from tests.images import sample

pytestmark = pytest.mark.integration


def isolated_settings(**overrides) -> Settings:
    name = f"rabbit-serve-test-{uuid.uuid4().hex[:8]}"
    return Settings(
        request_queue=f"{name}.requests",
        dead_letter_queue=f"{name}.dead",
        reply_queue_prefix=f"{name}.replies",
        **overrides,
    )


def coffee_task(reply_to: str, ttl: float = 30.0) -> ClassifyTask:
    return make_task(reply_to, ttl=ttl, image=sample("coffee.jpg"), top_k=1)


async def open_channel(settings: Settings):
    connection = await aio_pika.connect(settings.amqp_url)
    return connection, await connection.channel(publisher_confirms=True)


async def cleanup(channel, settings: Settings) -> None:
    await channel.queue_delete(settings.request_queue)
    await channel.queue_delete(settings.dead_letter_queue)


def broker_queues(settings: Settings) -> dict[str, dict[str, Any]]:
    """What the broker itself holds: each queue's type, durability and arguments.

    AMQP's passive declare answers only counts, so this asks rabbitmqctl on this machine.
    """
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl to read the broker's queue arguments")
    vhost = unquote(urlsplit(settings.amqp_url).path[1:]) or "/"
    columns = ("name", "type", "durable", "arguments")
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "-p", vhost, *columns, "--formatter", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # Each argument comes as [name, AMQP type, value].
    return {
        queue["name"]: {**queue, "arguments": {arg[0]: arg[2] for arg in queue["arguments"]}}
        for queue in json.loads(out)
    }


async def test_queue_is_durable_quorum_with_limits():
    settings = isolated_settings(max_queue_length=321, delivery_limit=4, max_queue_bytes=54321)
    connection, channel = await open_channel(settings)
    async with connection:
        queue, _ = await broker.declare_request_queue(channel, settings)
        try:
            assert queue.durable
            held = await asyncio.to_thread(broker_queues, settings)
            requests = held[settings.request_queue]
            assert (requests["type"], requests["durable"]) == ("quorum", True)
            assert requests["arguments"] == {
                "x-queue-type": "quorum",
                "x-delivery-limit": 4,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": settings.dead_letter_queue,
                "x-max-length": 321,
                "x-max-length-bytes": 54321,
                "x-overflow": "reject-publish",
            }
            dead = held[settings.dead_letter_queue]
            assert (dead["type"], dead["durable"]) == ("quorum", True)
            # Redeclaring with the same arguments is fine; with others it is a clear error.
            await broker.declare_request_queue(channel, settings)
            other = Settings(
                request_queue=settings.request_queue,
                dead_letter_queue=settings.dead_letter_queue,
                max_queue_length=7,
            )
            _, channel2 = await open_channel(settings)
            with pytest.raises(broker.QueueMismatch, match="delete_queue"):
                await broker.declare_request_queue(channel2, other)
            # ... and the queue keeps the limits it was made with.
            held = await asyncio.to_thread(broker_queues, settings)
            assert held[settings.request_queue]["arguments"]["x-max-length"] == 321
        finally:
            await cleanup(channel, settings)


async def test_a_delivery_goes_stale_when_its_channel_closes_and_comes_back():
    # What a consumer sees after a pause past the heartbeat: the copy it holds can no
    # longer be settled, and the broker delivers the message again, flagged.
    settings = isolated_settings()
    connection, channel = await open_channel(settings)
    async with connection:
        queue, _ = await broker.declare_request_queue(channel, settings)
        try:
            task = coffee_task("nobody")
            await channel.default_exchange.publish(
                broker.to_aio_pika(encode_task(task)), routing_key=settings.request_queue
            )
            held_connection, held_channel = await open_channel(settings)
            async with held_connection:
                held_queue = await held_channel.get_queue(settings.request_queue)
                message = await held_queue.get(timeout=5)
                inbound = broker.AioPikaInbound(message)
                assert not inbound.stale
                await held_channel.close()
                assert inbound.stale
                with pytest.raises(SettleFailed):
                    await inbound.ack()
            again = await queue.get(timeout=5)
            assert again.message_id == task.id and again.redelivered
            assert not broker.AioPikaInbound(again).stale
            await again.ack()
        finally:
            await cleanup(channel, settings)


async def test_a_consumer_cancelled_by_a_deleted_queue_consumes_again():
    settings = isolated_settings()
    connection = await broker.connect(settings, check=False)
    async with connection:
        channel = await broker.open_channel(connection, prefetch=4)
        requests, _ = await broker.declare_request_queue(channel, settings)
        got: list[str | None] = []

        async def on_request(inbound) -> None:
            got.append(inbound.message_id)
            await inbound.ack()

        other_connection, other = await open_channel(settings)
        try:
            await broker.consume(requests, on_request)
            assert broker.is_consuming(requests)
            await other.queue_delete(settings.request_queue)
            for _ in range(50):  # the broker's Basic.Cancel arrives asynchronously
                if not broker.is_consuming(requests):
                    break
                await asyncio.sleep(0.05)
            assert not broker.is_consuming(requests)
            await broker.consume_again(requests, on_request)
            assert broker.is_consuming(requests)
            task = coffee_task("nobody")
            await other.default_exchange.publish(
                broker.to_aio_pika(encode_task(task)), routing_key=settings.request_queue
            )
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got == [task.id]
            # One consumer, not two: aio-pika does not restore the cancelled tag as well.
            declared = await other.declare_queue(settings.request_queue, passive=True)
            assert declared.declaration_result.consumer_count == 1
        finally:
            await cleanup(channel, settings)
            await other_connection.close()


async def test_message_that_keeps_failing_is_dead_lettered_after_the_limit():
    settings = isolated_settings(delivery_limit=2)
    connection, channel = await open_channel(settings)
    async with connection:
        queue, dead = await broker.declare_request_queue(channel, settings)
        try:
            task = coffee_task("nobody")
            await channel.default_exchange.publish(
                broker.to_aio_pika(encode_task(task)), routing_key=settings.request_queue
            )
            deliveries = 0
            for _ in range(10):
                message = await queue.get(timeout=5, fail=False)
                if message is None:
                    break
                deliveries += 1
                await message.nack(requeue=True)  # as the consumer does when the model fails
            assert deliveries == settings.delivery_limit + 1
            for _ in range(50):
                dead_message = await dead.get(fail=False)
                if dead_message:
                    break
                await asyncio.sleep(0.05)
            assert dead_message is not None and dead_message.message_id == task.id
            assert dead_letter_reason(dead_message.headers) == "delivery_limit"
            await dead_message.ack()
        finally:
            await cleanup(channel, settings)


async def test_expired_messages_are_dead_lettered_as_expired():
    settings = isolated_settings()
    connection, channel = await open_channel(settings)
    async with connection:
        queue, dead = await broker.declare_request_queue(channel, settings)
        try:
            await channel.default_exchange.publish(
                broker.to_aio_pika(encode_task(coffee_task("nobody", ttl=0.1))),
                routing_key=settings.request_queue,
            )
            await asyncio.sleep(0.3)
            assert await queue.get(fail=False) is None
            for _ in range(50):
                dead_message = await dead.get(fail=False)
                if dead_message:
                    break
                await asyncio.sleep(0.05)
            assert dead_message is not None
            assert dead_letter_reason(dead_message.headers) == "expired"
            await dead_message.ack()
        finally:
            await cleanup(channel, settings)


async def test_full_queue_refuses_at_once_with_503():
    settings = isolated_settings(max_queue_length=3)
    producer = Producer(settings, f"unit-{uuid.uuid4().hex[:6]}", lambda r: None)
    await producer.start()
    try:
        # A quorum queue applies its length limit through its Raft log, so it may
        # accept a message or two past the cap before it starts refusing.
        accepted, refused_after = 0, None
        for _ in range(settings.max_queue_length + 5):
            started = time.monotonic()
            try:
                await producer.publish(encode_task(coffee_task(producer.reply_queue)))
                accepted += 1
            except ServiceUnavailable as exc:
                assert "queue is full" in str(exc)
                refused_after = time.monotonic() - started
                break
        assert refused_after is not None, f"{accepted} messages accepted, none refused"
        assert settings.max_queue_length <= accepted <= settings.max_queue_length + 2
        # The broker's nack, at once: not a confirm that PUBLISH_TIMEOUT gave up on.
        assert refused_after < settings.publish_timeout / 2
        assert producer.ready  # a refusal does not break the channel
    finally:
        connection, channel = await open_channel(settings)
        async with connection:
            await cleanup(channel, settings)
        await producer.close()


async def test_consumer_answers_dead_lettered_work_with_an_error(main_app, main_url):
    """A message the broker gave up on reaches its client as an explicit error."""
    settings = main_app.settings
    connection, channel = await open_channel(settings)
    async with connection:
        replies = await channel.declare_queue(exclusive=True)
        task = coffee_task(replies.name)
        message = broker.to_aio_pika(encode_task(task))
        message.headers["x-first-death-reason"] = "delivery_limit"
        await channel.default_exchange.publish(message, routing_key=settings.dead_letter_queue)
        reply = await asyncio.wait_for(_first(replies), timeout=20)
    (result,) = decode_reply(reply)
    assert result.id == task.id and result.predictions is None
    assert result.error is not None and result.error.status == 503
    assert "could not be classified" in result.error.message


async def _first(queue) -> bytes:
    async with queue.iterator(no_ack=True) as messages:
        async for message in messages:
            return message.body
    raise AssertionError("queue closed")
