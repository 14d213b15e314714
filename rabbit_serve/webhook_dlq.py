"""The webhook dead-letter queue, for operators: list what no receiver accepted, and
move it back to the outbox once the receiver is fixed.

    python -m rabbit_serve.webhook_dlq list [--limit N]
    python -m rabbit_serve.webhook_dlq replay (--all | --id ID [--id ID ...])

Settings come from the environment (``AMQP_URL``, ``WEBHOOK_QUEUE``,
``WEBHOOK_DEAD_LETTER_QUEUE``...), as for the services. ``list`` looks without taking:
each entry is fetched unacknowledged and handed back untouched. ``replay`` publishes
each chosen entry to the outbox, waits for the broker's confirm, and only then acks it
out of the dead-letter queue, so an interrupted replay loses nothing (at worst an entry
is in both queues, and the ledger or the receiver drops the second POST). A replayed
entry carries a replay count (:data:`rabbit_serve.ledger.H_REPLAYS`), so the consumers
give it a fresh set of ``WEBHOOK_MAX_ATTEMPTS``; the receiver sees the same
``X-Rabbit-Serve-Id``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from rabbit_serve import broker
from rabbit_serve.ledger import H_REPLAYS
from rabbit_serve.messages import H_CALLBACK_URL, RESULT_CONTENT_TYPE
from rabbit_serve.settings import Settings, get_settings
from rabbit_serve.transport import Outbound, PublishFailed

# Seconds one basic.get waits for the broker's answer.
GET_TIMEOUT_S = 10.0
# What the broker adds on dead-lettering and delivery; a replayed entry starts without.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


@dataclass(frozen=True)
class Entry:
    """One dead-lettered webhook result, as ``list`` shows it."""

    id: str
    url: str
    reason: str
    deaths: int
    age_s: float | None
    replays: int


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def describe(
    message_id: str | None, headers: Mapping[str, Any], now: float, published: Any = None
) -> Entry:
    """Why and since when an entry is here: the broker's latest ``x-death`` record (the
    webhook outbox's: ``rejected`` once refused or out of attempts, ``delivery_limit``
    if consumers kept dying on it)."""
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, Mapping)]
    latest = deaths[0] if deaths else {}
    reason = _text(latest.get("reason") or headers.get("x-first-death-reason")) or "unknown"
    died = _epoch(latest.get("time")) or _epoch(published)
    replays = headers.get(H_REPLAYS, 0)
    return Entry(
        id=message_id or "",
        url=_text(headers.get(H_CALLBACK_URL)),
        reason=reason,
        deaths=sum(int(d.get("count") or 1) for d in deaths) or 1,
        age_s=None if died is None else max(now - died, 0.0),
        replays=replays if isinstance(replays, int) else 0,
    )


def replayed(
    body: bytes, headers: Mapping[str, Any], message_id: str | None, content_type: str | None
) -> Outbound:
    """The outbox entry a dead letter goes back as: the same bytes, id and URL, the
    broker's death records dropped, the replay count one up."""
    kept = {k: v for k, v in headers.items() if not k.startswith(_BROKER_HEADERS)}
    count = kept.get(H_REPLAYS, 0)
    kept[H_REPLAYS] = (count if isinstance(count, int) else 0) + 1
    return Outbound(
        body,
        content_type=content_type or RESULT_CONTENT_TYPE,
        message_id=message_id,
        headers=kept,
        persistent=True,
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def format_entries(entries: Sequence[Entry], total: int) -> str:
    rows = [("ID", "CALLBACK URL", "REASON", "DEATHS", "AGE", "REPLAYS")]
    rows += [(e.id, e.url, e.reason, str(e.deaths), _age(e.age_s), str(e.replays)) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"{len(entries)} shown of {total} in the webhook dead-letter queue")
    return "\n".join(lines)


async def _take(queue: AbstractQueue, most: int) -> list[AbstractIncomingMessage]:
    """Up to ``most`` entries, unacknowledged (they return to the queue if this process
    dies or they are nacked)."""
    taken: list[AbstractIncomingMessage] = []
    while len(taken) < most:
        message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_entries(settings: Settings, limit: int) -> tuple[list[Entry], int]:
    """The first ``limit`` entries, and how many the queue holds."""
    connection = await broker.connect(settings, name="rabbit-serve webhook-dlq list")
    try:
        channel = await broker.open_channel(connection)
        queue = await broker.declare_webhook_dead_letter_queue(channel, settings)
        total = queue.declaration_result.message_count or 0
        taken = await _take(queue, limit)
        now = time.time()
        entries = [describe(m.message_id, m.headers or {}, now, m.timestamp) for m in taken]
        for message in taken:
            await message.nack(requeue=True)
        return entries, total
    finally:
        await connection.close()


@dataclass(frozen=True)
class Replayed:
    ids: list[str]  # confirmed in the outbox and acked here
    missing: set[str]  # asked for, not found (or not reached: see ``error``)
    error: str = ""  # why it stopped early; what was not replayed is still here


async def replay(settings: Settings, ids: set[str] | None) -> Replayed:
    """Move the entries with ``ids`` (``None``: every entry there when it starts) back
    to the outbox: each is confirmed there before it is acked here. Entries not chosen
    are handed back to the dead-letter queue untouched."""
    connection = await broker.connect(settings, name="rabbit-serve webhook-dlq replay")
    try:
        channel = await broker.open_channel(connection)
        # The outbox and its dead-letter queue, declared as the consumers declare them.
        await broker.declare_webhook_queue(channel, settings)
        queue = await broker.declare_webhook_dead_letter_queue(channel, settings)
        publisher = broker.AioPikaPublisher(
            await broker.open_channel(connection, confirms=True),
            timeout=settings.publish_timeout,
            connection=connection,
            wait_unblocked=settings.publish_timeout,
        )
        # Bounded by what is there now: entries that die meanwhile wait for the next run,
        # and entries handed back are not fetched twice (they stay ours until the end).
        taken = await _take(queue, queue.declaration_result.message_count or 0)
        done: list[str] = []
        error = ""
        try:
            for message in taken:
                if ids is not None and message.message_id not in ids:
                    continue
                entry = replayed(
                    message.body, message.headers or {}, message.message_id, message.content_type
                )
                try:
                    await publisher.publish(entry, settings.webhook_queue)
                except PublishFailed as exc:
                    error = f"{message.message_id} was not confirmed in the outbox: {exc}"
                    break
                await message.ack()
                done.append(message.message_id or "")
        finally:
            for message in taken:
                if not message.processed:
                    await message.nack(requeue=True)
        return Replayed(done, set() if ids is None else ids - set(done), error)
    finally:
        await connection.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rabbit_serve.webhook_dlq",
        description="List or replay webhook results that no receiver accepted.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("list", help="show entries (they stay in the queue)")
    show.add_argument("--limit", type=int, default=100, help="entries to show (default 100)")
    again = commands.add_parser("replay", help="move entries back to the webhook outbox")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every entry")
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="a task id")
    args = parser.parse_args(argv)
    if args.command == "list" and args.limit < 1:
        parser.error("--limit must be >= 1")
    return args


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "list":
        entries, total = await list_entries(settings, args.limit)
        print(format_entries(entries, total))
        return 0
    result = await replay(settings, None if args.all else set(args.ids))
    print(f"replayed {len(result.ids)} to {settings.webhook_queue}")
    for task_id in result.ids:
        print(f"  {task_id}")
    if result.error:
        print(f"stopped: {result.error}; the rest stays in the dead-letter queue", file=sys.stderr)
        return 2
    if result.missing:
        print(f"not found: {' '.join(sorted(result.missing))}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args, get_settings()))
    except Exception as exc:
        print(f"webhook_dlq {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
