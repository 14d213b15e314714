"""A consumer SIGKILLed while webhook POSTs are in progress (a receiver that takes 2 s to
answer, inside WEBHOOK_TIMEOUT), with two consumers.

The outbox entries the dead consumer held return to the outbox and the other consumer
(or the replacement) sends them. The shared ledger remembers which were delivered, so
a result is POSTed again only if its POST was cut off mid-way by the kill: at most one
extra POST per task that was mid-POST at that moment, and none for any other task.
Every task accepted with a 202 reaches the receiver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import replicas, sigkill, wait_replicas
from tests.faults.hooks import HookServer, hook_server
from tests.faults.load import Load
from tests.faults.scenario import Fault, under_load

# isort: split
import psutil

TIMEOUT = 15.0
SLOW_S = 2.0
WEBHOOK_TIMEOUT = 5.0  # the slow receiver answers well inside it
IN_TRANSIT_S = 0.2
# From the receiver's 200 to the ledger's record of the delivery, at most.
SETTLE_S = 0.5


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    with hook_server("", slow_s=SLOW_S) as server:
        yield server


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "webhookkill",
        NUM_CONSUMERS=2,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        WEBHOOK_TIMEOUT=WEBHOOK_TIMEOUT,
        WEBHOOK_ALLOW_PRIVATE=True,
    )


def posting(pid: int, port: int) -> int:
    """Open connections from ``pid`` to the receiver on ``port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED")


async def test_consumer_killed_mid_webhook_post(app: App, hooks: HookServer) -> None:
    port = int(hooks.base.rsplit(":", 1)[1])
    mid_post: set[str] = set()
    kill_times: list[float] = []

    async def fault(load: Load) -> Fault:
        consumers = await asyncio.to_thread(replicas, app.name, "BatchingConsumer")
        assert len(consumers) == 2, consumers
        victim = max(consumers, key=lambda c: posting(c.pid, port))
        start = load.now()
        killed = time.monotonic()
        sigkill(victim.pid)
        restart_s = await asyncio.to_thread(
            wait_replicas, app.name, "BatchingConsumer", 2, {victim.pid}
        )
        kill_times.append(killed)
        # Mid-POST: arrived at the receiver within SLOW_S before the kill (no answer
        # yet, or its 200 not yet recorded in the ledger), or just after it (written to
        # the socket before the kill).
        for attempt in hooks.attempts[:]:
            if killed - SLOW_S - SETTLE_S < attempt.at <= killed + IN_TRANSIT_S:
                mid_post.add(attempt.task_id)
        return Fault(
            start,
            start,
            {"mid_post_at_kill": len(mid_post), "serve_restarted_consumer_s": round(restart_s, 1)},
        )

    # Bound known only after the kill: checked below, per task id.
    result = await under_load(
        app,
        fault,
        label="consumer SIGKILL mid webhook POST",
        clients=4,
        hooks=hooks,
        webhook_clients=4,
        webhook_mode="slow",
        fault_at=6.0,
        after_s=8.0,
        duplicate_bound=10**6,
        reprocess_bound=app.settings.prefetch_count,
        rework_bound=app.settings.prefetch_count * 2,
    )
    twice = {task for task, n in result.deliveries.items() if n > 1}
    result.summary.duplicate_bound = len(mid_post)
    seen = hooks.by_task()
    outside = {
        task: [round(a.at - kill_times[0], 2) for a in seen[task]] for task in twice - mid_post
    }
    result.report(posted_twice=len(twice), twice_not_mid_post_s_from_kill=outside)
    result.check()
    assert mid_post, "no POST was in progress at the kill"
    assert twice <= mid_post, sorted(twice - mid_post)[:5]
    assert max(result.deliveries.values(), default=0) <= 2, result.summary.line()
