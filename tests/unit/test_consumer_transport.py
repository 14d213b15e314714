"""The aio-pika adapters behind the broker seam, against stub channels and messages."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aiormq.exceptions import ChannelInvalidStateError

from rabbit_serve import broker
from rabbit_serve.transport import (
    Outbound,
    PublishFailed,
    PublishRefused,
    PublishTimedOut,
    SettleFailed,
)


class StubExchange:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sent: list[tuple[aio_pika.Message, str, bool]] = []

    async def publish(self, message, routing_key, *, mandatory=True):
        if self.behaviour == "nack":
            raise aio_pika.exceptions.DeliveryError(None, None)
        if self.behaviour == "closed":
            raise ChannelInvalidStateError("closed")
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "confirm-cancelled":
            # What aiormq does to a pending confirm when the connection closes.
            confirm = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(confirm.cancel)
            await confirm
        self.sent.append((message, routing_key, mandatory))


class StubChannel:
    def __init__(self, behaviour: str = "ok") -> None:
        self.default_exchange = StubExchange(behaviour)
        self.is_closed = False


async def test_a_confirmed_publish_maps_every_field():
    channel = StubChannel()
    publisher = broker.AioPikaPublisher(channel, timeout=1.0)  # type: ignore[arg-type]
    out = Outbound(
        b"body",
        content_type="application/json",
        message_id="m1",
        correlation_id="c1",
        headers={"h": 1},
        reply_to="r",
        expiration=2.5,
        timestamp=1_700_000_000.0,
    )
    await publisher.publish(out, "q")
    ((message, key, mandatory),) = channel.default_exchange.sent
    assert key == "q" and mandatory
    assert message.body == b"body" and message.message_id == "m1"
    assert message.correlation_id == "c1" and message.reply_to == "r"
    assert message.headers == {"h": 1} and message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None and message.timestamp.timestamp() == 1_700_000_000
    transient = broker.to_aio_pika(Outbound(b"x", content_type="t", persistent=False))
    assert transient.delivery_mode != aio_pika.DeliveryMode.PERSISTENT


@pytest.mark.parametrize(
    "behaviour,error",
    [
        ("nack", PublishRefused),
        ("closed", PublishFailed),
        ("hang", PublishTimedOut),
        ("confirm-cancelled", PublishFailed),
    ],
)
async def test_broker_failures_become_publish_failed(behaviour, error):
    publisher = broker.AioPikaPublisher(StubChannel(behaviour), timeout=0.01)  # type: ignore[arg-type]
    with pytest.raises(error) as caught:
        await publisher.publish(Outbound(b"x", content_type="t"), "q")
    assert isinstance(caught.value, PublishFailed)


class StubIncoming:
    def __init__(self, fail: bool = False) -> None:
        self.body = b"b"
        self.headers = None
        self.message_id = "m1"
        self.reply_to = "r"
        self.redelivered = True
        self.processed = False
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail

    async def _settle(self, how: str, requeue: bool) -> None:
        if self.fail:
            raise ChannelInvalidStateError("closed")
        self.calls.append((how, requeue))
        self.processed = True

    async def ack(self) -> None:
        await self._settle("ack", False)

    async def nack(self, requeue: bool = True) -> None:
        await self._settle("nack", requeue)

    async def reject(self, requeue: bool = False) -> None:
        await self._settle("reject", requeue)


@pytest.mark.parametrize(
    "method,call",
    [("ack", ("ack", False)), ("requeue", ("nack", True)), ("reject", ("reject", False))],
)
async def test_inbound_settles_as_named(method, call):
    message = StubIncoming()
    inbound = broker.AioPikaInbound(message)  # type: ignore[arg-type]
    assert inbound.headers == {} and inbound.redelivered and not inbound.settled
    await getattr(inbound, method)()
    assert message.calls == [call] and inbound.settled


async def test_a_settlement_on_a_closed_channel_raises_settle_failed():
    inbound = broker.AioPikaInbound(StubIncoming(fail=True))  # type: ignore[arg-type]
    with pytest.raises(SettleFailed):
        await inbound.ack()


async def test_cancelling_the_publish_itself_still_cancels_it():
    publisher = broker.AioPikaPublisher(StubChannel("hang"), timeout=5.0)  # type: ignore[arg-type]
    task = asyncio.create_task(publisher.publish(Outbound(b"x", content_type="t"), "q"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
