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
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
)

from rabbit_serve.transport import (
    Inbound,
    Outbound,
    PublishBlocked,
    PublishFailed,
    PublishRefused,
    PublishTimedOut,
    PublishUnroutable,
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

    @property
    def stale(self) -> bool:
        try:
            # aio-pika raises on reading the channel of a delivery whose channel closed.
            self._message.channel  # noqa: B018
        except aio_pika.exceptions.ChannelInvalidStateError:
            return True
        return False

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


async def consume_again(
    queue: AbstractQueue, handler: Callable[[Inbound], Awaitable[None]]
) -> None:
    """Consume ``queue`` afresh after the broker cancelled its consumers (the queue was
    deleted): declare it again with its own arguments, and consume with a new tag.

    aio-pika would restore the cancelled tags by itself, but only as its connection's
    recovery gets round to it (seen to take more than 10 s, or never, while the queue
    was deleted again and again). The old tags are cancelled first, which also takes
    them out of aio-pika's restore list, so the queue never gets two consumers here.
    """
    for tag in list(getattr(queue, "_consumers", None) or ()):
        try:
            await queue.cancel(tag, nowait=True)
        except _BROKER_ERRORS as exc:
            logger.debug("cancelling consumer %s: %r", tag, exc)
    await queue.declare()
    await consume(queue, handler)


_UNBLOCKED_ATTR = "_Connection__connection_unblocked"


def unblocked_event(connection: AbstractConnection | None) -> asyncio.Event | None:
    """The event aiormq clears on ``connection.blocked`` (a memory or disk alarm) and sets
    on ``connection.unblocked``; ``None`` while there is no open transport.

    aiormq keeps it private and exposes no accessor; a unit test pins the attribute,
    so an aiormq upgrade that renames it fails there first.
    """
    transport = getattr(connection, "transport", None)
    event = getattr(getattr(transport, "connection", None), _UNBLOCKED_ATTR, None)
    return event if isinstance(event, asyncio.Event) else None


def is_blocked(connection: AbstractConnection | None) -> bool:
    """Whether the broker is blocking this connection's publishes right now."""
    event = unblocked_event(connection)
    return event is not None and not event.is_set()


def is_consuming(queue: AbstractQueue | None) -> bool:
    """Whether every consumer started on ``queue`` is live on its channel.

    The broker cancels a consumer whose queue was deleted; aio-pika's robust queue then
    tries to consume again once the queue is back, and this says whether that worked
    (a replica whose consumer is gone holds no work and would idle forever). Reads
    aio-pika's own bookkeeping, which it exposes no accessor for: the tags this queue
    consumed with, against those the channel's current underlying channel serves.
    """
    if queue is None:
        return True
    tags = getattr(queue, "_consumers", None)
    if not tags:
        return True
    underlay = getattr(queue.channel, "_channel", None)
    raw = getattr(underlay, "channel", None)
    live = getattr(raw, "consumers", None)
    return isinstance(live, dict) and all(tag in live for tag in tags)


class AioPikaPublisher:
    """Publishes to the default exchange of a confirm-mode channel opened with
    ``on_return_raises=True``.

    ``mandatory``: the broker returns a message no queue takes instead of dropping it,
    raised as :class:`PublishUnroutable`. ``timeout``: seconds to wait for the confirm.
    ``wait_unblocked``: seconds a publish waits for a broker alarm to clear before it
    raises :class:`PublishBlocked`: 0 at once (a client waits on an HTTP answer), ``None``
    as long as the alarm lasts (a result that must not be lost).
    """

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        timeout: float | None = None,
        mandatory: bool = True,
        connection: AbstractConnection | None = None,
        wait_unblocked: float | None = 0.0,
    ) -> None:
        self._channel = channel
        self._timeout = timeout
        self._mandatory = mandatory
        self._connection = connection
        self._wait_unblocked = wait_unblocked

    @property
    def ready(self) -> bool:
        return not self._channel.is_closed

    @property
    def blocked(self) -> bool:
        return is_blocked(self._connection)

    async def _until_unblocked(self, routing_key: str) -> None:
        event = unblocked_event(self._connection)
        if event is None or event.is_set():
            return
        try:
            await asyncio.wait_for(event.wait(), timeout=self._wait_unblocked)
        except asyncio.TimeoutError:
            raise PublishBlocked(
                f"the broker is blocking publishes (memory or disk alarm) to {routing_key!r}"
            ) from None

    async def publish(self, message: Outbound, routing_key: str) -> None:
        await self._until_unblocked(routing_key)
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
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this publish itself was cancelled (its caller gave up)
            # aiormq cancels a pending confirm when its connection closes (a heartbeat
            # timeout during a partition); passed on, it would end an HTTP request as a
            # bare 500 from Serve's proxy instead of a 503.
            raise PublishFailed(
                f"the connection closed before the broker confirmed (to {routing_key!r})"
            ) from None
        except aiormq.exceptions.PublishError as exc:
            # A Basic.Return: mandatory, and no queue took it.
            raise PublishUnroutable(f"no queue {routing_key!r} took the message") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishRefused(f"the broker refused the message to {routing_key!r}") from exc
        except _BROKER_ERRORS as exc:
            raise PublishFailed(f"could not publish to {routing_key!r}: {exc!r}") from exc
