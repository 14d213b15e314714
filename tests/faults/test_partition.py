"""An AMQP partition, 30 s: every packet of one process's broker connections dropped on
loopback, both ways (iptables, matched by the client's local ports; connections it
opens meanwhile are dropped too), then the rules are removed.

- The ingress partitioned: publishes get no confirm, so new requests get a 503 (after
  PUBLISH_TIMEOUT at worst, at once once the heartbeat has declared the connection
  dead), requests waiting for a result get their 504; 200s resume after the partition.
- One of two consumers partitioned: the broker notices the silent client after the
  AMQP heartbeat and gives its unacked messages to the other consumer, which answers
  them; webhook tasks are POSTed exactly once (the shared ledger), whoever held them.

Skipped where iptables cannot be used (not root, not installed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import replicas
from tests.faults.hooks import HookServer
from tests.faults.inject import Partition, iptables_usable, leftover_rules
from tests.faults.load import Load, Record
from tests.faults.scenario import Fault, under_load

PARTITION_S = 30.0
TIMEOUT = 20.0
CLIENTS = 6
RECOVERY_LIMIT_S = 20.0
# After the rules go, the ingress needs a moment to open a new connection (its robust
# connection retries every second): a 503 then is still an honest answer.
RECONNECT_S = 3.0

why_not = iptables_usable()
pytestmark = pytest.mark.skipif(why_not is not None, reason=f"no partition: {why_not}")


@pytest.fixture(
    params=[
        pytest.param("Ingress", id="ingress"),
        pytest.param("BatchingConsumer", id="consumer"),
    ]
)
def victim(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def app(victim: str, fault_app: Callable[..., App]) -> App:
    return fault_app(
        f"partition{victim.lower()}",
        NUM_CONSUMERS=2 if victim == "BatchingConsumer" else 1,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        WEBHOOK_ALLOW_PRIVATE=True,
    )


async def test_amqp_partition(app: App, victim: str, hooks: HookServer) -> None:
    window: list[float] = []

    async def fault(load: Load) -> Fault:
        targets = await asyncio.to_thread(replicas, app.name, victim)
        assert targets, f"no {victim} replica"
        partition = Partition([targets[0].pid])
        try:
            await asyncio.to_thread(partition.__enter__)
            window.append(load.now())
            await asyncio.sleep(PARTITION_S)
        finally:
            await asyncio.to_thread(partition.__exit__, None, None, None)
        window.append(load.now())
        left = await asyncio.to_thread(leftover_rules)
        assert not left, left
        return Fault(window[0], window[1], {"ports_dropped": len(partition.ports)})

    def during(r: Record) -> bool:  # in flight at some moment of the partition
        return r.sent < window[1] and r.done > window[0]

    def at_start(r: Record) -> bool:
        return r.sent <= window[0] < r.done

    def reconnecting(r: Record) -> bool:  # sent before the ingress had reconnected
        return r.sent < window[1] + RECONNECT_S and r.done > window[0]

    if victim == "Ingress":
        allowed_if = {503: reconnecting, 504: during}
    else:
        # Held by the partitioned consumer: redelivered after the heartbeat, inside
        # TIMEOUT; a 504 only for what it held when the partition began.
        allowed_if = {504: at_start}
    result = await under_load(
        app,
        fault,
        label=f"AMQP partition {PARTITION_S:g}s, {victim}",
        allowed_if=allowed_if,
        clients=CLIENTS,
        hooks=hooks,
        webhook_clients=2,
        fault_at=5.0,
        after_s=RECOVERY_LIMIT_S if victim == "Ingress" else 8.0,
        late_results=True,
        reprocess_bound=app.settings.prefetch_count,
        rework_bound=app.settings.prefetch_count * 2,
    )
    result.report()
    result.check()
    assert result.recovery_s < RECOVERY_LIMIT_S, result.summary.line()
