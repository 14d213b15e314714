"""Webhooks that are slow (answer after WEBHOOK_TIMEOUT), fail (500) or never answer.

Each is tried exactly WEBHOOK_MAX_ATTEMPTS times with growing backoff, then dropped;
a good webhook gets its result exactly once, signed when WEBHOOK_SECRET is set. And
none of it may hold up the consumer: synchronous requests running at the same time keep
the latency and throughput of a baseline measured just before without the bad webhooks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import httpx
import pytest

from consumer.webhook import backoff_delay
from rabbit_serve.local_cluster import App
from rabbit_serve.settings import Settings
from tests.faults.chaos import unacked
from tests.faults.hooks import Attempt, hook_server
from tests.faults.load import DEFAULT_MARGIN_S, LOST_AFTER_EXTRA_S, Load, Record, payloads, stats
from tests.faults.reconcile import reconcile, record

TIMEOUT = 10.0
WEBHOOK_TIMEOUT = 1.0
WEBHOOK_MAX_ATTEMPTS = 3
SECRET = "test-secret"
SLOW_S = 3.0  # the slow receiver answers after this: well past WEBHOOK_TIMEOUT
SYNC_CLIENTS = 8
PHASE_S = 12.0
BAD_MODES = ("slow", "fail", "hang")
BAD_THINK_S = 0.25  # each bad-webhook client sends ~3 requests a second
# Synchronous latency beside bad webhooks vs. the baseline: a small factor, plus a
# little absolute slack for a 2-core machine that also runs the load generator.
P50_FACTOR, P50_SLACK_S = 2.0, 0.1
P99_FACTOR, P99_SLACK_S = 3.0, 0.5
# Sync throughput beside the bad webhooks, against its baseline: their retries, ledger
# calls and dead-lettering, and this test's own receivers and webhook clients, take CPU
# from the same 2 cores (0.58, 0.46 and 0.39 measured on 2026-12-03, p50 and p99 within
# their bounds each time; docs/reliability.md, open issue 17). Latency says nothing
# waits behind them; this only says they do not take most of the machine.
MIN_THROUGHPUT_RATIO = 0.3


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "webhooks",
        NUM_CONSUMERS=1,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.02,
        MAX_BATCHES_IN_FLIGHT=2,
        WEBHOOK_TIMEOUT=WEBHOOK_TIMEOUT,
        WEBHOOK_MAX_ATTEMPTS=WEBHOOK_MAX_ATTEMPTS,
        WEBHOOK_ALLOW_PRIVATE=True,  # the receiver is on 127.0.0.1
        WEBHOOK_SECRET=SECRET,
    )


def sync_load(app: App, label: str) -> Load:
    return Load(
        app.url,
        payloads(),
        clients=SYNC_CLIENTS,
        duration=PHASE_S,
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        label=label,
    )


def webhook_load(app: App, url: str, think_s: float) -> Load:
    return Load(
        app.url,
        payloads(4, callback_url=url),
        clients=1,
        duration=PHASE_S,
        think_s=think_s,
        request_timeout=TIMEOUT + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S,
        label=f"webhook {url.rsplit('/', 1)[1]}",
    )


def task_ids(records: list[Record]) -> list[str]:
    return [task for r in records if r.status == 202 for task in r.task_ids]


def expected_gaps(mode: str) -> list[float]:
    """Seconds between consecutive attempts: the attempt itself, then the backoff."""
    attempt_s = WEBHOOK_TIMEOUT if mode in ("slow", "hang") else 0.0
    return [attempt_s + backoff_delay(i) for i in range(1, WEBHOOK_MAX_ATTEMPTS)]


def check_backoff(mode: str, attempts: list[Attempt]) -> list[str]:
    times = sorted(a.at for a in attempts)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    problems = []
    for i, (gap, want) in enumerate(zip(gaps, expected_gaps(mode), strict=False), start=1):
        if gap < 0.8 * want:
            problems.append(f"{mode}: retry {i} came after {gap:.2f}s, backoff is {want:.2f}s")
    if gaps and times[-1] - times[0] > sum(expected_gaps(mode)) + 5.0:
        problems.append(f"{mode}: attempts spread over {times[-1] - times[0]:.1f}s")
    return problems


async def watch_queue(app: App, out: list[tuple[int, int]]) -> None:
    while True:  # cancelled by the caller
        out.append(await asyncio.to_thread(unacked, app.settings.request_queue))
        await asyncio.sleep(1.0)


async def test_bad_webhooks_are_bounded_and_block_nothing(app: App) -> None:
    signing = "webhook_secret" in Settings.model_fields
    with hook_server(SECRET, SLOW_S) as hooks:
        async with httpx.AsyncClient() as client:
            before = await stats(client, app.url)

        baseline = await sync_load(app, "sync baseline").run()

        sync = sync_load(app, "sync beside bad webhooks")
        bad = {mode: webhook_load(app, hooks.url(mode), BAD_THINK_S) for mode in BAD_MODES}
        good = webhook_load(app, hooks.url("ok"), 0.5)
        # The broker's view meanwhile: messages waiting, and delivered but not acked.
        queue: list[tuple[int, int]] = []
        watcher = asyncio.create_task(watch_queue(app, queue))
        try:
            sync_records, good_records, *bad_records = await asyncio.gather(
                sync.run(), good.run(), *(load.run() for load in bad.values())
            )
        finally:
            watcher.cancel()
        by_mode = dict(zip(BAD_MODES, bad_records, strict=True))

        expected = {task: WEBHOOK_MAX_ATTEMPTS for rs in bad_records for task in task_ids(rs)}
        expected.update({task: 1 for task in task_ids(good_records)})
        finished = await asyncio.to_thread(hooks.wait_attempts, expected, 90.0)
        # Anything past the bound would come within another full round.
        await asyncio.sleep(sum(expected_gaps("hang")) + WEBHOOK_TIMEOUT)
        async with httpx.AsyncClient() as client:
            after = await stats(client, app.url)

        seen = hooks.by_task()
        signatures = hooks.signatures()

    late = after["late_results"] - before["late_results"]
    base = reconcile(baseline, timeout=TIMEOUT, allowed=(), label="webhooks: sync baseline")
    beside = reconcile(
        sync_records,
        timeout=TIMEOUT,
        allowed=(),
        label="webhooks: sync beside bad webhooks",
        late_results=late,
    )
    deliveries = {task: len(seen.get(task, ())) for task in task_ids(good_records)}
    hooks_summary = reconcile(
        good_records + [r for rs in bad_records for r in rs],
        timeout=TIMEOUT,
        label="webhooks: callback requests",
        allowed=(),
        ok_status=202,
        deliveries=deliveries,
    )
    attempts = {
        mode: sorted({len(seen.get(task, ())) for task in task_ids(records)})
        for mode, records in by_mode.items()
    }
    throughput = (len(baseline) / PHASE_S, len(sync_records) / PHASE_S)
    base.report()
    beside.report(
        throughput_rps=[round(t, 1) for t in throughput], load_generator_loop_lag_s=sync.lag()
    )
    hooks_summary.report(
        tasks={mode: len(task_ids(rs)) for mode, rs in by_mode.items()} | {"ok": len(deliveries)},
        attempts_per_task=attempts,
        ok_deliveries_per_task=sorted(set(deliveries.values())),
        signatures=dict(signatures),
        all_attempts_done=finished,
        prefetch=app.settings.prefetch_count,
        max_unacked=max((u for _, u in queue), default=0),
        max_ready=max((r for r, _ in queue), default=0),
    )
    record(
        "webhooks: sync latency, baseline vs beside",
        {"p50": (base.p50_ok, beside.p50_ok), "p99": (base.p99_ok, beside.p99_ok)},
    )

    base.check()
    beside.check()
    hooks_summary.check()
    # Bounded: exactly WEBHOOK_MAX_ATTEMPTS tries per bad webhook, once per good one.
    assert finished, f"webhook attempts still missing: {attempts}"
    for mode in BAD_MODES:
        assert attempts[mode] == [WEBHOOK_MAX_ATTEMPTS], (mode, attempts)
    assert set(deliveries.values()) == {1}, deliveries
    problems = [
        p
        for mode, records in by_mode.items()
        for task in task_ids(records)
        for p in check_backoff(mode, seen.get(task, []))
    ]
    assert not problems, problems[:10]
    # Signed correctly whenever signed; always signed once the app has WEBHOOK_SECRET.
    assert signatures["invalid"] == 0, signatures
    if signing:
        assert signatures["absent"] == 0, signatures
    # Nothing waits behind the bad webhooks.
    assert beside.p50_ok <= P50_FACTOR * base.p50_ok + P50_SLACK_S, (base.line(), beside.line())
    assert beside.p99_ok <= P99_FACTOR * base.p99_ok + P99_SLACK_S, (base.line(), beside.line())
    assert throughput[1] >= MIN_THROUGHPUT_RATIO * throughput[0], throughput
