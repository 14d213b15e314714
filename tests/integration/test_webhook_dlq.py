"""The webhook dead-letter command against the real broker, on throwaway queues (no Ray):
the broker itself dead-letters a rejected outbox entry; `list` shows it and leaves it;
`replay` moves only what it is asked to back to the outbox, confirmed before acked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from consumer.outbox import outbox_entry
from rabbit_serve import broker
from rabbit_serve.ledger import H_REPLAYS
from rabbit_serve.messages import H_CALLBACK_URL, ClassifyResult
from rabbit_serve.settings import Settings
from rabbit_serve.webhook_dlq import list_entries, replay

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
URL = "https://hooks.example.com/result"


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    name = f"rabbit-serve-test.dlq-{uuid.uuid4().hex[:8]}"
    settings = Settings(webhook_queue=name, webhook_dead_letter_queue=f"{name}.dead")
    yield settings
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (settings.webhook_queue, settings.webhook_dead_letter_queue):
            await channel.queue_delete(queue)


async def dead_letter(settings: Settings, *task_ids: str) -> None:
    """Put entries in the outbox and reject them, as a sender does once attempts are
    spent: the broker moves them to the webhook dead-letter queue."""
    connection = await broker.connect(settings, name="test webhook-dlq")
    async with connection:
        channel = await broker.open_channel(connection, confirms=True)
        outbox = await broker.declare_webhook_queue(channel, settings)
        for task_id in task_ids:
            result = ClassifyResult(id=task_id, request_id="r", index=0, predictions=[])
            entry = outbox_entry(result, URL, "m")
            await channel.default_exchange.publish(
                broker.to_aio_pika(entry), routing_key=settings.webhook_queue
            )
        for _ in task_ids:
            message = await outbox.get(timeout=5)
            assert message is not None
            await message.reject(requeue=False)


async def depth(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def wait_depth(settings: Settings, queue: str, want: int) -> int:
    # Dead-lettering is asynchronous in the broker: give it a moment.
    for _ in range(50):
        got = await depth(settings, queue)
        if got == want:
            return got
        await asyncio.sleep(0.1)
    return got


async def test_list_shows_an_entry_and_leaves_it_there(settings: Settings):
    await dead_letter(settings, "t-1", "t-2")
    assert await wait_depth(settings, settings.webhook_dead_letter_queue, 2) == 2
    entries, total = await list_entries(settings, limit=1)
    assert total == 2 and len(entries) == 1
    (entry,) = entries
    assert entry.id == "t-1" and entry.url == URL
    assert entry.reason == "rejected" and entry.deaths == 1 and entry.replays == 0
    assert entry.age_s is not None and 0 <= entry.age_s < 60
    assert await depth(settings, settings.webhook_dead_letter_queue) == 2


async def test_replay_moves_the_chosen_entry_back_to_the_outbox(settings: Settings):
    await dead_letter(settings, "t-1", "t-2")
    assert await wait_depth(settings, settings.webhook_dead_letter_queue, 2) == 2
    result = await replay(settings, {"t-2", "t-missing"})
    assert result.ids == ["t-2"] and result.missing == {"t-missing"} and not result.error
    assert await depth(settings, settings.webhook_dead_letter_queue) == 1
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        outbox = await channel.get_queue(settings.webhook_queue)
        message = await outbox.get(timeout=5)
        assert message is not None and message.message_id == "t-2"
        headers = message.headers or {}
        assert headers[H_REPLAYS] == 1 and headers[H_CALLBACK_URL] == URL
        # The broker's death records are gone (a quorum queue adds its own delivery count).
        assert not any(key.startswith("x-") for key in headers if key != "x-delivery-count")
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.ack()
        assert await outbox.get(fail=False, timeout=5) is None
    # The one left is still there, untouched.
    entries, total = await list_entries(settings, limit=10)
    assert total == 1 and [e.id for e in entries] == ["t-1"]


async def test_replay_all_empties_the_queue(settings: Settings):
    await dead_letter(settings, "t-1", "t-2", "t-3")
    assert await wait_depth(settings, settings.webhook_dead_letter_queue, 3) == 3
    result = await replay(settings, None)
    assert sorted(result.ids) == ["t-1", "t-2", "t-3"] and not result.missing
    assert await depth(settings, settings.webhook_dead_letter_queue) == 0
    assert await depth(settings, settings.webhook_queue) == 3


async def test_the_command_line_reads_its_settings_from_the_environment(settings: Settings):
    await dead_letter(settings, "t-cli")
    assert await wait_depth(settings, settings.webhook_dead_letter_queue, 1) == 1
    env = {
        **os.environ,
        "WEBHOOK_QUEUE": settings.webhook_queue,
        "WEBHOOK_DEAD_LETTER_QUEUE": settings.webhook_dead_letter_queue,
    }

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rabbit_serve.webhook_dlq", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = command("list")
    assert listed.returncode == 0, listed.stderr
    assert "t-cli" in listed.stdout and URL in listed.stdout and "rejected" in listed.stdout
    assert "1 shown of 1" in listed.stdout
    replayed = command("replay", "--id", "t-cli", "--id", "t-nope")
    assert replayed.returncode == 1 and "t-nope" in replayed.stderr
    assert "replayed 1" in replayed.stdout
    assert await depth(settings, settings.webhook_queue) == 1
