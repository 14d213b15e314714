"""Overload: 120 concurrent clients against a pipeline that classifies 30-50 images/s on
2 shared cores, with a request queue capped at MAX_QUEUE_LENGTH.

The excess must be refused at once (503 with Retry-After, never a hang), the queue must
stay near its cap, memory must stay bounded, and the service must be healthy afterwards.
The report also gives Serve's proxy-side latencies and the load generator's own CPU and
event-loop lag, to tell the service's delays from the client's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from rabbit_serve.local_cluster import App, queue_depth
from tests.faults.chaos import (
    broker_rss_mb,
    drain,
    proxy_latencies,
    ray_rss_mb,
    rss_by_process,
)
from tests.faults.load import (
    DEFAULT_MARGIN_S,
    LOST_AFTER_EXTRA_S,
    Load,
    payloads,
    percentile,
    stats,
)
from tests.faults.reconcile import reconcile
from tests.images import ESPRESSO, sample

TIMEOUT = 10.0
MAX_QUEUE_LENGTH = 40
CLIENTS = 120
DURATION_S = 30.0
MAX_RSS_GROWTH_MB = 300.0
# reject-publish on a quorum queue takes effect with a lag: publishes already on their
# way are still enqueued, so the queue can overshoot its cap by up to the publishes in
# flight (at most one per client here).
QUEUE_OVERSHOOT = CLIENTS
WARMUP_CLIENTS = 64
WARMUP_S = 8.0
FAST_503_S = 1.0


@dataclass
class Samples:
    rss_mb: list[float] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "overload",
        NUM_CONSUMERS=1,
        TIMEOUT=TIMEOUT,
        MAX_QUEUE_LENGTH=MAX_QUEUE_LENGTH,
        MAX_BATCH_SIZE=16,
        BATCH_TIMEOUT=0.02,
        MAX_BATCHES_IN_FLIGHT=2,
    )


async def sample_while(app: App, out: Samples, every_s: float = 1.0) -> None:
    async with httpx.AsyncClient() as client:
        while True:  # cancelled when the load is over
            out.rss_mb.append(await asyncio.to_thread(ray_rss_mb))
            out.depth.append(
                await asyncio.to_thread(queue_depth, app.settings, app.settings.request_queue)
            )
            try:
                out.pending.append((await stats(client, app.url))["pending"])
            except httpx.HTTPError:
                pass  # the ingress is busy: the next sample will do
            await asyncio.sleep(every_s)


def proxy_view(latencies: dict[int, list[float]]) -> dict[int, list[float]]:
    """Per status, p50/p99/max of the latencies Serve's proxy logged."""
    return {
        status: [round(percentile(values, q), 2) for q in (50, 99, 100)]
        for status, values in sorted(latencies.items())
    }


