import asyncio

import pytest

from ingress.pending import PendingResults
from rabbit_serve.messages import ClassifyResult


def result(task_id: str) -> ClassifyResult:
    return ClassifyResult(id=task_id, request_id="r", index=0, predictions=[])


async def test_result_reaches_its_own_waiter():
    pending = PendingResults()
    a, b = pending.expect("a"), pending.expect("b")
    assert pending.resolve(result("b"))
    assert b.done() and not a.done()
    assert (await b).id == "b"
    assert len(pending) == 1 and pending.delivered == 1


async def test_late_result_is_dropped_and_counted_not_kept():
    pending = PendingResults()
    future = pending.expect("slow")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), timeout=0.01)
    pending.forget("slow")
    assert future.cancelled()
    assert not pending.resolve(result("slow"))
    assert pending.late == 1 and len(pending) == 0


async def test_unknown_and_duplicate_results_are_late():
    pending = PendingResults()
    pending.expect("x")
    assert pending.resolve(result("x"))
    assert not pending.resolve(result("x"))
    assert not pending.resolve(result("never-sent"))
    assert pending.late == 2


async def test_registering_twice_is_an_error():
    pending = PendingResults()
    pending.expect("x")
    with pytest.raises(KeyError):
        pending.expect("x")
