"""RabbitMQ plumbing shared by the ingress and the consumers (aio-pika, never blocking).

The queue topology lives here once: a durable quorum queue for requests (it
survives broker restarts and replicates in a cluster), and per-ingress-replica
reply queues that die with their replica.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)

from rabbit_serve.messages import AmqpMessage
from rabbit_serve.settings import Settings

logger = logging.getLogger(__name__)


async def connect(settings: Settings) -> AbstractRobustConnection:
    """A connection that re-opens itself, its channels, queues and consumers after a drop."""
    return await aio_pika.connect_robust(
        settings.amqp_url,
        timeout=settings.broker_connect_timeout,
        client_properties={"connection_name": "rabbit-serve"},
    )


async def declare_request_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """The request queue, declared the same way by every process that touches it.

    Limits such as delivery counts, length caps and dead-lettering belong in a
    RabbitMQ *policy*, not here: queue arguments cannot change once declared.
    """
    return await channel.declare_queue(
        settings.request_queue,
        durable=True,
        arguments={"x-queue-type": "quorum"},
    )


def reply_queue_name(settings: Settings, owner: str) -> str:
    return f"{settings.reply_queue_prefix}.{owner}"


async def declare_reply_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """A replica's private reply queue: exclusive, so it disappears with the replica."""
    return await channel.declare_queue(name, durable=False, exclusive=True, auto_delete=True)


def to_aio_pika(message: AmqpMessage) -> aio_pika.Message:
    return aio_pika.Message(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        headers=message.headers,
        content_type=message.content_type,
        timestamp=datetime.fromtimestamp(message.timestamp, tz=timezone.utc),
        reply_to=message.reply_to,
        expiration=message.expiration,
        delivery_mode=DeliveryMode.PERSISTENT,
    )
