"""The guard around consumer callbacks: nothing unexpected holds a prefetch slot."""

from __future__ import annotations

import logging

from consumer.guard import guarded
from consumer.outcomes import Rework, Tally
from rabbit_serve.transport import Inbound, SettleFailed
from tests.fakes import FakeInbound


async def test_an_unexpected_exception_is_logged_and_the_message_requeued(caplog):
    async def buggy(inbound: Inbound) -> None:
        raise KeyError("bug")

    tally = Tally()
    inbound = FakeInbound(b"x", {}, "m1")
    with caplog.at_level(logging.ERROR, "rabbit_serve.consumer"):
        await guarded(buggy, tally, "admission")(inbound)
    assert inbound.settled_as == "requeue"
    assert "admission failed on message m1" in caplog.text and "KeyError" in caplog.text
    assert tally.rework == {Rework.REQUEUED: 1}


async def test_a_message_already_settled_is_not_settled_again(caplog):
    async def acks_then_fails(inbound: Inbound) -> None:
        await inbound.ack()
        raise RuntimeError("after the ack")

    inbound = FakeInbound(b"x", {}, "m1")
    await guarded(acks_then_fails, Tally(), "outbox")(inbound)
    assert inbound.settled_as == "ack"  # FakeInbound fails the test on a second settle
    assert "after the ack" in caplog.text


async def test_a_settlement_that_cannot_reach_the_broker_is_logged_not_raised(caplog):
    async def acks(inbound: Inbound) -> None:
        await inbound.ack()

    inbound = FakeInbound(b"x", {}, "m1", settle_fails=True)
    await guarded(acks, Tally(), "admission")(inbound)
    assert "will be redelivered" in caplog.text


async def test_a_clean_handler_passes_through():
    async def acks(inbound: Inbound) -> None:
        await inbound.ack()

    inbound = FakeInbound(b"x", {}, "m1")
    await guarded(acks, Tally(), "admission")(inbound)
    assert inbound.settled_as == "ack"
    assert not isinstance(SettleFailed("x"), KeyError)
