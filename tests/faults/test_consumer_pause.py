"""Every consumer paused past TIMEOUT (SIGSTOP, TIMEOUT + 5 s, SIGCONT) while webhook
jobs wait in the queue.

A webhook job lives WEBHOOK_JOB_TTL (hours), not TIMEOUT: each one accepted with a 202,
before or during the pause, must be POSTed to its receiver exactly once after the
consumers resume (issue 9: 0 of 10 were, before). Synchronous requests caught by the
pause get their 504 at TIMEOUT; nothing else may fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import replicas
from tests.faults.hooks import HookServer
from tests.faults.inject import stopped
from tests.faults.load import Load, Record
from tests.faults.scenario import Fault, under_load

TIMEOUT = 8.0
PAUSE_S = TIMEOUT + 5.0
CLIENTS = 4


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "consumerpause",
        NUM_CONSUMERS=1,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        WEBHOOK_ALLOW_PRIVATE=True,
    )


async def test_consumers_paused_past_timeout_with_webhook_jobs(app: App, hooks: HookServer) -> None:
    window: list[float] = []

    async def fault(load: Load) -> Fault:
        consumers = await asyncio.to_thread(replicas, app.name, "BatchingConsumer")
        assert consumers, "no consumer replica"
        with stopped([c.pid for c in consumers]):
            window.append(load.now())
            await asyncio.sleep(PAUSE_S)
        window.append(load.now())
        return Fault(window[0], window[1], {"paused_s": PAUSE_S, "consumers": len(consumers)})

    def caught(r: Record) -> bool:
        # Waited for its answer while the consumers were stopped, or was queued behind
        # the backlog of webhook jobs the pause built up (one FIFO queue serves both:
        # docs/reliability.md, open issue 11), sent before that backlog could drain.
        return r.done > window[0] and r.sent < window[1] + TIMEOUT

    result = await under_load(
        app,
        fault,
        label=f"consumers paused {PAUSE_S:g}s (TIMEOUT {TIMEOUT:g}s), webhook jobs",
        allowed_if={504: caught},
        clients=CLIENTS,
        hooks=hooks,
        webhook_clients=3,
        fault_at=4.0,
        after_s=8.0,
        webhook_bound_s=60.0,
        # Exactly once at the receiver, whatever the broker redelivered.
        duplicate_bound=0,
        # What the stopped consumer held is redelivered once its connection is dropped.
        rework_bound=app.settings.prefetch_count * 2,
    )
    during = [r for r in result.records if r.status == 202 and caught(r)]
    result.report(accepted_during_pause=len(during))
    result.check()
    assert during, "no webhook job was accepted while the consumers were stopped"
