"""The least-privilege broker users of scripts/broker_users.sh, on the real broker.

The real script creates both users on a throwaway vhost (deleted afterwards); the real
ingress Producer and the consumer's real connection path (broker.connect with
CONSUMER_AMQP_URL, the queue declarations, HandBack) then run as those users, end to
end. Then each user tries what it must not do, and the broker refuses with
ACCESS_REFUSED.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiormq
import pytest

from consumer.dedup import RecentIds
from consumer.handback import Answer, HandBack
from consumer.outcomes import Tally
from ingress.producer import Producer
from rabbit_serve import broker
from rabbit_serve.messages import ClassifyResult, decode_task, encode_task
from rabbit_serve.settings import Settings
from rabbit_serve.transport import Inbound
from tests.factories import make_task

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "broker_users.sh"
REFUSED = aiormq.exceptions.ChannelAccessRefused


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"rabbitmqctl {args}: {result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class Users:
    vhost: str
    ingress: Settings
    consumer: Settings
    names: tuple[str, str]
    script_env: dict[str, str]


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    # Module-wide: each rabbitmqctl call costs about a second of Erlang start-up.
    tag = uuid.uuid4().hex[:8]
    vhost = f"rabbit-serve-test-{tag}"
    ingress_user, consumer_user = f"rs-test-ingress-{tag}", f"rs-test-consumer-{tag}"
    env = {
        "RABBITMQ_VHOST": vhost,
        "RABBITMQ_INGRESS_USER": ingress_user,
        "RABBITMQ_CONSUMER_USER": consumer_user,
        "RABBITMQ_INGRESS_PASSWORD": secrets.token_hex(16),
        "RABBITMQ_CONSUMER_PASSWORD": secrets.token_hex(16),
    }
    try:
        first = run_script(env)
        assert first.returncode == 0, first.stderr
        # Idempotent, and a second run with new passwords rotates them.
        env["RABBITMQ_INGRESS_PASSWORD"] = secrets.token_hex(16)
        env["RABBITMQ_CONSUMER_PASSWORD"] = secrets.token_hex(16)
        second = run_script(env)
        assert second.returncode == 0, second.stderr

        def url(user: str, password: str) -> str:
            return f"amqp://{user}:{password}@127.0.0.1:5672/{quote(vhost, safe='')}"

        # Queue names are the defaults: the vhost keeps them apart from everything else.
        yield Users(
            vhost=vhost,
            ingress=Settings(
                ingress_amqp_url=url(ingress_user, env["RABBITMQ_INGRESS_PASSWORD"]),
                amqp_url="amqp://nobody:nothing@127.0.0.1:1/",  # must not be used
                broker_connect_timeout=3,
            ),
            consumer=Settings(
                consumer_amqp_url=url(consumer_user, env["RABBITMQ_CONSUMER_PASSWORD"]),
                amqp_url="amqp://nobody:nothing@127.0.0.1:1/",
                broker_connect_timeout=3,
            ),
            names=(ingress_user, consumer_user),
            script_env=env,
        )
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
        for user in (ingress_user, consumer_user):
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True)


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@dataclass
class ConsumerSide:
    """The consumer's broker path, as consumer/worker.py wires it."""

    connection: broker.Connection
    publishing: broker.Connection
    outbox: list[aio_pika.abc.AbstractIncomingMessage]

    async def close(self) -> None:
        await self.connection.close()
        await self.publishing.close()


