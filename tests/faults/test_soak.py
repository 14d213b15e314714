"""Sustained load for minutes: memory and the ingress's pending count must not grow.

Not part of CI: ``SOAK=1 .venv/bin/python -m pytest -s tests/faults/test_soak.py``
(``SOAK_SECONDS``, default 180, sets the length).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable

import httpx
import pytest

from rabbit_serve.local_cluster import App, queue_depth
from tests.faults.chaos import drain, rss_by_process
from tests.faults.load import DEFAULT_MARGIN_S, LOST_AFTER_EXTRA_S, Load, payloads, stats
from tests.faults.reconcile import reconcile

pytestmark = pytest.mark.soak

TIMEOUT = 10.0
CLIENTS = 8
DURATION_S = float(os.environ.get("SOAK_SECONDS", "180"))
SAMPLE_EVERY_S = 10.0
WARMUP_S = 30.0  # samples before this are not compared: arenas and caches fill first
MAX_GROWTH_MB = 64.0  # median of the last third vs. the first third after warm-up


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app("soak", NUM_CONSUMERS=1, TIMEOUT=TIMEOUT, MAX_BATCH_SIZE=8, BATCH_TIMEOUT=0.02)


async def test_soak_no_growth(app: App) -> None:
    load = Load(
        app.url,
        payloads(),
        clients=CLIENTS,
        duration=DURATION_S,
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        label=f"soak {DURATION_S:g}s",
    )
    samples: list[tuple[float, float, int, int, dict[str, float]]] = []

    async def sample() -> None:
        async with httpx.AsyncClient() as client:
            while True:
                by_process = await asyncio.to_thread(rss_by_process)
                depth = await asyncio.to_thread(
                    queue_depth, app.settings, app.settings.request_queue
                )
                pending = (await stats(client, app.url))["pending"]
                samples.append((load.now(), sum(by_process.values()), pending, depth, by_process))
                await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    try:
        records = await load.run()
    finally:
        sampler.cancel()
    await asyncio.to_thread(drain, app)
    async with httpx.AsyncClient() as client:
        after = await stats(client, app.url)

    steady = [s for s in samples if s[0] >= WARMUP_S]
    third = max(1, len(steady) // 3)
    first = statistics.median(s[1] for s in steady[:third])
    last = statistics.median(s[1] for s in steady[-third:])
    grown = {
        name: round(steady[-1][4].get(name, 0.0) - mb)
        for name, mb in steady[0][4].items()
        if abs(steady[-1][4].get(name, 0.0) - mb) >= 5
    }
    summary = reconcile(records, timeout=TIMEOUT, allowed=(), label=f"soak {DURATION_S:g}s")
    summary.report(
        wall_s=round(time.monotonic() - started),
        throughput_per_s=round(summary.ok / DURATION_S, 1),
        rss_mb_timeline=[(round(t), round(mb)) for t, mb, *_ in samples],
        pending_timeline=[p for _, _, p, _, _ in samples],
        ready_timeline=[d for _, _, _, d, _ in samples],
        rss_growth_mb=round(last - first, 1),
        growth_by_process_mb=grown,
        pending_after=after["pending"],
    )
    summary.check()
    assert len(steady) >= 3, "soak too short to compare"
    assert last - first < MAX_GROWTH_MB, summary.line()
    assert max(p for _, _, p, _, _ in samples) <= CLIENTS
    assert after["pending"] == 0
