"""The batch driver on a real event loop: size, timeout, slots, the timer, failures."""

from __future__ import annotations

import asyncio

import pytest

from consumer.batching import Batcher
from consumer.driver import BatchDriver


class Recorder:
    """A batch handler that records batches and holds each until released."""

    def __init__(self, *, hold: bool = False, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.alone: list[bool] = []
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.fail = fail

    async def __call__(self, batch: list[int], alone: bool) -> None:
        self.batches.append(batch)
        self.alone.append(alone)
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("handler bug")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_full_batch_leaves_at_once():
    handler = Recorder()
    driver = BatchDriver(
        Batcher(3, timeout=10.0, max_in_flight=2, dispatch_when_idle=False), handler
    )
    for i in range(3):
        driver.submit(i)
    await settle()
    assert handler.batches == [[0, 1, 2]]
    assert driver.timer_at is None and driver.waiting == 0


async def test_a_lone_item_leaves_when_its_timer_fires():
    handler = Recorder()
    driver = BatchDriver(Batcher(8, timeout=0.02, dispatch_when_idle=False), handler)
    driver.submit(1)
    await settle()
    assert handler.batches == [] and driver.timer_at is not None
    await asyncio.sleep(0.05)
    assert handler.batches == [[1]] and driver.timer_at is None


async def test_one_timer_for_the_oldest_item_not_rearmed_by_later_ones():
    handler = Recorder()
    driver = BatchDriver(Batcher(8, timeout=0.05, dispatch_when_idle=False), handler)
    driver.submit(1)
    first = driver.timer_at
    await asyncio.sleep(0.01)
    driver.submit(2)
    assert driver.timer_at == first
    await asyncio.sleep(0.08)
    assert handler.batches == [[1, 2]]


async def test_busy_slots_hold_items_back_and_a_freed_slot_releases_them():
    handler = Recorder(hold=True)
    driver = BatchDriver(Batcher(2, timeout=0.0, max_in_flight=1), handler)
    for i in range(5):
        driver.submit(i)
    await settle()
    # One slot: the first item went out alone (idle), the rest collect behind it.
    assert handler.batches == [[0]] and driver.in_flight == 1 and driver.waiting == 4
    assert driver.timer_at is None  # nothing to time while every slot is busy
    handler.gate.set()
    await asyncio.sleep(0.01)
    assert handler.batches == [[0], [1, 2], [3, 4]] and driver.in_flight == 0


async def test_alone_only_with_nothing_else_in_flight_or_waiting():
    handler = Recorder(hold=True)
    driver = BatchDriver(Batcher(1, timeout=0.0, max_in_flight=2), handler)
    driver.submit(1)
    await settle()
    driver.submit(2)
    driver.submit(3)
    await settle()
    assert handler.alone == [True, False]
    handler.gate.set()
    await asyncio.sleep(0.01)
    assert handler.batches == [[1], [2], [3]]


async def test_a_failing_handler_frees_its_slot_and_its_batch_goes_to_on_error(caplog):
    failed: list[tuple[list[int], Exception]] = []

    async def on_error(batch: list[int], exc: Exception) -> None:
        failed.append((batch, exc))

    handler = Recorder(fail=True)
    driver = BatchDriver(Batcher(2, timeout=0.0, max_in_flight=1), handler, on_error=on_error)
    driver.submit(1)
    await settle()
    assert [b for b, _ in failed] == [[1]] and isinstance(failed[0][1], RuntimeError)
    assert "failed unexpectedly" in caplog.text
    assert driver.in_flight == 0
    driver.submit(2)  # the slot is usable again
    await settle()
    assert handler.batches == [[1], [2]]


async def test_close_waits_for_batches_in_flight_and_returns_what_waited():
    handler = Recorder(hold=True)
    driver = BatchDriver(Batcher(1, timeout=5.0, max_in_flight=1), handler)
    for i in range(3):
        driver.submit(i)
    await settle()
    closing = asyncio.create_task(driver.close(timeout=1.0))
    await settle()
    assert not closing.done()
    handler.gate.set()
    left = await closing
    assert handler.batches == [[0]] and left == [1, 2]
    with pytest.raises(RuntimeError):
        driver.submit(9)