async def start_consumer(settings: Settings) -> ConsumerSide:
    url = settings.consumer_broker_url
    connection = await broker.connect(settings, url=url, name="test consumer consume")
    publishing = await broker.connect(settings, url=url, name="test consumer publish")
    channel = await broker.open_channel(connection, prefetch=settings.prefetch_count)
    requests, dead_letters = await broker.declare_request_queue(channel, settings)
    publisher = broker.AioPikaPublisher(
        await broker.open_channel(publishing, confirms=True),
        timeout=settings.publish_timeout,
        connection=publishing,
    )
    hand_back = HandBack(
        publisher,
        Tally(),
        RecentIds(),
        webhook_queue=settings.webhook_queue,
        model_name=settings.model_name,
    )

    async def on_request(inbound: Inbound) -> None:
        task = decode_task(inbound.body, inbound.headers, inbound.message_id, inbound.reply_to)
        result = ClassifyResult(id=task.id, request_id=task.request_id, index=0, predictions=[])
        await hand_back.answer([Answer(inbound, task, result)])

    async def on_dead_letter(inbound: Inbound) -> None:
        await inbound.ack()

    await broker.consume(requests, on_request)
    await broker.consume(dead_letters, on_dead_letter)
    webhook_channel = await broker.open_channel(connection, prefetch=4)
    outbox_queue = await broker.declare_webhook_queue(webhook_channel, settings)
    side = ConsumerSide(connection, publishing, [])

    async def on_entry(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        side.outbox.append(message)
        await message.ack()

    await outbox_queue.consume(on_entry)
    return side


@pytest.fixture
async def running(users: Users) -> AsyncIterator[tuple[Users, Producer, list[ClassifyResult]]]:
    received: list[ClassifyResult] = []
    producer = Producer(users.ingress, f"least-{uuid.uuid4().hex[:6]}", received.append)
    consumer = None
    try:
        consumer = await start_consumer(users.consumer)
        await producer.start()
        assert producer.ready
        yield users, producer, received
    finally:
        await producer.close()
        if consumer is not None:
            await consumer.close()


async def test_the_ingress_waits_for_the_consumers_to_declare_the_request_queue(users):
    # The ingress may not declare the request queue (only the consumers may): without
    # it, the ingress stays not ready and retries, until a consumer has declared it.
    await asyncio.to_thread(  # in case another test ran first; absent is fine
        subprocess.run,
        ["rabbitmqctl", "-q", "delete_queue", "-p", users.vhost, users.ingress.request_queue],
        capture_output=True,
        check=False,
    )
    producer = Producer(users.ingress, f"first-{uuid.uuid4().hex[:6]}", lambda r: None)
    consumer = None
    try:
        await producer.start()
        assert not producer.ready
        consumer = await start_consumer(users.consumer)
        await wait_for(lambda: producer.ready)
    finally:
        await producer.close()
        if consumer is not None:
            await consumer.close()


async def test_the_ingress_and_a_consumer_work_as_their_own_users(running):
    users, producer, received = running
    sent = make_task(producer.reply_queue, image=b"img")
    await producer.publish(encode_task(sent))
    await wait_for(lambda: bool(received))
    assert [r.id for r in received] == [sent.id]

    # Each connection authenticated as its own user, on the throwaway vhost.
    listed = await asyncio.to_thread(
        rabbitmqctl, "list_connections", "user", "vhost", "--no-table-headers"
    )
    seen = {tuple(line.split("\t")) for line in listed.splitlines() if users.vhost in line}
    assert seen == {(users.names[0], users.vhost), (users.names[1], users.vhost)}


async def test_the_consumer_hands_webhook_results_to_its_outbox(users):
    consumer = await start_consumer(users.consumer)
    try:
        connection = await broker.connect(
            users.ingress, url=users.ingress.ingress_broker_url, name="test ingress"
        )
        async with connection:
            await broker.ensure_request_queue(connection, users.ingress)
            channel = await broker.open_channel(connection, confirms=True)
            task = make_task(None, callback_url="https://receiver.example/hook")
            await broker.AioPikaPublisher(channel, timeout=5, mandatory=True).publish(
                encode_task(task), users.ingress.request_queue
            )
            await wait_for(lambda: bool(consumer.outbox))
        assert consumer.outbox[0].message_id == task.id
    finally:
        await consumer.close()


def test_the_users_have_no_tags(users):
    listed = rabbitmqctl("list_users", "--no-table-headers")
    tags = dict(line.split("\t", 1) for line in listed.splitlines() if line.strip())
    assert tags[users.names[0]].strip() == "[]"
    assert tags[users.names[1]].strip() == "[]"


def test_the_script_needs_both_passwords(users):
    env = {k: v for k, v in users.script_env.items() if k != "RABBITMQ_CONSUMER_PASSWORD"}
    result = run_script({**env, "RABBITMQ_CONSUMER_PASSWORD": ""})
    assert result.returncode != 0
    assert "RABBITMQ_CONSUMER_PASSWORD" in result.stderr


async def refused(
    connection: aio_pika.abc.AbstractConnection,
    attempt: Callable[[aio_pika.abc.AbstractChannel], Awaitable[object]],
) -> str:
    """Run ``attempt`` on a fresh channel; it must end in ACCESS_REFUSED (the broker
    closes that channel). Returns the broker's reason."""
    channel = aio_pika.Channel(connection, publisher_confirms=True)
    await channel.initialize()
    with pytest.raises(REFUSED) as caught:
        await attempt(channel)
        # A refused publish closes the channel after the method returned: a round trip
        # that needs no permission brings the close in.
        await asyncio.wait_for(channel.set_qos(prefetch_count=1), 5)
    assert "ACCESS_REFUSED" in str(caught.value)
    return str(caught.value)


async def test_the_ingress_user_is_refused_what_it_must_not_do(running):
    users, _, _ = running
    settings = users.ingress
    connection = await aio_pika.connect(settings.ingress_broker_url)
    async with connection:

        async def consume_requests(channel):
            queue = await channel.declare_queue(settings.request_queue, passive=True)
            await queue.consume(lambda m: None)

        async def get_request(channel):
            queue = await channel.declare_queue(settings.request_queue, passive=True)
            await queue.get(fail=False)

        async def consume_outbox(channel):
            queue = await channel.declare_queue(settings.webhook_queue, passive=True)
            await queue.consume(lambda m: None)

        reason = await refused(connection, consume_requests)
        assert settings.request_queue in reason
        await refused(connection, get_request)
        await refused(connection, consume_outbox)
        for name in (settings.request_queue, settings.dead_letter_queue, settings.webhook_queue):
            await refused(connection, lambda channel, name=name: channel.queue_delete(name))

        async def purge_requests(channel):
            queue = await channel.get_queue(settings.request_queue, ensure=False)
            await queue.purge()

        await refused(connection, purge_requests)
        # It may not (re)declare the request queue or any queue outside its reply prefix.
        await refused(
            connection,
            lambda channel: broker.declare_request_queue(channel, settings),
        )
        await refused(
            connection,
            lambda channel: channel.declare_queue("rabbit-serve.elsewhere", exclusive=True),
        )

        # Publishing through any named exchange: refused, e.g. amq.direct towards the
        # webhook outbox (were a binding there), and declaring its own exchange.
        async def publish_via_amq_direct(channel):
            exchange = await channel.get_exchange("amq.direct", ensure=False)
            await exchange.publish(aio_pika.Message(b"x"), routing_key=settings.webhook_queue)

        reason = await refused(connection, publish_via_amq_direct)
        assert "amq.direct" in reason
        await refused(connection, lambda channel: channel.declare_exchange("rabbit-serve.x"))


async def test_the_consumer_user_is_refused_other_queues(running):
    users, producer, _ = running
    settings = users.consumer
    connection = await aio_pika.connect(settings.consumer_broker_url)
    async with connection:
        for name in ("rabbit-serve.elsewhere", f"{settings.reply_queue_prefix}.forged"):
            reason = await refused(
                connection, lambda channel, name=name: channel.declare_queue(name, durable=True)
            )
            assert name in reason

        async def consume(channel, name):
            # Not declared first: a passive declare of another connection's exclusive
            # queue is refused for that (RESOURCE_LOCKED) before any permission check.
            queue = await channel.get_queue(name, ensure=False)
            await queue.consume(lambda m: None)

        # Neither an ingress replica's reply queue nor the webhook dead letters (the
        # operator's, replayed with AMQP_URL).
        await refused(connection, lambda channel: consume(channel, producer.reply_queue))
        await refused(
            connection, lambda channel: consume(channel, settings.webhook_dead_letter_queue)
        )
        await refused(connection, lambda channel: channel.declare_exchange("rabbit-serve.x"))
