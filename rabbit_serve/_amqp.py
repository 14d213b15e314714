"""aio-pika behind the broker seam: :class:`~rabbit_serve.transport.Inbound` and
:class:`~rabbit_serve.transport.Publisher` for a real RabbitMQ connection.

Besides :mod:`rabbit_serve.broker` (connection and topology), this is the only module
that knows aio-pika's types.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, DeliveryMode

from rabbit_serve.transport import (
    Inbound,
    Outbound,
    PublishFailed,
    PublishRefused,
    PublishTimedOut,
    SettleFailed,
)

logger = logging.getLogger(__name__)

# What a publish or a settlement on a channel that dropped raises in aio-pika/aiormq
# (ChannelInvalidStateError is a RuntimeError; a closed connection a ConnectionError).
_BROKER_ERRORS = (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError)


def to_aio_pika(message: Outbound) -> aio_pika.Message:
    return aio_pika.Message(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        # A copy: aio-pika's message is mutable, the outbound one is not.
        headers=dict(message.headers),
        content_type=message.content_type,
        timestamp=(
            None
            if message.timestamp is None
            else datetime.fromtimestamp(message.timestamp, tz=timezone.utc)
        ),
        reply_to=message.reply_to,
        expiration=message.expiration,
        delivery_mode=DeliveryMode.PERSISTENT if message.persistent else None,
    )


class AioPikaInbound:
    """One delivery from a manual-ack consumer."""

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        self.body: bytes = message.body
        self.headers: Mapping[str, Any] = message.headers or {}
        self.message_id: str | None = message.message_id
        self.reply_to: str | None = message.reply_to
        self.redelivered: bool = bool(message.redelivered)

    @property
    def settled(self) -> bool:
        return self._message.processed

    async def ack(self) -> None:
        await self._settle(self._message.ack())

    async def requeue(self) -> None:
        await self._settle(self._message.nack(requeue=True))

    async def reject(self) -> None:
        await self._settle(self._message.reject(requeue=False))

    async def _settle(self, settling: Awaitable[None]) -> None:
        try:
            await settling
        except _BROKER_ERRORS as exc:
            # The channel that delivered it is gone: the broker redelivers it anyway.
            raise SettleFailed(f"message {self.message_id}: {exc!r}") from exc


async def consume(queue: AbstractQueue, handler: Callable[[Inbound], Awaitable[None]]) -> None:
    """Hand every delivery from ``queue`` to ``handler`` as an :class:`Inbound`
    (manual acks: the handler settles it)."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        await handler(AioPikaInbound(message))

    await queue.consume(on_message)


class AioPikaPublisher:
    """Publishes to the default exchange of a confirm-mode channel.

    ``mandatory``: the broker returns a message no queue takes instead of dropping it
    (the return is logged by aio-pika, not raised: a reply to an ingress replica that
    is gone is not an error). ``timeout``: seconds to wait for the confirm.
    """

    def __init__(
        self, channel: AbstractChannel, *, timeout: float | None = None, mandatory: bool = True
    ) -> None:
        self._channel = channel
        self._timeout = timeout
        self._mandatory = mandatory

    @property
    def ready(self) -> bool:
        return not self._channel.is_closed

    async def publish(self, message: Outbound, routing_key: str) -> None:
        try:
            await asyncio.wait_for(
                self._channel.default_exchange.publish(
                    to_aio_pika(message), routing_key=routing_key, mandatory=self._mandatory
                ),
                timeout=self._timeout,
            )
        except asyncio.TimeoutError:
            raise PublishTimedOut(
                f"the broker did not confirm within {self._timeout}s (to {routing_key!r})"
            ) from None
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishRefused(f"the broker refused the message to {routing_key!r}") from exc
        except _BROKER_ERRORS as exc:
            raise PublishFailed(f"could not publish to {routing_key!r}: {exc!r}") from exc
