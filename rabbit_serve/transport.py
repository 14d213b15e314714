"""The broker seam: what the consumer and the ingress need from RabbitMQ, and no more.

Two small interfaces: an :class:`Inbound` delivery that is settled exactly once (ack,
requeue or reject), and a :class:`Publisher` whose ``publish`` returns only once the
broker confirmed the message. The rules built on them (ack only after a confirmed
hand-back, reject what can never succeed, requeue what may) are then testable against
an in-memory stand-in; the aio-pika adapters live in :mod:`rabbit_serve._amqp`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Outbound:
    """A message to publish, in broker-neutral terms."""

    body: bytes
    content_type: str
    message_id: str | None = None
    correlation_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    # Per-message TTL in seconds: the broker drops work whose client already gave up.
    expiration: float | None = None
    # Written to disk by a durable queue; replies to an exclusive queue need not be.
    persistent: bool = True
    # Epoch seconds.
    timestamp: float | None = None


class PublishFailed(Exception):
    """The broker did not confirm a publish: nothing may be settled on the strength of it."""


class PublishRefused(PublishFailed):
    """The broker answered, and said no: a nack (e.g. a full queue with reject-publish) or
    an unroutable message returned."""


class PublishUnroutable(PublishRefused):
    """The broker returned the message: no queue is bound to its routing key (the request
    queue was deleted, or the ingress replica that owned a reply queue is gone)."""


class PublishBlocked(PublishFailed):
    """The broker is blocking this connection's publishes (a memory or disk alarm)."""


class PublishTimedOut(PublishFailed):
    """No confirm within the publisher's timeout: the message may or may not be queued."""


class SettleFailed(Exception):
    """An ack, requeue or reject did not reach the broker (the channel that delivered the
    message is gone): the broker redelivers the message, so the caller only logs it."""


class Inbound(Protocol):
    """One delivery, to be settled exactly once."""

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    reply_to: str | None
    redelivered: bool

    @property
    def settled(self) -> bool:
        """True once ack, requeue or reject was called."""
        ...

    @property
    def stale(self) -> bool:
        """True once the channel that delivered it has closed: the broker has taken it
        back and delivers it again, so this copy can be neither answered nor settled."""
        ...

    async def ack(self) -> None:
        """Done with: the broker forgets it."""
        ...

    async def requeue(self) -> None:
        """A failure that may pass: back to the queue (counts toward the delivery limit)."""
        ...

    async def reject(self) -> None:
        """It can never succeed: dead-lettered, never redelivered."""
        ...


class Publisher(Protocol):
    """Stand-ins may leave out ``blocked``; callers read it with ``getattr(p, "blocked",
    False)``."""

    async def publish(self, message: Outbound, routing_key: str) -> None:
        """Publish to the default exchange; returns only after the broker's confirm.

        Raises :class:`PublishFailed` (or a subclass) otherwise.
        """
        ...
