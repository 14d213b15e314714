"""The consumer's health: unhealthy with a reason, and only for what a restart can fix."""

from __future__ import annotations

import asyncio

from consumer.liveness import Liveness


async def test_a_dead_consume_loop_is_reported_with_its_exception():
    async def boom() -> None:
        raise RuntimeError("queue mismatch")

    runner = asyncio.create_task(boom())
    await asyncio.sleep(0)
    problem = Liveness(0.0).problem(runner, connected=True, now=1.0)
    assert problem is not None and "consumer loop died" in problem and "queue mismatch" in problem


async def test_a_short_outage_is_ridden_out_and_a_long_one_is_reported():
    live = Liveness(0.0, grace=30.0)
    assert live.problem(None, connected=True, now=1.0) is None
    assert live.problem(None, connected=False, now=10.0) is None  # outage starts
    assert live.problem(None, connected=False, now=39.0) is None
    problem = live.problem(None, connected=False, now=41.0, broker_error="ConnectionRefused")
    assert problem == "no broker connection for 31s (ConnectionRefused)"
    assert live.problem(None, connected=True, now=42.0) is None  # back: healthy again


async def test_never_connected_counts_from_the_start():
    live = Liveness(100.0, grace=5.0)
    assert live.problem(None, connected=False, now=104.0) is None
    assert "no broker connection for 6s" in (live.problem(None, connected=False, now=106.0) or "")


async def test_a_finished_setup_loop_is_healthy():
    async def set_up() -> None:
        return None

    runner = asyncio.create_task(set_up())
    await runner
    assert Liveness(0.0).problem(runner, connected=True, now=1.0) is None


def test_work_held_without_progress_past_the_stall_timeout_is_reported():
    from consumer.liveness import Progress

    live = Liveness(0.0, stall=60.0)
    busy = Progress(held=16, last_progress=0.0)
    assert live.problem(None, connected=True, now=100.0, progress=busy) is None  # clock starts
    assert live.problem(None, connected=True, now=159.0, progress=busy) is None
    problem = live.problem(None, connected=True, now=161.0, progress=busy)
    assert problem is not None and "no batch finished for 61s" in problem and "16" in problem
    # A batch finished: healthy again.
    assert live.problem(None, connected=True, now=162.0, progress=Progress(16, 161.5)) is None


def test_idle_or_blocked_consumers_never_stall():
    from consumer.liveness import Progress

    live = Liveness(0.0, stall=10.0)
    assert live.problem(None, connected=True, now=5.0, progress=Progress(held=0)) is None
    assert live.problem(None, connected=True, now=500.0, progress=Progress(held=0)) is None
    # Work arrives after a long idle spell: the stall clock starts now, not at the last batch.
    assert live.problem(None, connected=True, now=501.0, progress=Progress(held=3)) is None
    assert live.problem(None, connected=True, now=505.0, progress=Progress(held=3)) is None
    blocked = Progress(held=3, last_progress=0.0, blocked=True)
    assert live.problem(None, connected=True, now=600.0, progress=blocked) is None
    assert live.problem(None, connected=True, now=605.0, progress=Progress(held=3)) is None
    problem = live.problem(None, connected=True, now=616.0, progress=Progress(held=3))
    assert problem is not None and "no batch finished" in problem


def test_a_consumer_cancelled_and_not_restored_is_reported_after_a_grace():
    from consumer.liveness import CONSUMER_LOST_GRACE_S, Progress

    live = Liveness(0.0, stall=60.0)
    gone = Progress(held=0, consuming=False)
    assert live.problem(None, connected=True, now=10.0, progress=gone) is None
    assert (
        live.problem(None, connected=True, now=10.0 + CONSUMER_LOST_GRACE_S, progress=gone) is None
    )
    problem = live.problem(None, connected=True, now=11.0 + CONSUMER_LOST_GRACE_S, progress=gone)
    assert problem is not None and "not consuming the request queue" in problem
    # Restored (the queue is back and aio-pika consumed again): healthy, clock reset.
    assert live.problem(None, connected=True, now=30.0, progress=Progress()) is None
    assert live.problem(None, connected=True, now=31.0, progress=gone) is None
