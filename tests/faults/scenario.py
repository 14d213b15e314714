"""One fault under steady load, reconciled per task id: the shape of most scenarios.

:func:`under_load` runs ``clients`` synchronous clients (and, with a webhook receiver,
``webhook_clients`` whose requests carry a ``callback_url``) against an app, calls the
scenario's ``fault`` after ``fault_at`` seconds, keeps the load on for ``after_s`` once
the fault is over, then drains the queue, waits for every accepted webhook task to be
POSTed, and reconciles: the client view (:func:`tests.faults.load.reconcile`), the
receiver's POSTs per task id, and every consumer replica's own counters.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from rabbit_serve.local_cluster import App
from tests.faults.chaos import drain
from tests.faults.counters import ConsumerView, consumer_delta, consumer_problems, replica_stats
from tests.faults.hooks import HookServer
from tests.faults.load import DEFAULT_MARGIN_S, LOST_AFTER_EXTRA_S, Load, Record, payloads, stats
from tests.faults.reconcile import Summary, accepted_tasks, reconcile


@dataclass
class Fault:
    """What a scenario's fault coroutine tells the runner, on the load's clock."""

    start: float = 0.0
    end: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)  # requests the fault sent itself


@dataclass
class Result:
    summary: Summary
    consumers: ConsumerView
    consumer_problems: list[str]
    fault: Fault
    records: list[Record]
    deliveries: dict[str, int]
    recovery_s: float
    notes: dict[str, Any]

    def report(self, **extra: Any) -> None:
        """Print and record the summary with the runner's figures and ``extra``."""
        self.summary.report(**self.notes, **extra)

    def check(self) -> None:
        self.summary.check()
        assert not self.consumer_problems, (self.summary.line(), self.consumer_problems)


async def _ingress_stats(app: App) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient() as client:
            return await stats(client, app.url)
    except httpx.HTTPError:
        return None


async def under_load(
    app: App,
    fault: Callable[[Load], Awaitable[Fault]],
    *,
    label: str,
    allowed: Iterable[int] = (),
    allowed_if: Mapping[int, Callable[[Record], bool]] | None = None,
    clients: int = 8,
    hooks: HookServer | None = None,
    webhook_clients: int = 0,
    webhook_mode: str = "ok",
    webhook_bound_s: float = 60.0,
    webhook_errors: Iterable[int] = (),
    fault_at: float = 5.0,
    after_s: float = 10.0,
    max_pause_s: float = 0.5,
    reprocess_bound: int = 0,
    duplicate_bound: int = 0,
    rework_bound: int = 0,
    late_results: bool = True,
) -> Result:
    timeout = app.settings.timeout
    request_timeout = timeout + DEFAULT_MARGIN_S + LOST_AFTER_EXTRA_S
    before = await _ingress_stats(app)
    consumers_before = await asyncio.to_thread(replica_stats, app.name)
    load = Load(
        app.url,
        payloads(),
        clients=clients,
        duration=3600,  # stopped below
        request_timeout=request_timeout,
        max_pause_s=max_pause_s,
        label=label,
    )
    loads = [load]
    if hooks is not None and webhook_clients:
        loads.append(
            Load(
                app.url,
                payloads(4, callback_url=hooks.url(webhook_mode)),
                clients=webhook_clients,
                duration=3600,
                think_s=0.2,
                max_pause_s=max_pause_s,
                request_timeout=request_timeout,
                label=f"{label} webhooks",
            )
        )
    running = [asyncio.create_task(each.run()) for each in loads]
    await asyncio.sleep(fault_at)
    try:
        happened = await fault(load)
    finally:
        await asyncio.sleep(after_s)
        for each in loads:
            each.stop()
        done = await asyncio.gather(*running)
    for each, records in zip(loads[1:], done[1:], strict=True):
        for r in records:  # onto the main load's clock
            r.sent += each._t0 - load._t0
    records = [r for rs in done for r in rs] + happened.records

    await asyncio.to_thread(drain, app, 120.0)
    deliveries: dict[str, int] = {}
    accepted = accepted_tasks(records)
    if hooks is not None:
        await asyncio.to_thread(hooks.wait_attempts, dict.fromkeys(accepted, 1), webhook_bound_s)
        await asyncio.sleep(2.0)  # a second POST would come by now
        seen = hooks.by_task()
        deliveries = {task: len(seen.get(task, ())) for task in accepted}
    await asyncio.sleep(1.0)
    after = await _ingress_stats(app)
    consumers_after = await asyncio.to_thread(replica_stats, app.name)
    late = (
        after["late_results"] - before["late_results"]
        if late_results and before is not None and after is not None
        else 0
    )
    summary = reconcile(
        records,
        timeout=timeout,
        allowed=allowed,
        allowed_if=allowed_if,
        label=label,
        late_results=late,
        deliveries=deliveries if hooks is not None else None,
        reprocess_bound=reprocess_bound,
        duplicate_bound=duplicate_bound,
    )
    view = consumer_delta(consumers_before, consumers_after)
    problems = consumer_problems(
        view,
        answered_200=sum(1 for r in records if r.status == 200),
        accepted_tasks=len(accepted),
        answered_422=sum(1 for r in records if r.status == 422),
        sent_tasks=len(records),
        rework_bound=rework_bound,
        twice_bound=reprocess_bound,
    )
    posted_errors = dict(hooks.errors()) if hooks is not None else {}
    stray = {status: n for status, n in posted_errors.items() if status not in set(webhook_errors)}
    if stray:
        problems.append(f"webhooks POSTed errors instead of results: {stray}")
    fresh = [r.done for r in records if r.status == 200 and r.sent >= happened.end]
    recovery_s = round(min(fresh) - happened.end, 2) if fresh else float("inf")
    notes = {
        "fault_s": round(happened.end - happened.start, 2),
        "recovery_s": recovery_s,
        "pending_after": after and after.get("pending"),
        "consumer_problems": problems,
        "error_details": error_details(records),
        "webhook_error_posts": posted_errors,
        **view.figures(),
        **happened.notes,
    }
    return Result(summary, view, problems, happened, records, deliveries, recovery_s, notes)


def fast(records: Iterable[Record], status: int, within_s: float) -> list[Record]:
    """The ``status`` answers that took longer than ``within_s``."""
    return [r for r in records if r.status == status and r.elapsed > within_s]


def sent_between(records: Iterable[Record], start: float, end: float) -> list[Record]:
    return [r for r in records if start <= r.sent < end]


def error_details(records: Iterable[Record]) -> dict[str, int]:
    """Error answers by status and the start of their detail, for the report."""
    found = Counter(
        f"{r.status}: {(r.detail or r.error or '')[:70]}"
        for r in records
        if r.status not in (200, 202)
    )
    return dict(found.most_common(6))
