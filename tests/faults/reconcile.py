"""What a load's records add up to, per request and per task id, and the report.

:func:`reconcile` turns the records into a :class:`Summary` and checks the invariant of
every fault scenario: each request sent got exactly one HTTP answer (a 200 with the
right class, a 202, or an error of a class the scenario allows), none took longer than
``TIMEOUT`` plus a margin, every accepted webhook task reached the receiver, and no
task id was answered or delivered twice beyond what the fault explains.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.faults.load import DEFAULT_MARGIN_S, Record, percentile, slowest, statuses

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
    # A 500 is never allowed outright; only ``allowed_if`` can excuse one, for the records
    # its predicate picks (Serve's proxy answers 500 for a request whose replica died
    # under it: ray/serve/_private/http_util.py maps RayActorError to 500).
    assert not NEVER_ALLOWED & always, "a 500 is never an allowed outcome for every request"
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
