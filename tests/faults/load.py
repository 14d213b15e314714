"""A small closed-loop load generator and the bookkeeping that reconciles its outcome.

Each of ``clients`` coroutines posts real images (distinct encodings of a cat and an
espresso photo, so a swapped answer would show) one after another, for ``duration``
seconds or until ``count`` requests were sent, and records one :class:`Record` per
request: when it was sent, what came back, and how long it took. Nothing is retried.

:func:`reconcile` turns the records into a :class:`Summary` and checks the invariant of
every fault scenario: each request sent got exactly one HTTP answer (a 200 with the
right class or an explicit error), none took longer than ``TIMEOUT`` plus a margin, and
no task was answered twice.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.images import CAT_CLASSES, ESPRESSO, variants

# How far past TIMEOUT an answer may come and still count as prompt: Serve's proxy,
# JSON encoding and a busy 2-core machine all add to the ingress's own deadline.
DEFAULT_MARGIN_S = 5.0
# The client waits this much longer still before it calls a request lost.
LOST_AFTER_EXTRA_S = 10.0


@dataclass(frozen=True)
class Payload:
    body: bytes  # the JSON request body, encoded once
    expected: str  # "espresso" or "cat"


def payloads(per_class: int = 12, top_k: int = 1, **extra: Any) -> list[Payload]:
    """``per_class`` distinct cat and espresso images, as ready-to-send JSON bodies."""
    out = []
    for name, expected in (("coffee.jpg", "espresso"), ("chelsea.jpg", "cat")):
        for image in variants(name, per_class):
            body = {"image": base64.b64encode(image).decode(), "top_k": top_k, **extra}
            out.append(Payload(orjson.dumps(body), expected))
    random.Random(7).shuffle(out)
    return out


def is_correct(expected: str, top_class: int | None) -> bool:
    if top_class is None:
        return False
    return top_class == ESPRESSO if expected == "espresso" else top_class in CAT_CLASSES


@dataclass
class Record:
    client: int
    key: str  # the client-side identity of this request (also sent as X-Request-Id)
    sent: float  # seconds since the load started (the load's own monotonic clock)
    expected: str
    elapsed: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    top_class: int | None = None
    response_id: str | None = None
    task_ids: tuple[str, ...] = ()  # for 202s (webhook requests)
    server_s: float | None = None  # the ingress's own timings_ms.total, for 200s
    retry_after: str | None = None
    detail: str | None = None
    error: str | None = None  # the client-side exception when there was no answer

    @property
    def done(self) -> float:
        return self.sent + self.elapsed

    @property
    def correct(self) -> bool:
        return self.status == 200 and is_correct(self.expected, self.top_class)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task ids this request was answered for: a 200's id, a 202's task ids."""
        if self.status == 200 and self.response_id:
            return (self.response_id,)
        return self.task_ids if self.status == 202 else ()