def growth(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Per process name, MiB gained (only those that gained 10 MiB or more)."""
    grown = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    return {name: round(mb) for name, mb in sorted(grown.items()) if mb >= 10}


async def test_overload_is_refused_fast_and_bounded(app: App) -> None:
    # Warm up first (full batches: ONNX Runtime sizes its memory arena once for them), so
    # that "before" is the steady state and growth is what overload itself costs.
    await Load(
        app.url, payloads(), clients=WARMUP_CLIENTS, duration=WARMUP_S, request_timeout=60
    ).run()
    await asyncio.to_thread(drain, app)
    before_by_process = await asyncio.to_thread(rss_by_process)
    before_rss = sum(before_by_process.values())
    broker_before = await asyncio.to_thread(broker_rss_mb)
    async with httpx.AsyncClient() as client:
        before = await stats(client, app.url)
    load = Load(
        app.url,
        payloads(),
        clients=CLIENTS,
        duration=DURATION_S,
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        max_pause_s=1.0,  # a polite client: it honours Retry-After (1 s)
        label="overload",
    )
    during = Samples()
    sampler = asyncio.create_task(sample_while(app, during))
    since = time.time()
    cpu_before = os.times()
    try:
        records = await load.run()
    finally:
        sampler.cancel()
    cpu_after = os.times()
    # This process (load generator and sampler) shares the 2 cores with the pipeline.
    generator_cores = (
        cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    ) / DURATION_S
    broker_during = await asyncio.to_thread(broker_rss_mb)

    await asyncio.to_thread(drain, app)
    await asyncio.sleep(3.0)
    after_by_process = await asyncio.to_thread(rss_by_process)
    after_rss = sum(after_by_process.values())
    image = base64.b64encode(sample("coffee.jpg")).decode()
    async with httpx.AsyncClient(timeout=30) as client:
        after = await stats(client, app.url)
        health = await client.get(f"{app.url}/healthz")
        answer = await client.post(f"{app.url}/v1/classify", json={"image": image, "top_k": 1})

    refused = [r for r in records if r.status == 503]
    # Time outside the ingress handler (client, HTTP connection, Serve's proxy, the
    # replica's queue): the client's latency minus the ingress's own timings_ms.total.
    outside = [r.elapsed - r.server_s for r in records if r.server_s is not None]
    server_view = proxy_view(await asyncio.to_thread(proxy_latencies, "/overload", since))
    summary = reconcile(
        records,
        timeout=TIMEOUT,
        label="overload",
        # 503: the queue cap; 504: a request that waited TIMEOUT (in the proxy or the
        # queue) before its answer came. Nothing else.
        allowed=(503, 504),
        late_results=after["late_results"] - before["late_results"],
    )
    summary.report(
        clients=CLIENTS,
        duration_s=DURATION_S,
        throughput_200_per_s=round(summary.ok / DURATION_S, 1),
        max_queue_length=MAX_QUEUE_LENGTH,
        max_ready_sampled=max(during.depth, default=0),
        max_pending_sampled=max(during.pending, default=0),
        ray_rss_mb_before_peak_after=[
            round(before_rss),
            round(max(during.rss_mb, default=0)),
            round(after_rss),
        ],
        rss_growth_by_process_mb=growth(before_by_process, after_by_process),
        outside_handler_s_p50_max=[
            round(statistics.median(outside) if outside else 0.0, 2),
            round(max(outside, default=0.0), 2),
        ],
        broker_rss_mb_before_during=[round(broker_before), round(broker_during)],
        refused_without_retry_after=sum(1 for r in refused if not r.retry_after),
        refusal_details=sorted({(r.detail or "")[:60] for r in refused})[:3],
        healthz_after=health.status_code,
        load_generator_cores=round(generator_cores, 2),
        load_generator_loop_lag_s_p99_max=load.lag(),
        proxy_view_s=server_view,
    )
    summary.check()
    assert refused, "the queue cap was never hit: no 503 under overload"
    assert all(r.retry_after for r in refused), "a 503 without Retry-After"
    # "At once": the typical refusal is immediate as the client sees it, and for the
    # service (Serve's proxy log, from the moment the proxy took the request) even the
    # tail stays far below the time an answer could take. The client-side tail also
    # holds the seconds this very load generator costs the 2 shared cores before the
    # proxy accepts a connection (up to ~9 s seen), which no server setting changes;
    # `hung == 0` above still bounds it end to end.
    assert summary.p50_503 < FAST_503_S, summary.line()
    assert server_view[503][1] < TIMEOUT / 2, server_view
    assert max(during.depth) <= MAX_QUEUE_LENGTH + QUEUE_OVERSHOOT, during.depth
    assert max(during.rss_mb) - before_rss < MAX_RSS_GROWTH_MB, during.rss_mb
    assert after_rss - before_rss < MAX_RSS_GROWTH_MB, (before_rss, after_rss)
    assert health.status_code == 200, health.text
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["class_id"] == ESPRESSO
    assert after["pending"] == 0
