"""Bundle parts: each image settles on its own; the real delivery once, by the rule."""

from __future__ import annotations

import itertools

import pytest

from consumer.bundle import Part, parts, settlement
from rabbit_serve.messages import MalformedMessage, decode_task, encode_bundle
from tests.factories import make_task
from tests.fakes import FakeInbound


def bundle(count: int, **kwargs) -> FakeInbound:
    tasks = [
        make_task(id=f"r-{i}", request_id="r", index=i, image=b"x" * (i + 1)) for i in range(count)
    ]
    message = encode_bundle(tasks)
    return FakeInbound(
        message.body, message.headers, message.message_id, message.reply_to, **kwargs
    )


def expected(outcomes: tuple[str, ...]) -> str:
    if "requeue" in outcomes:
        return "requeue"
    return "reject" if all(o == "reject" for o in outcomes) else "ack"


@pytest.mark.parametrize(
    "outcomes", list(itertools.product(["ack", "requeue", "reject"], repeat=3))
)
async def test_the_real_delivery_is_settled_once_when_every_part_is(outcomes):
    inbound = bundle(3)
    items = parts(inbound)
    for (part, _), how in zip(items, outcomes, strict=True):
        assert inbound.settled_as is None
        await getattr(part, how)()
        assert part.settled
    # FakeInbound fails the test on a second settlement.
    assert inbound.settled_as == expected(outcomes) == settlement(list(outcomes))


async def test_parts_settled_in_any_order_settle_the_delivery_on_the_last():
    inbound = bundle(3)
    items = parts(inbound)
    for index in (2, 0):
        await items[index][0].ack()
    assert inbound.settled_as is None
    await items[1][0].reject()
    assert inbound.settled_as == "ack"


async def test_a_part_settled_twice_is_an_error():
    inbound = bundle(2)
    (part, _), _ = parts(inbound)
    await part.ack()
    with pytest.raises(RuntimeError):
        await part.requeue()


async def test_a_part_reads_like_the_one_image_message_it_stands_for():
    inbound = bundle(2, redelivered=True)
    items = parts(inbound)
    for part, task in items:
        assert isinstance(part, Part)
        assert part.message_id == task.id and part.body == task.image
        assert part.reply_to == inbound.reply_to and part.redelivered
        assert decode_task(part.body, dict(part.headers), part.message_id, part.reply_to) == task


async def test_a_one_image_message_is_its_own_part():
    task = make_task(sent_at=1.5, deadline=9.5)
    inbound = FakeInbound.of(task)
    assert parts(inbound) == [(inbound, task)]


async def test_a_malformed_bundle_raises_and_settles_nothing():
    good = bundle(2)
    inbound = FakeInbound(good.body + b"!", good.headers, good.message_id, good.reply_to)
    with pytest.raises(MalformedMessage):
        parts(inbound)
    assert inbound.settled_as is None
