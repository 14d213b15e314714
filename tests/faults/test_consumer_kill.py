"""A consumer actor SIGKILLed mid-batch: the broker redelivers its unacked messages to the
other consumer (or the replica Serve starts in its place), and every request is answered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import drain, replicas, sigkill, unacked_held_by, wait_replicas
from tests.faults.load import (
    DEFAULT_MARGIN_S,
    LOST_AFTER_EXTRA_S,
    Load,
    in_flight_at,
    payloads,
    stats,
    statuses,
)
from tests.faults.reconcile import reconcile

TIMEOUT = 30.0  # generous: redelivery must finish well inside it
CLIENTS = 12
DURATION_S = 20.0
KILL_AT_S = 7.0


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "consumerkill",
        NUM_CONSUMERS=2,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        # Batches wait a little to fill, so that some are always in flight.
        BATCH_TIMEOUT=0.05,
        MAX_BATCHES_IN_FLIGHT=2,
    )


async def test_sigkill_of_a_consumer_mid_batch_loses_nothing(app: App) -> None:
    async with httpx.AsyncClient() as client:
        before = await stats(client, app.url)
    load = Load(
        app.url,
        payloads(),
        clients=CLIENTS,
        duration=DURATION_S,
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        label="consumer SIGKILL",
    )
    running = asyncio.create_task(load.run())
    await asyncio.sleep(KILL_AT_S)

    consumers = await asyncio.to_thread(replicas, app.name, "BatchingConsumer")
    assert len(consumers) == 2, consumers
    # Kill the consumer that holds the most unacked messages (a batch at the classifier,
    # one filling); ask again if, at that instant, neither holds any.
    for _ in range(20):
        held_by = await asyncio.to_thread(unacked_held_by, [c.pid for c in consumers])
        victim = max(consumers, key=lambda c: held_by[c.pid])
        held = held_by[victim.pid]
        if held:
            break
    killed_at = load.now()
    sigkill(victim.pid)
    restart_s = await asyncio.to_thread(
        wait_replicas, app.name, "BatchingConsumer", 2, {victim.pid}
    )
    records = await running

    await asyncio.to_thread(drain, app)
    await asyncio.sleep(1.0)  # a duplicate result would arrive by now
    async with httpx.AsyncClient() as client:
        after = await stats(client, app.url)
    hit = in_flight_at(records, killed_at)
    summary = reconcile(
        records,
        timeout=TIMEOUT,
        label="consumer SIGKILL",
        allowed=(),  # redelivery is well inside TIMEOUT: every request gets its 200
        late_results=after["late_results"] - before["late_results"],
        # Results handed back but not yet acked when it died are redelivered and done
        # again (the ingress drops the second result): at most what it could hold.
        reprocess_bound=app.settings.prefetch_count,
    )
    summary.report(
        victim_unacked=held,
        in_flight_at_kill=len(hit),
        their_outcomes=statuses(hit),
        their_max_latency_s=round(max((r.elapsed for r in hit), default=0.0), 2),
        serve_restarted_consumer_s=round(restart_s, 1),
        pending_after=after["pending"],
    )
    summary.check()
    # Redelivery is well inside TIMEOUT: every request, including those whose messages
    # the dead consumer held, gets its classification.
    assert held > 0, "the victim held no unacked message: nothing was mid-batch"
    assert after["pending"] == 0