class Load:
    """``clients`` closed-loop clients against ``url``/v1/classify.

    ``await load.run()`` returns the records; while it runs, :meth:`now` is the
    load's clock, so a test can note when it injected a fault on the same scale.
    """

    def __init__(
        self,
        url: str,
        bodies: Sequence[Payload],
        *,
        clients: int,
        duration: float | None = None,
        count: int | None = None,
        request_timeout: float,
        pause_after_error: float = 0.0,
        max_pause_s: float = 1.0,
        think_s: float = 0.0,
        label: str = "load",
    ) -> None:
        if (duration is None) == (count is None):
            raise ValueError("give exactly one of duration and count")
        self.url = url.rstrip("/") + "/v1/classify"
        self.bodies = list(bodies)
        self.clients = clients
        self.duration = duration
        self.count = count
        self.request_timeout = request_timeout
        self.pause_after_error = pause_after_error
        self.max_pause_s = max_pause_s
        self.think_s = think_s
        self.label = label
        self.records: list[Record] = []
        self.lags: list[float] = []  # how late this process's event loop woke up, seconds
        self.in_flight = 0
        self._next = 0
        self._t0 = time.monotonic()
        self._stop = False

    def now(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        """Send no new requests; those in flight still finish."""
        self._stop = True

    def _take(self) -> int | None:
        if self._stop:
            return None
        if self.count is not None and self._next >= self.count:
            return None
        if self.duration is not None and self.now() >= self.duration:
            return None
        self._next += 1
        return self._next - 1

    async def run(self) -> list[Record]:
        limits = httpx.Limits(
            max_connections=self.clients + 8, max_keepalive_connections=self.clients + 8
        )
        timeout = httpx.Timeout(self.request_timeout, connect=10.0)
        self._t0 = time.monotonic()
        monitor = asyncio.create_task(self._watch_lag())
        try:
            async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
                await asyncio.gather(*(self._client(client, i) for i in range(self.clients)))
        finally:
            monitor.cancel()
        return self.records

    async def _watch_lag(self, every_s: float = 0.05) -> None:
        """A busy client inflates the latencies it measures: record by how much."""
        while True:  # cancelled by run()
            started = time.monotonic()
            await asyncio.sleep(every_s)
            self.lags.append(time.monotonic() - started - every_s)

    def lag(self) -> list[float]:
        """p99 and max of the load generator's own event-loop lag, seconds."""
        return [round(percentile(self.lags, 99), 3), round(max(self.lags, default=0.0), 3)]

    async def _client(self, client: httpx.AsyncClient, number: int) -> None:
        while (seq := self._take()) is not None:
            payload = self.bodies[seq % len(self.bodies)]
            key = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label) + f"#{seq}"
            record = Record(number, key, sent=self.now(), expected=payload.expected)
            self.records.append(record)
            self.in_flight += 1
            try:
                await self._send(client, payload, record)
            finally:
                self.in_flight -= 1
            pause = self.think_s
            if record.status != 200 and record.status != 202:
                pause = max(pause, self.pause_after_error)
                if record.retry_after and record.retry_after.isdigit():
                    # A polite client honours Retry-After; capped to keep the pressure on.
                    pause = max(pause, min(float(record.retry_after), self.max_pause_s))
            if pause:
                await asyncio.sleep(pause)

    async def _send(self, client: httpx.AsyncClient, payload: Payload, record: Record) -> None:
        started = time.monotonic()
        try:
            response = await client.post(
                self.url,
                content=payload.body,
                # As a front proxy would: TIMEOUT then also counts the wait before the
                # ingress (on 2 saturated cores, seconds in Serve's proxy).
                headers={
                    "content-type": "application/json",
                    "x-request-start": f"t={time.time():.3f}",
                    # Serve logs it as the request id: a record can be found in the logs.
                    "x-request-id": record.key,
                },
            )
        except Exception as exc:  # no HTTP answer: the one outcome that must never happen
            record.elapsed = time.monotonic() - started
            record.error = f"{type(exc).__name__}: {exc}"[:300]
            return
        record.elapsed = time.monotonic() - started
        record.status = response.status_code
        record.retry_after = response.headers.get("retry-after")
        try:
            body = response.json()
        except ValueError:
            record.detail = response.text[:200]
            return
        if not isinstance(body, dict):
            return
        if response.status_code == 200:
            record.response_id = body.get("id")
            predictions = body.get("predictions") or []
            if predictions:
                record.top_class = predictions[0].get("class_id")
            total_ms = (body.get("timings_ms") or {}).get("total")
            if isinstance(total_ms, (int, float)):
                record.server_s = total_ms / 1000
        elif response.status_code == 202:
            record.response_id = body.get("id")
            record.task_ids = tuple(body.get("task_ids") or ())
        else:
            record.detail = str(body.get("detail"))[:200]


def in_flight_at(records: Iterable[Record], t: float) -> list[Record]:
    """The requests that had been sent but not yet answered at time ``t``."""
    return [r for r in records if r.sent <= t < r.done]


def statuses(records: Iterable[Record]) -> dict[str, int]:
    """Outcome counts, ``"lost"`` for no HTTP answer."""
    counts = Counter("lost" if r.status is None else str(r.status) for r in records)
    return dict(sorted(counts.items()))


def slowest(records: Iterable[Record], n: int = 3) -> list[tuple[str, float, float]]:
    """The ``n`` slowest requests as (outcome, latency, sent at), for the report."""
    ordered = sorted(records, key=lambda r: r.elapsed, reverse=True)[:n]
    return [
        ("lost" if r.status is None else str(r.status), round(r.elapsed, 2), round(r.sent, 2))
        for r in ordered
    ]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# Never a stated outcome of any fault: an error the service did not mean to give.
NEVER_ALLOWED = frozenset({500})


