"""The consumers' own counters, read from every replica, reconciled with the client view.

A ``DeploymentHandle`` call goes to one replica of Serve's choosing, so asking the
consumer deployment for ``stats()`` would read one replica at random. Instead each
replica actor is looked up by its name (from the GCS actor table, namespace ``serve``)
and called the way Serve's own router calls it: ``handle_request`` with a pickled
``RequestMetadata`` naming the user method
(``ray/serve/_private/request_router/replica_wrapper.py``, ``send_request_python``).
That is Serve's private interface (checked on Ray 2.60): if it changes, this fails
loudly rather than reading one replica and calling it all.
"""

from __future__ import annotations

import pickle
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray

from tests.faults.chaos import replicas

CONSUMER = "BatchingConsumer"
# Outcomes of the request queue: each message taken from it ends in exactly one.
REQUEST_OUTCOMES = (
    "answered",
    "webhook_queued",
    "expired",
    "malformed",
    "poison",
    "unroutable",
    "dead_lettered",
)


def call_replica(actor_name: str, method: str, *args: Any, timeout: float = 10.0) -> Any:
    """Call the user method ``method`` on the one Serve replica actor ``actor_name``."""
    from ray.serve._private.common import RequestMetadata

    actor = ray.get_actor(actor_name, namespace="serve")
    metadata = RequestMetadata(
        request_id=uuid.uuid4().hex, internal_request_id=uuid.uuid4().hex, call_method=method
    )
    return ray.get(actor.handle_request.remote(pickle.dumps(metadata), *args), timeout=timeout)


def replica_stats(app: str, deployment: str = CONSUMER, timeout: float = 10.0) -> dict[str, Any]:
    """``stats()`` of every live replica of ``deployment``, by replica actor name; a
    replica that does not answer within ``timeout`` (stopped, say) maps to None."""
    found: dict[str, Any] = {}
    for replica in replicas(app, deployment):
        try:
            found[replica.name] = call_replica(replica.name, "stats", timeout=timeout)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError, ValueError):
            found[replica.name] = None
    return found


@dataclass
class ConsumerView:
    """What the consumers did between two readings, summed over replicas."""

    counts: Counter[str] = field(default_factory=Counter)
    rework: Counter[str] = field(default_factory=Counter)
    replicas: int = 0
    replaced: bool = False  # a replica of the first reading was gone: its counts are too
    unreadable: int = 0

    @property
    def request_outcomes(self) -> int:
        return sum(self.counts[o] for o in REQUEST_OUTCOMES)

    def figures(self) -> dict[str, Any]:
        return {
            "consumer_counts": dict(sorted(self.counts.items())),
            "consumer_rework": dict(sorted(self.rework.items())),
            "consumer_replicas": self.replicas,
            "consumer_replaced": self.replaced,
        }


def consumer_delta(before: dict[str, Any], after: dict[str, Any]) -> ConsumerView:
    """Counts and rework gained per replica from ``before`` to ``after`` (a replica new
    in ``after`` counts from 0)."""
    view = ConsumerView(replicas=len(after))
    view.replaced = any(name not in after for name in before)
    for name, now in after.items():
        if now is None:
            view.unreadable += 1
            continue
        then = before.get(name) or {}
        for key, into in (("counts", view.counts), ("rework", view.rework)):
            for k, n in (now.get(key) or {}).items():
                into[k] += n - (then.get(key) or {}).get(k, 0)
    return view


def consumer_problems(
    view: ConsumerView,
    *,
    answered_200: int,
    accepted_tasks: int,
    answered_422: int,
    sent_tasks: int,
    rework_bound: int,
    twice_bound: int = 0,
) -> list[str]:
    """The consumers' books against the clients':

    - every 200 was answered by a consumer, every 202 task queued for its webhook,
      every 422 a poison image (unless a replica was replaced, taking its counts along);
    - no task reached more final outcomes than were sent (nothing finished twice);
    - rework (requeued, redelivered, hand-back failed) within the fault's bound.
    """
    problems = []
    if view.unreadable:
        problems.append(f"{view.unreadable} consumer replicas did not answer stats()")
    if not view.replaced:
        if view.counts["answered"] < answered_200:
            problems.append(f"consumers answered {view.counts['answered']} < {answered_200} 200s")
        if view.counts["webhook_queued"] < accepted_tasks:
            problems.append(
                f"consumers queued {view.counts['webhook_queued']} webhooks "
                f"< {accepted_tasks} accepted tasks"
            )
        if view.counts["poison"] < answered_422:
            problems.append(f"consumers counted {view.counts['poison']} poison < {answered_422}")
    # A consumer cut off by a partition cannot know its channel is gone: what it held is
    # answered by it and, redelivered, by another (the scenario's reprocess bound).
    if view.request_outcomes > sent_tasks + twice_bound:
        problems.append(
            f"{view.request_outcomes} request outcomes for {sent_tasks} tasks sent: "
            "a task finished twice"
        )
    rework = sum(view.rework[k] for k in ("requeued", "redelivered", "handback_failed"))
    if rework > rework_bound:
        problems.append(f"rework {dict(view.rework)} beyond the bound {rework_bound}")
    return problems
