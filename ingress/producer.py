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

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from rabbit_serve import broker
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import ClassifyResult, MalformedMessage, decode_reply
from rabbit_serve.settings import Settings
from rabbit_serve.transport import (
    Outbound,
    PublishBlocked,
    Publisher,
    PublishFailed,
    PublishRefused,
    PublishTimedOut,
    PublishUnroutable,
)

logger = logging.getLogger("rabbit_serve.ingress")


def client_message(exc: PublishFailed) -> str:
    """What a client is told (with a 503) when the broker did not take its work."""
    if isinstance(exc, PublishBlocked):
        return (
            "the message broker is blocking publishes (a memory or disk alarm); retry after "
            "the Retry-After delay"
        )
    if isinstance(exc, PublishUnroutable):
        return "the request queue does not exist (it is being re-declared); retry shortly"
    if isinstance(exc, PublishRefused):
        # A nack: with x-overflow=reject-publish this means the queue is at MAX_QUEUE_LENGTH.
        return "the request queue is full; retry after the Retry-After delay"
    if isinstance(exc, PublishTimedOut):
        return "message broker did not confirm the publish in time"
    # The connection dropped mid-publish: the broker may or may not have it.
    return f"the publish to the message broker did not complete: {exc}"


# At most one re-declaration of a deleted request queue per this many seconds.
REDECLARE_EVERY_S = 1.0

UNCONFIRMED = (
    "the message broker has stopped confirming publishes (a partition or an overload); "
    "retry after the Retry-After delay"
)


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
        self._publisher: broker.AioPikaPublisher | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._channel: AbstractRobustChannel | None = None
        self._redeclaring: asyncio.Task[None] | None = None
        self._last_redeclare = float("-inf")
        self._owner = owner
        # A confirm timed out and none came since: the broker (or the path to it) is
        # silent. Until one publish is confirmed again, only one at a time is tried;
        # the rest get their 503 at once instead of each waiting PUBLISH_TIMEOUT.
        self._unconfirmed_since: float | None = None
        self._probing = False
        self.malformed_results = 0

    @property
    def ready(self) -> bool:
        """True while the broker connection and the publishing channel are open."""
        return (
            broker.is_connected(self._connection)
            and self._publisher is not None
            and self._publisher.ready
        )

    @property
    def blocked(self) -> bool:
        """True while a broker alarm blocks this replica's publishes."""
        return broker.is_blocked(self._connection)

    def problem(self) -> str | None:
        """Why this replica cannot take work now, for ``/healthz``; ``None`` if it can."""
        if not self.ready:
            return "message broker is not connected"
        if self.blocked:
            return "message broker is blocking publishes (memory or disk alarm)"
        if self._unconfirmed_since is not None:
            return "message broker has stopped confirming publishes"
        return None

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
            await asyncio.sleep(broker.RECONNECT_DELAY_S)
            try:
                await self._connect_once()
                logger.info("connected to the broker")
                return
            except Exception as exc:
                logger.debug("broker still unreachable: %s", exc)

    async def _connect_once(self) -> None:
        connection = await broker.connect(
            self._settings,
            url=self._settings.ingress_broker_url,
            name=f"rabbit-serve ingress {self._owner}",
        )
        try:
            # Not on the publishing channel: see broker.ensure_request_queue.
            await broker.ensure_request_queue(connection, self._settings)
            channel = await broker.open_channel(connection, confirms=True)
            queue = await broker.declare_reply_queue(channel, self.reply_queue)
            # Results are tiny and losing one only costs that request a 504, so the
            # reply queue is consumed without acks.
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._channel = channel
        # wait_unblocked=0: while an alarm lasts, a client gets its 503 at once.
        self._publisher = broker.AioPikaPublisher(
            channel,
            timeout=self._settings.publish_timeout,
            mandatory=True,
            connection=connection,
        )

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            results = decode_reply(message.body)
        except MalformedMessage as exc:
            self.malformed_results += 1
            logger.warning("dropping malformed reply: %s", exc)
            return
        for result in results:
            self._on_result(result)

    async def publish(self, message: Outbound) -> None:
        """Publish to the request queue and wait for the broker's confirm; raises
        :class:`ServiceUnavailable` with what the client should be told."""
        publisher: Publisher | None = self._publisher
        if publisher is None or not self.ready:
            raise ServiceUnavailable("message broker is not reachable")
        probe = self._unconfirmed_since is not None
        if probe:
            if self._probing:
                raise ServiceUnavailable(UNCONFIRMED)
            self._probing = True
        try:
            await publisher.publish(message, self._settings.request_queue)
        except PublishFailed as exc:
            if isinstance(exc, PublishUnroutable):
                self._redeclare()
            if isinstance(exc, PublishRefused):
                self._unconfirmed_since = None  # it answered, if only to say no
            elif isinstance(exc, PublishTimedOut) and self._unconfirmed_since is None:
                self._unconfirmed_since = asyncio.get_running_loop().time()
                logger.warning("no publisher confirm within %ss", self._settings.publish_timeout)
            raise ServiceUnavailable(client_message(exc)) from exc
        else:
            if self._unconfirmed_since is not None:
                logger.info("publisher confirms are back")
                self._unconfirmed_since = None
        finally:
            if probe:
                self._probing = False

    def _redeclare(self) -> None:
        """The request queue is gone (deleted by hand): declare it again, in the
        background and at most once a second, so service resumes without an operator."""
        loop = asyncio.get_running_loop()
        if self._connection is None or (self._redeclaring and not self._redeclaring.done()):
            return
        if loop.time() - self._last_redeclare < REDECLARE_EVERY_S:
            return
        self._last_redeclare = loop.time()
        self._redeclaring = asyncio.create_task(self._declare(self._connection))

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        try:
            await broker.ensure_request_queue(connection, self._settings)
            logger.warning(
                "request queue %s was missing: declared it again", self._settings.request_queue
            )
        except Exception as exc:
            logger.warning("could not declare the request queue again: %s", exc)

    async def close(self) -> None:
        if self._redeclaring is not None:
            self._redeclaring.cancel()
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        if self._connection is not None:
            await self._connection.close()
