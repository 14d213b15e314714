"""A classifier replica SIGKILLed mid-batch: the consumer's classifier call fails, is
retried (3 attempts, 0.5 s backoff) on a live replica or the one Serve restarts, and
nacks the batch back to the queue if all attempts fail. Every request is answered.

Two variants: two classifier replicas (the other one takes over at once), and a single
one (nothing classifies until Serve has restarted it: this measures how long that takes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import drain, replicas, sigkill, wait_replicas
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

TIMEOUT = 30.0
CLIENTS = 12
KILL_AT_S = 6.0
AFTER_KILL_S = 14.0  # load continues this long after the kill (and after recovery)


@pytest.fixture(params=[2, 1], ids=["2-replicas", "1-replica"])
def replicas_wanted(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture
def app(replicas_wanted: int, fault_app: Callable[..., App]) -> App:
    return fault_app(
        f"classifierkill{replicas_wanted}",
        classifiers=replicas_wanted,
        NUM_CONSUMERS=1,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        MAX_BATCHES_IN_FLIGHT=2,
    )


async def test_sigkill_of_a_classifier_mid_batch_loses_nothing(
    app: App, replicas_wanted: int
) -> None:
    # From the parameter, not from what runs: a missing replica must fail the test.
    count = replicas_wanted
    async with httpx.AsyncClient() as client:
        before = await stats(client, app.url)
    load = Load(
        app.url,
        payloads(),
        clients=CLIENTS,
        duration=600,  # stopped below
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        label=f"classifier SIGKILL, {count} replica(s)",
    )
    running = asyncio.create_task(load.run())
    await asyncio.sleep(KILL_AT_S)

    classifiers = await asyncio.to_thread(replicas, app.name, "Classifier")
    assert len(classifiers) == count, classifiers
    victim = classifiers[0]
    killed_at = load.now()
    sigkill(victim.pid)
    restart_s = await asyncio.to_thread(wait_replicas, app.name, "Classifier", count, {victim.pid})
    await asyncio.sleep(max(0.0, AFTER_KILL_S - (load.now() - killed_at)))
    load.stop()
    records = await running

    await asyncio.to_thread(drain, app)
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient() as client:
        after = await stats(client, app.url)
    hit = in_flight_at(records, killed_at)
    # Recovery: from the kill until the first 200 for a request sent after the kill.
    fresh = [r.done for r in records if r.sent > killed_at and r.status == 200]
    recovery_s = min(fresh) - killed_at if fresh else float("inf")
    summary = reconcile(
        records,
        timeout=TIMEOUT,
        label=f"classifier SIGKILL, {count} replica(s)",
        allowed=(),  # the retry or the redelivery answers every request
        late_results=after["late_results"] - before["late_results"],
    )
    summary.report(
        in_flight_at_kill=len(hit),
        their_outcomes=statuses(hit),
        their_max_latency_s=round(max((r.elapsed for r in hit), default=0.0), 2),
        first_200_after_kill_s=round(recovery_s, 2),
        serve_restarted_classifier_s=round(restart_s, 1),
    )
    summary.check()
    assert hit, "no request was in flight at the kill"
    assert after["pending"] == 0
    # With a second replica, nothing waits for the restart.
    if count > 1:
        assert recovery_s < 5.0, summary.line()
