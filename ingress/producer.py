"""The ingress replica's side of the broker: publish tasks, receive their results.

Each replica owns one connection, one confirm-mode channel and one exclusive
reply queue named after the replica; every task it publishes carries that name
in ``reply_to`` (RabbitMQ's reply-to / correlation-id pattern), so a result
always comes back to the replica holding the waiting HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from rabbit_serve import broker
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import AmqpMessage, ClassifyResult, MalformedMessage, decode_reply
from rabbit_serve.settings import Settings

logger = logging.getLogger("rabbit_serve.ingress")

RECONNECT_DELAY_S = 1.0


class Producer:
    def __init__(
        self,
        settings: Settings,
        owner: str,
        on_result: Callable[[ClassifyResult], object],
    ) -> None:
        self._settings = settings
        self._on_result = on_result
        self.reply_queue = broker.reply_queue_name(settings, owner)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self.malformed_results = 0

    @property
    def ready(self) -> bool:
        """True while the broker connection and channel are open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def start(self) -> None:
        """Try to connect now; if the broker is down, keep trying in the background
        so the replica still starts and answers 503 meanwhile."""
        try:
            await self._connect_once()
        except Exception as exc:
            logger.warning("broker not reachable yet (%s); retrying in the background", exc)
            self._connect_task = asyncio.create_task(self._connect_forever())

    async def _connect_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_DELAY_S)
            try:
                await self._connect_once()
                logger.info("connected to the broker")
                return
            except Exception as exc:
                logger.debug("broker still unreachable: %s", exc)

    async def _connect_once(self) -> None:
        connection = await broker.connect(self._settings)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await broker.declare_request_queue(channel, self._settings)
            queue = await broker.declare_reply_queue(channel, self.reply_queue)
            # Results are tiny and losing one only costs that request a 504, so the
            # reply queue is consumed without acks.
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            results = decode_reply(message.body)
        except MalformedMessage as exc:
            self.malformed_results += 1
            logger.warning("dropping malformed reply: %s", exc)
            return
        for result in results:
            self._on_result(result)

    async def publish(self, message: AmqpMessage) -> None:
        """Publish and wait for the broker's confirm; raises :class:`ServiceUnavailable`."""
        channel = self._channel
        if channel is None or not self.ready:
            raise ServiceUnavailable("message broker is not reachable")
        try:
            await asyncio.wait_for(
                channel.default_exchange.publish(
                    broker.to_aio_pika(message),
                    routing_key=self._settings.request_queue,
                    mandatory=True,
                ),
                timeout=self._settings.publish_timeout,
            )
        except asyncio.TimeoutError:
            raise ServiceUnavailable("message broker did not confirm the publish in time") from None
        except aio_pika.exceptions.DeliveryError as exc:
            # A nack: with x-overflow=reject-publish this means the queue is at MAX_QUEUE_LENGTH.
            raise ServiceUnavailable(
                "the request queue is full; retry after the Retry-After delay"
            ) from exc
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise ServiceUnavailable(f"message broker refused the message: {exc}") from exc

    async def close(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        if self._connection is not None:
            await self._connection.close()