@dataclass
class Summary:
    label: str
    sent: int
    ok: int  # 200s and 202s (accepted webhook requests)
    ok_correct: int
    errors: dict[int, int]  # explicit error answers by status
    lost: int  # no HTTP answer
    hung: int  # answered, but later than TIMEOUT + margin
    duplicated: int  # task ids answered (client) or delivered (webhook) more than once
    reprocessed: int  # a task classified twice, its second result dropped by the ingress
    reprocess_bound: int  # how many a scenario's fault can cause (at-least-once delivery)
    max_latency: float
    p50_ok: float
    p99_ok: float
    p50_503: float
    p99_503: float
    bound_s: float
    late_results: int = 0
    allowed: tuple[int, ...] = ()  # the error classes this scenario may answer with
    disallowed: dict[int, int] = field(default_factory=dict)  # errors outside them
    accepted_tasks: int = 0  # task ids of 202s that had to reach the webhook receiver
    lost_tasks: int = 0  # of those, never delivered within the scenario's bound
    duplicate_bound: int = 0  # extra deliveries this fault can explain
    notes: dict[str, Any] = field(default_factory=dict)
    records: Sequence[Record] = field(default=(), repr=False)

    @property
    def wrong(self) -> int:
        return self.ok - self.ok_correct

    @property
    def by_class(self) -> dict[str, int]:
        return statuses(self.records)

    def violations(self) -> list[str]:
        problems = []
        if self.sent != self.ok + sum(self.errors.values()) + self.lost:
            problems.append("records do not add up")
        if self.lost:
            problems.append(f"{self.lost} requests got no HTTP answer (lost)")
        if self.lost_tasks:
            problems.append(
                f"{self.lost_tasks} of {self.accepted_tasks} accepted webhook tasks were "
                "never POSTed to the receiver (lost)"
            )
        if self.disallowed:
            problems.append(
                f"error answers outside the allowed classes {list(self.allowed)}: {self.disallowed}"
            )
        if self.hung:
            problems.append(f"{self.hung} answers came later than {self.bound_s:g}s")
        if self.duplicated > self.duplicate_bound:
            problems.append(
                f"{self.duplicated} extra answers/deliveries for a task id, "
                f"more than the {self.duplicate_bound} this fault can explain"
            )
        if self.reprocessed > self.reprocess_bound:
            problems.append(
                f"{self.reprocessed} results came twice or unasked for (late_results), "
                f"more than the {self.reprocess_bound} this fault can explain"
            )
        if self.wrong:
            problems.append(f"{self.wrong} 200s carried the wrong class")
        return problems

    def check(self) -> None:
        """The invariant of every scenario: sent == answered + explicit errors, nothing
        lost (by request and by task id), only the allowed error classes, nothing hung,
        no task id answered or delivered twice beyond the bound, every 200 right."""
        problems = self.violations()
        assert not problems, f"{self.line()}\n  " + "\n  ".join(problems)

    def report(self, **extra: Any) -> None:
        """Print the summary (``pytest -s`` shows it) and record it for the docs."""
        self.notes.update(extra)
        self.notes.setdefault("slowest", slowest(self.records))
        print("\n" + self.line())
        skip = ("label", "notes", "records")
        figures = {k: v for k, v in self.__dict__.items() if k not in skip}
        record(self.label, {**figures, "by_class": self.by_class, **self.notes})

    def line(self) -> str:
        errors = ", ".join(f"{s}: {n}" for s, n in sorted(self.errors.items())) or "none"
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"[{self.label}] sent={self.sent} ok={self.ok} (correct {self.ok_correct}) "
            f"errors={{{errors}}} allowed={list(self.allowed)} lost={self.lost} "
            f"lost_tasks={self.lost_tasks}/{self.accepted_tasks} hung={self.hung} "
            f"duplicated={self.duplicated}/{self.duplicate_bound} "
            f"reprocessed={self.reprocessed} late_results={self.late_results} "
            f"p50={self.p50_ok:.3f}s p99={self.p99_ok:.3f}s max={self.max_latency:.2f}s "
            f"503 p50/p99={self.p50_503:.3f}/{self.p99_503:.3f}s{notes}"
        )


