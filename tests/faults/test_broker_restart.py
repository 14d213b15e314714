"""RabbitMQ restarted under load (``rabbitmqctl stop_app``, ~3 s, ``start_app``).

While the broker is away, requests must be refused at once (503 with Retry-After), not
left waiting. The ingress and the consumers reconnect on their own (aio-pika robust
connections), and 200s resume soon after ``start_app``. Requests caught in flight at the
stop may end in 504 (their result went to a reply queue that died with the connection)
or be answered after the restart (the request queue is a durable quorum queue of
persistent messages): explicit either way, never lost.

Note: ``stop_app`` stops the whole broker, which other users of this machine share; the
app is started again in a ``finally`` and checked by the session fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import drain, ensure_broker_running, rabbitmqctl
from tests.faults.load import (
    DEFAULT_MARGIN_S,
    LOST_AFTER_EXTRA_S,
    Load,
    in_flight_at,
    payloads,
    percentile,
    stats,
    statuses,
)
from tests.faults.reconcile import reconcile

TIMEOUT = 15.0
NUM_CONSUMERS = 1
CLIENTS = 12
PROBE_CLIENTS = 4
STOP_AT_S = 8.0
OUTAGE_S = 3.0
RECOVERY_LIMIT_S = 30.0  # 200s must resume within this long after start_app
STEADY_AFTER_S = 8.0  # then the load runs this much longer
FAST_503_S = 1.0


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "brokerrestart",
        NUM_CONSUMERS=NUM_CONSUMERS,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
    )


async def test_broker_restart_under_load(app: App) -> None:
    async with httpx.AsyncClient() as client:
        before = await stats(client, app.url)
    load = Load(
        app.url,
        payloads(),
        clients=CLIENTS,
        duration=600,  # stopped below
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        max_pause_s=0.5,  # honour Retry-After, up to half a second
        label="RabbitMQ restart",
    )
    running = asyncio.create_task(load.run())
    await asyncio.sleep(STOP_AT_S)
    try:
        stop_begin = load.now()
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        stop_done = load.now()
        # The closed-loop clients may all be waiting on requests the broker confirmed
        # just before it stopped; these probes make sure requests arrive in the outage.
        probes = Load(
            app.url,
            payloads(4),
            clients=PROBE_CLIENTS,
            duration=OUTAGE_S,
            request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
            think_s=0.1,
            max_pause_s=0.1,
            label="probes",
        )
        probe_offset = load.now()
        probe_records = await probes.run()
        start_begin = load.now()
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(ensure_broker_running)
    start_done = load.now()

    def resumed() -> list[float]:
        return [r.done for r in load.records if r.status == 200 and r.sent >= start_done]

    for _ in range(int((RECOVERY_LIMIT_S + 5) / 0.2)):  # poll: the records are plain data
        if resumed():
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(STEADY_AFTER_S)
    load.stop()
    records = await running
    for r in probe_records:  # onto the main load's clock
        r.sent += probe_offset
    records = records + probe_records

    await asyncio.to_thread(drain, app)
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient() as client:
        after = await stats(client, app.url)
        health = await client.get(f"{app.url}/healthz", timeout=10)

    outage = [r for r in probe_records if r.sent < start_begin]
    caught = in_flight_at(records, stop_begin)
    # Published while the broker was shutting down: refused, or confirmed and answered
    # once it is back.
    stopping = [r for r in records if stop_begin <= r.sent < stop_done]
    refused = [r.elapsed for r in records if r.status == 503]
    recovery_s = min(resumed(), default=float("inf")) - start_done
    summary = reconcile(
        records,
        timeout=TIMEOUT,
        label="RabbitMQ restart",
        # 503 (with Retry-After) while the broker is away; a 504 only for a request
        # that was in flight while stop_app ran (its reply queue died with the
        # connection). A 500, or a 504 for anything sent later, fails the scenario.
        allowed=(503,),
        allowed_if={504: lambda r: r.sent < stop_done and r.done > stop_begin},
        late_results=after["late_results"] - before["late_results"],
        # A result published just before the connection dropped, its ack lost with it.
        reprocess_bound=app.settings.prefetch_count * NUM_CONSUMERS,
    )
    summary.report(
        stop_app_s=round(stop_done - stop_begin, 2),
        outage_s=round(start_done - stop_begin, 2),
        sent_during_outage=len(outage),
        outage_outcomes=statuses(outage),
        p99_503_during_outage_s=round(percentile((r.elapsed for r in outage), 99), 3),
        in_flight_at_stop=len(caught),
        caught_outcomes=statuses(caught),
        caught_max_latency_s=round(max((r.elapsed for r in caught), default=0.0), 2),
        sent_while_stopping=statuses(stopping),
        their_max_latency_s=round(max((r.elapsed for r in stopping), default=0.0), 2),
        first_200_after_start_app_s=round(recovery_s, 2),
        healthz_after=health.status_code,
        load_generator_loop_lag_s=load.lag(),
    )
    summary.check()
    assert outage, "no request was sent while the broker was stopped"
    assert {r.status for r in outage} == {503}, statuses(outage)
    assert all(r.retry_after for r in outage), "a 503 without Retry-After"
    assert percentile(refused, 99) < FAST_503_S, summary.line()
    assert recovery_s < RECOVERY_LIMIT_S, summary.line()
    assert health.status_code == 200, health.text
    assert after["pending"] == 0
