"""A classifier replica stopped with SIGSTOP (a hung ONNX Runtime, a frozen node), then
resumed after CLASSIFY_TIMEOUT and a few seconds more.

Every classifier call is bounded by CLASSIFY_TIMEOUT: a batch stuck at the stopped
replica is abandoned and tried again. With two replicas the other one answers it, well
inside TIMEOUT, and no request gets an error. With one, nothing classifies until the
replica resumes; the requests in flight are then answered (TIMEOUT is longer than the
stop), or get a 504 if their time ran out. A stopped replica is not a poison image: no
good image may be answered 422.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import replicas
from tests.faults.inject import stopped
from tests.faults.load import Load, Record
from tests.faults.scenario import Fault, under_load

TIMEOUT = 20.0
CLASSIFY_TIMEOUT = 4.0
STOP_S = CLASSIFY_TIMEOUT + 3.0
CLIENTS = 8


@pytest.fixture(params=[2, 1], ids=["2-replicas", "1-replica"])
def replicas_wanted(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture
def app(replicas_wanted: int, fault_app: Callable[..., App]) -> App:
    return fault_app(
        f"classifierstop{replicas_wanted}",
        classifiers=replicas_wanted,
        NUM_CONSUMERS=1,
        TIMEOUT=TIMEOUT,
        CLASSIFY_TIMEOUT=CLASSIFY_TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        MAX_BATCHES_IN_FLIGHT=2,
    )


async def test_sigstop_of_a_classifier(app: App, replicas_wanted: int) -> None:
    window: list[float] = []

    async def fault(load: Load) -> Fault:
        classifiers = await asyncio.to_thread(replicas, app.name, "Classifier")
        assert len(classifiers) == replicas_wanted, classifiers
        with stopped([classifiers[0].pid]):
            window.append(load.now())
            await asyncio.sleep(STOP_S)
        window.append(load.now())
        return Fault(window[0], window[1], {"stopped_s": STOP_S})

    def caught(r: Record) -> bool:  # in flight at some point while the replica was stopped
        return r.sent < window[1] and r.done > window[0]

    result = await under_load(
        app,
        fault,
        label=f"classifier SIGSTOP, {replicas_wanted} replica(s)",
        # Two replicas: nothing but 200s. One: a 504 only for a request caught by the stop.
        allowed=(),
        allowed_if={504: caught} if replicas_wanted == 1 else None,
        clients=CLIENTS,
        fault_at=5.0,
        after_s=10.0,
        # Abandoned calls are requeued and redelivered: at most what the consumer holds,
        # once per CLASSIFY_TIMEOUT of the stop.
        rework_bound=app.settings.prefetch_count * 3,
    )
    result.report()
    result.check()
    if replicas_wanted > 1:
        slow = [r.elapsed for r in result.records if r.status == 200 and caught(r)]
        assert max(slow, default=0.0) < CLASSIFY_TIMEOUT + 5.0, result.summary.line()
