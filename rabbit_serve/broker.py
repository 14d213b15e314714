"""RabbitMQ plumbing shared by the ingress and the consumers (aio-pika, never blocking).

The queue topology lives here once: a durable quorum queue for requests (it
survives broker restarts and replicates in a cluster) with its dead-letter
queue, and per-ingress-replica reply queues that die with their replica.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from rabbit_serve._amqp import (
    AioPikaInbound,
    AioPikaPublisher,
    consume,
    consume_again,
    is_blocked,
    is_consuming,
    to_aio_pika,
    unblocked_event,
)
from rabbit_serve.broker_version import check_version, server_version
from rabbit_serve.settings import Settings

__all__ = [
    "RECONNECT_DELAY_S",
    "AioPikaInbound",
    "AioPikaPublisher",
    "Connection",
    "QueueMismatch",
    "RequestQueueMissing",
    "RequestQueues",
    "connect",
    "connection_version",
    "consume",
    "consume_again",
    "declare_dead_letter_queue",
    "declare_reply_queue",
    "declare_request_queue",
    "declare_webhook_dead_letter_queue",
    "declare_webhook_queue",
    "ensure_request_queue",
    "is_blocked",
    "is_connected",
    "is_consuming",
    "open_channel",
    "reply_queue_name",
    "request_queue_arguments",
    "to_aio_pika",
    "unblocked_event",
]

logger = logging.getLogger(__name__)

Connection = AbstractRobustConnection

# Between attempts to open a first connection (a robust connection, once open,
# re-opens itself on its own schedule).
RECONNECT_DELAY_S = 1.0


class QueueMismatch(RuntimeError):
    """A queue already exists with arguments this version does not declare."""


class RequestQueueMissing(RuntimeError):
    """The request queue does not exist, and this broker user may not declare it."""


async def connect(
    settings: Settings,
    *,
    url: str | None = None,
    name: str = "rabbit-serve",
    check: bool = True,
) -> AbstractRobustConnection:
    """A connection that re-opens itself, its channels, queues and consumers after a drop.

    ``url`` defaults to ``AMQP_URL``; the ingress passes
    :attr:`Settings.ingress_broker_url` and the consumers
    :attr:`Settings.consumer_broker_url`, so each can run as its own broker user with
    only the permissions it needs (``scripts/broker_users.sh``).

    Heartbeats every ``AMQP_HEARTBEAT / 2`` seconds, so a dead or partitioned peer is
    noticed in seconds, not aiormq's default of minutes; re-opening is tried every
    :data:`RECONNECT_DELAY_S`. ``name`` shows in the management UI and
    ``rabbitmqctl list_connections``. With ``check``, a broker older than
    :data:`rabbit_serve.broker_version.MINIMUM` is refused (the connection closed,
    :class:`~rabbit_serve.broker_version.UnsupportedBroker` raised).
    """
    connection = await aio_pika.connect_robust(
        url or settings.amqp_url,
        timeout=settings.broker_connect_timeout,
        heartbeat=settings.amqp_heartbeat,
        reconnect_interval=RECONNECT_DELAY_S,
        client_properties={"connection_name": name},
    )
    if check:
        try:
            warning = check_version(connection_version(connection))
        except Exception:
            await connection.close()
            raise
        if warning:
            logger.warning(warning)
    return connection


def connection_version(connection: AbstractRobustConnection) -> str:
    """The broker version announced on ``connection`` ("" if not connected)."""
    transport = connection.transport
    if transport is None:
        return ""
    return server_version(transport.connection.server_properties or {})


async def open_channel(
    connection: AbstractRobustConnection, *, prefetch: int = 0, confirms: bool = False
) -> AbstractRobustChannel:
    """A channel with its own prefetch (unacked deliveries it may hold; 0 for a channel
    that only publishes); with ``confirms``, each publish on it waits for the broker's
    confirm and a returned (unroutable) message raises."""
    channel = await connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    if prefetch:
        await channel.set_qos(prefetch_count=prefetch)
    return channel


def request_queue_arguments(settings: Settings) -> dict[str, Any]:
    """The request queue's guarantees, declared identically by every process.

    Quorum: replicated and durable. A delivery limit, so a message that keeps
    failing (or keeps crashing its consumer) stops being retried. Dead-lettering
    to :attr:`Settings.dead_letter_queue`, where a consumer answers its client
    with an error instead of letting it time out. A length cap with
    reject-publish, so a full queue refuses new work at once (the ingress turns
    the broker's nack into 503 + Retry-After) instead of growing without bound.
    """
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.dead_letter_queue,
        "x-max-length": settings.max_queue_length,
        "x-max-length-bytes": settings.max_queue_bytes,
        "x-overflow": "reject-publish",
    }


class RequestQueues(NamedTuple):
    requests: AbstractQueue
    dead_letters: AbstractQueue


async def declare_request_queue(channel: AbstractChannel, settings: Settings) -> RequestQueues:
    """The dead-letter queue, then the request queue that feeds it; both are returned.

    Queue arguments cannot change once a queue exists: a queue left by an older
    version with other arguments is reported with the command that fixes it.
    """
    try:
        dead_letters = await declare_dead_letter_queue(channel, settings)
        requests = await channel.declare_queue(
            settings.request_queue, durable=True, arguments=request_queue_arguments(settings)
        )
        return RequestQueues(requests, dead_letters)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise QueueMismatch(
            f"queue {settings.request_queue!r} or {settings.dead_letter_queue!r} exists with "
            f"other arguments ({exc}); drain it, then delete it "
            f"(rabbitmqctl delete_queue {settings.request_queue}) or set REQUEST_QUEUE "
            "to a new name"
        ) from exc


async def ensure_request_queue(connection: AbstractRobustConnection, settings: Settings) -> None:
    """Declare the request queue (and its dead letters) where this broker user may, else
    check that it exists: what the ingress does before it publishes.

    The ingress's least-privilege user (``scripts/broker_users.sh``) may not configure the
    request queue, so that it cannot delete it, and may not read it, which RabbitMQ
    requires of whoever first declares a queue with a dead-letter exchange; the consumers
    declare it. Each step runs on a plain channel of its own: a refusal closes only that
    channel, never the caller's publishing one, and no robust channel is left to
    re-declare the queue after a reconnect (which that user would be refused too).
    Raises :class:`RequestQueueMissing` when the queue is absent and may not be declared.
    """
    try:
        async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
            await declare_request_queue(channel, settings)
        return
    except aiormq.exceptions.ChannelAccessRefused:
        pass
    try:
        async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
            await channel.declare_queue(settings.request_queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise RequestQueueMissing(
            f"queue {settings.request_queue!r} does not exist and this broker user may not "
            "declare it; the consumers declare it when they start"
        ) from exc


async def declare_dead_letter_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    return await channel.declare_queue(
        settings.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )


def webhook_queue_arguments(settings: Settings) -> dict[str, Any]:
    """The outbox's guarantees: quorum, a delivery limit (a consumer that keeps dying on
    an entry), and a dead-letter queue for results no receiver accepted."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.webhook_dead_letter_queue,
    }