def reconcile(
    records: Sequence[Record],
    *,
    timeout: float,
    allowed: Iterable[int],
    allowed_if: Mapping[int, Callable[[Record], bool]] | None = None,
    label: str = "load",
    margin: float = DEFAULT_MARGIN_S,
    late_results: int = 0,
    deliveries: Mapping[str, int] | None = None,
    ok_status: int | Iterable[int] = (200, 202),
    reprocess_bound: int = 0,
    duplicate_bound: int = 0,
) -> Summary:
    """Summarise ``records`` of a load against an app with ``TIMEOUT=timeout``.

    ``allowed`` are the error classes the scenario's fault may explain (stated per
    scenario; 500 never is); ``allowed_if`` allows a class only for the records its
    predicate picks (e.g. a 504 only for requests in flight at the fault).

    Reconciled per task id (a sync 200's ``id``; a 202's ``task_ids``):

    - ``lost``: requests with no HTTP answer, plus (``lost_tasks``) every task id in
      ``deliveries`` (the accepted webhook tasks, mapped to the POSTs the receiver
      got for them) that was never delivered.
    - ``duplicated``: a task id in more than one answer at the client, plus each POST
      beyond the first for one task id at the receiver; at most ``duplicate_bound``.
    - ``reprocessed`` (work done twice, the second result dropped by the ingress): the
      growth of the ingress's ``late_results`` (results nobody waited for) beyond what
      the requests that gave up explain, i.e. each 504 and each 503 whose publish was not
      confirmed in time (the broker may still have taken it). Delivery is at least once:
      a consumer that dies, or loses its connection, after handing a result back but
      before its ack reached the broker gets that message redelivered. So a scenario
      that kills one may see up to ``reprocess_bound`` of them (what it could hold
      unacked); any other scenario must see none.
    """
    only_if = dict(allowed_if or {})
    always = set(allowed)
    assert not NEVER_ALLOWED & (always | set(only_if)), "a 500 is never an allowed outcome"
    oks = {ok_status} if isinstance(ok_status, int) else set(ok_status)
    bound = timeout + margin
    answered = [r for r in records if r.status is not None]
    ok = [r for r in answered if r.status in oks]
    errors = Counter(r.status for r in answered if r.status not in oks)

    def excused(r: Record) -> bool:
        if r.status in only_if:
            return only_if[r.status](r)
        return r.status in always

    disallowed = Counter(r.status for r in answered if r.status not in oks and not excused(r))
    gave_up = errors.get(504, 0) + sum(
        1 for r in answered if r.status == 503 and "confirm" in (r.detail or "")
    )
    answers = Counter(task for r in ok for task in r.tasks)
    duplicated = sum(n - 1 for n in answers.values() if n > 1)
    lost_tasks = 0
    if deliveries is not None:
        duplicated += sum(n - 1 for n in deliveries.values() if n > 1)
        lost_tasks = sum(1 for n in deliveries.values() if n == 0)
    latencies_503 = [r.elapsed for r in answered if r.status == 503]
    return Summary(
        label=label,
        sent=len(records),
        ok=len(ok),
        ok_correct=sum(1 for r in ok if r.status != 200 or r.correct),
        errors={int(s): n for s, n in errors.items() if s is not None},
        lost=sum(1 for r in records if r.status is None),
        hung=sum(1 for r in answered if r.elapsed > bound),
        duplicated=duplicated,
        reprocessed=max(0, late_results - gave_up),
        reprocess_bound=reprocess_bound,
        max_latency=max((r.elapsed for r in records), default=0.0),
        p50_ok=percentile((r.elapsed for r in ok), 50),
        p99_ok=percentile((r.elapsed for r in ok), 99),
        p50_503=percentile(latencies_503, 50),
        p99_503=percentile(latencies_503, 99),
        bound_s=bound,
        late_results=late_results,
        allowed=tuple(sorted(always | set(only_if))),
        disallowed={int(s): n for s, n in disallowed.items() if s is not None},
        accepted_tasks=len(deliveries or {}),
        lost_tasks=lost_tasks,
        duplicate_bound=duplicate_bound,
        records=records,
    )


def accepted_tasks(records: Iterable[Record]) -> list[str]:
    """Every task id the service accepted with a 202 (each must reach its webhook)."""
    return [task for r in records if r.status == 202 for task in r.task_ids]


def record(label: str, figures: dict[str, Any]) -> None:
    """Append ``figures`` to the file named by FAULTS_REPORT (JSON lines), if set, so the
    table in docs/reliability.md can be refreshed from a run."""
    path = os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "ab") as out:
            line = orjson.dumps(
                {"label": label, **figures}, default=str, option=orjson.OPT_NON_STR_KEYS
            )
            out.write(line + b"\n")


async def stats(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """``GET /v1/stats`` of the (single) ingress replica behind ``url``."""
    response = await client.get(f"{url}/v1/stats", timeout=10)
    response.raise_for_status()
    return response.json()
