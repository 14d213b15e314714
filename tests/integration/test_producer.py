"""The ingress producer against the real broker (and against no broker at all)."""

import asyncio
import time
import uuid

import aio_pika
import pytest

from ingress.producer import Producer
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import ClassifyResult, decode_task, encode_task
from rabbit_serve.settings import Settings
from tests.factories import make_task
from tests.integration.conftest import SLOW_SPELL_S


async def test_unreachable_broker_gives_a_fast_503():
    settings = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", broker_connect_timeout=1)
    producer = Producer(settings, "unit", lambda r: None)
    started = time.monotonic()
    await producer.start()  # does not raise: the replica must still come up
    # One attempt, bounded by BROKER_CONNECT_TIMEOUT (a refused port fails sooner).
    assert time.monotonic() - started < settings.broker_connect_timeout + SLOW_SPELL_S
    assert not producer.ready
    refused = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        await producer.publish(encode_task(make_task(producer.reply_queue, image=b"img")))
    # Refused at once: there is no channel whose confirm PUBLISH_TIMEOUT could wait for.
    assert time.monotonic() - refused < settings.publish_timeout / 2
    await producer.close()


@pytest.mark.integration
async def test_publish_is_confirmed_and_replies_come_back():
    queue_name = f"rabbit-serve-unit.{uuid.uuid4().hex[:8]}"
    settings = Settings(request_queue=queue_name, dead_letter_queue=f"{queue_name}.dead")
    received: list[ClassifyResult] = []
    producer = Producer(settings, f"unit-{uuid.uuid4().hex[:6]}", received.append)
    await producer.start()
    assert producer.ready
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        sent = make_task(producer.reply_queue, image=b"img")
        await producer.publish(encode_task(sent))
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        message = await queue.get(timeout=5)
        got = decode_task(message.body, message.headers, message.message_id, message.reply_to)
        assert got.image == b"img" and got.reply_to == producer.reply_queue
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.ack()
        reply = ClassifyResult(id=got.id, request_id="r", index=0, predictions=[])
        await channel.default_exchange.publish(
            aio_pika.Message(reply.to_json()), routing_key=got.reply_to
        )
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        assert [r.id for r in received] == [sent.id]
        await queue.delete(if_unused=False, if_empty=False)
        await channel.queue_delete(settings.dead_letter_queue)
    finally:
        await producer.close()
        await connection.close()