async def declare_webhook_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """The webhook outbox (and its dead-letter queue first): results wait here, durably,
    while a slow receiver is retried, so they never hold the request queue's prefetch
    credits."""
    try:
        await declare_webhook_dead_letter_queue(channel, settings)
        return await channel.declare_queue(
            settings.webhook_queue, durable=True, arguments=webhook_queue_arguments(settings)
        )
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise QueueMismatch(
            f"queue {settings.webhook_queue!r} exists with other arguments ({exc}); once it "
            f"is empty, delete it (rabbitmqctl delete_queue {settings.webhook_queue}) or set "
            "WEBHOOK_QUEUE to a new name"
        ) from exc


async def declare_webhook_dead_letter_queue(
    channel: AbstractChannel, settings: Settings
) -> AbstractQueue:
    """Where webhook results go that no receiver accepted: kept until an operator lists
    and replays them (``python -m rabbit_serve.webhook_dlq``)."""
    return await channel.declare_queue(
        settings.webhook_dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )


def reply_queue_name(settings: Settings, owner: str) -> str:
    return f"{settings.reply_queue_prefix}.{owner}"


async def declare_reply_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """A replica's private reply queue: exclusive, so it disappears with the replica."""
    return await channel.declare_queue(name, durable=False, exclusive=True, auto_delete=True)


def is_connected(connection: AbstractRobustConnection | None) -> bool:
    """Open and, for a robust connection, not in the middle of re-connecting."""
    return connection is not None and not connection.is_closed and connection.connected.is_set()
