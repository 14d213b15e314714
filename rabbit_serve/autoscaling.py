"""Queue-aware autoscaling: the classifiers and consumers sized together from the backlog.

Serve's own policy scales a deployment by its ongoing requests, and the classifier's never
exceed ``consumers x MAX_BATCHES_IN_FLIGHT`` however deep the RabbitMQ backlog grows: it
cannot see the queue. This policy can. It is an *application-level* policy (the Serve
config's ``applications[].autoscaling_policy``), because one decision needs signals from
two deployments: the backlog is measured by the consumers, the capacity by the classifiers,
and the consumers must be kept in step with the classifiers they feed. A deployment-level
policy sees only its own deployment's metrics. (Ray Serve 2.60's schema calls the
application-level option "under development"; its controller implements it,
``ApplicationAutoscalingState`` in ``serve/_private/autoscaling_state.py``, and the tests
run it on a real cluster.)

The signals arrive through ``record_autoscaling_stats`` on each replica, pushed to the
controller every ``metrics_interval_s``; nothing here talks to the broker, so the
controller's loop never waits on it:

- consumers: ``queue_ready`` (a passive declare every ``QUEUE_SAMPLE_INTERVAL_S``; left out
  when stale), ``held`` (unacked deliveries it holds), ``classified_per_s``;
- classifiers: ``images_per_busy_s`` (what a replica does per second while busy) and
  ``busy_fraction``.

The rule (:func:`decide`, pure): the work asked for is the current classify rate plus the
backlog spread over ``drain_target_s``; that divided by a replica's capacity at
``target_utilization`` is the replicas needed, rounded up. It scales down only once the
need, with ``scale_down_margin`` added, fits in fewer replicas, so a load near a boundary
does not flip the count; Serve then holds a scale-down for the deployment's
``downscale_delay_s`` of consecutive decisions and applies ``min_replicas``/``max_replicas``.
Consumers follow at ``consumers_per_classifier``, never below one: they are the signal.
Deployments other than those two (an autoscaled Ingress) keep Serve's default policy.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Knobs:
    """The policy's settings: ``policy_kwargs`` in the Serve config."""

    drain_target_s: float = 30.0  # a backlog should be gone in this many seconds
    replica_capacity: float = 40.0  # images/s per classifier replica until one is measured
    target_utilization: float = 0.8  # plan replicas to run this busy, not flat out
    consumers_per_classifier: float = 1.0
    scale_down_margin: float = 0.2  # scale down only when need x (1 + margin) fits in fewer
    classifier: str = "Classifier"  # deployment names
    consumer: str = "BatchingConsumer"

    def __post_init__(self) -> None:
        if self.drain_target_s <= 0 or self.replica_capacity <= 0:
            raise ValueError("drain_target_s and replica_capacity must be positive")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")
        if self.consumers_per_classifier <= 0 or self.scale_down_margin < 0:
            raise ValueError("consumers_per_classifier > 0 and scale_down_margin >= 0")


@dataclass(frozen=True)
class Signals:
    """What the replicas last reported, already combined across replicas."""

    ready: float | None  # max over consumers of the queue's ready count; None: no sample
    held: float  # sum over consumers: the queue's unacked messages
    classified_per_s: float  # sum over consumers
    capacities: list[float] = field(default_factory=list)  # per classifier replica
    classifiers: int = 0  # target replica counts now
    consumers: int = 0


@dataclass(frozen=True)
class Decision:
    classifiers: int
    consumers: int
    backlog: float  # messages: ready + unacked
    capacity: float  # images/s one classifier replica is taken to do
    demand: float  # images/s asked for: the classify rate + the backlog's share
    need: float  # classifier replicas' worth of work, unrounded
    reason: str


def decide(signals: Signals, knobs: Knobs, bounds: tuple[int, int] | None = None) -> Decision:
    """The replica counts for ``signals``, before Serve's delays. ``bounds``: the
    classifier's ``(min_replicas, max_replicas)``, applied before the consumers are
    derived, so they follow the classifiers that will run, not the ones wanted."""
    capacity = statistics.median(signals.capacities) if signals.capacities else 0.0
    if capacity <= 0:
        capacity = knobs.replica_capacity
    current = signals.classifiers
    if signals.ready is None:
        # No fresh sample (the broker is out of reach): hold, rather than scale on a guess.
        return Decision(
            current,
            signals.consumers,
            math.nan,
            capacity,
            math.nan,
            math.nan,
            "no fresh queue sample: holding",
        )
    backlog = signals.ready + signals.held
    demand = signals.classified_per_s + backlog / knobs.drain_target_s
    need = demand / (capacity * knobs.target_utilization)
    wanted = math.ceil(need - 1e-9)
    if wanted > current:
        target, reason = wanted, "backlog above what the replicas drain in time"
    elif math.ceil(need * (1 + knobs.scale_down_margin) - 1e-9) < current:
        target, reason = math.ceil(need * (1 + knobs.scale_down_margin) - 1e-9), "idle capacity"
    else:
        target, reason = current, "steady"
    if backlog > 0:
        target = max(target, 1)  # work waits: never zero replicas for it
    if bounds is not None:
        target = min(max(target, bounds[0]), bounds[1])
    consumers = max(1, math.ceil(target * knobs.consumers_per_classifier - 1e-9))
    return Decision(target, consumers, backlog, capacity, demand, need, reason)


def signals_from(
    consumer_metrics: dict[str, dict[Any, float]],
    classifier_metrics: dict[str, dict[Any, float]],
    classifiers: int,
    consumers: int,
) -> Signals:
    """Combine per-replica reports (Serve's ``aggregated_metrics``: metric -> replica ->
    value over the look-back period) into :class:`Signals`."""
    ready = consumer_metrics.get("queue_ready") or {}
    capacities = classifier_metrics.get("images_per_busy_s") or {}
    return Signals(
        ready=max(ready.values()) if ready else None,
        held=sum((consumer_metrics.get("held") or {}).values()),
        classified_per_s=sum((consumer_metrics.get("classified_per_s") or {}).values()),
        capacities=[c for c in capacities.values() if c > 0],
        classifiers=classifiers,
        consumers=consumers,
    )


class QueueAutoscalingPolicy:
    """Serve's application-level policy: ``policy_function:
    rabbit_serve.autoscaling:QueueAutoscalingPolicy``, ``policy_kwargs`` the :class:`Knobs`.

    Serve instantiates it once in its controller and calls it every control-loop tick with
    each autoscaled deployment's context; it returns the replica counts Serve then delays
    and bounds per deployment.
    """

    def __init__(self, **knobs: Any) -> None:
        self.knobs = Knobs(**knobs)
        self._metrics: _PolicyMetrics | None = None
        self._last: Decision | None = None

    def __call__(self, contexts: dict[Any, Any]) -> tuple[dict[Any, float], dict[Any, dict]]:
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        knobs = self.knobs
        by_name = {ctx.deployment_name: (dep_id, ctx) for dep_id, ctx in contexts.items()}
        decisions: dict[Any, float] = {}
        for name, (dep_id, ctx) in by_name.items():
            if name not in (knobs.classifier, knobs.consumer):
                decisions[dep_id] = replica_queue_length_autoscaling_policy(ctx)[0]
        classifier, consumer = by_name.get(knobs.classifier), by_name.get(knobs.consumer)
        if classifier is None or consumer is None:
            # Without both there is no backlog to size by: Serve's own rule for what is there.
            for dep_id, ctx in (pair for pair in (classifier, consumer) if pair is not None):
                decisions[dep_id] = replica_queue_length_autoscaling_policy(ctx)[0]
            return decisions, {}
        decision = decide(
            signals_from(
                consumer[1].aggregated_metrics or {},
                classifier[1].aggregated_metrics or {},
                classifier[1].target_num_replicas,
                consumer[1].target_num_replicas,
            ),
            knobs,
            (
                classifier[1].capacity_adjusted_min_replicas,
                classifier[1].capacity_adjusted_max_replicas,
            ),
        )
        decisions[classifier[0]] = decision.classifiers
        decisions[consumer[0]] = decision.consumers
        self._report(decision, classifier[1].app_name)
        return decisions, {}

    def _report(self, decision: Decision, app: str | None) -> None:
        last, self._last = self._last, decision
        if last is None or (last.classifiers, last.consumers) != (
            decision.classifiers,
            decision.consumers,
        ):
            logger.info("queue autoscaling for %s: %s", app, asdict(decision))
        if self._metrics is None:
            self._metrics = _PolicyMetrics()
        self._metrics.record(decision, app or "", self.knobs)


class _PolicyMetrics:
    """The policy's inputs and decisions as Ray metrics, from Serve's controller."""

    def __init__(self) -> None:
        from ray.util import metrics

        keys = ("application",)
        self.backlog = metrics.Gauge(
            "rabbit_serve_autoscale_backlog",
            description="Messages the queue-aware policy saw waiting: ready + unacked.",
            tag_keys=keys,
        )
        self.demand = metrics.Gauge(
            "rabbit_serve_autoscale_demand",
            description="Images/s the policy plans for: classify rate + backlog share.",
            tag_keys=keys,
        )
        self.capacity = metrics.Gauge(
            "rabbit_serve_autoscale_replica_capacity",
            description="Images/s one classifier replica is taken to do (measured busy rate).",
            tag_keys=keys,
        )
        self.decision = metrics.Gauge(
            "rabbit_serve_autoscale_decision",
            description="Replicas the policy asks for, before Serve's delays and bounds.",
            tag_keys=("application", "deployment"),
        )

    def record(self, decision: Decision, app: str, knobs: Knobs) -> None:
        tags = {"application": app}
        if not math.isnan(decision.backlog):
            self.backlog.set(decision.backlog, tags=tags)
            self.demand.set(decision.demand, tags=tags)
        self.capacity.set(decision.capacity, tags=tags)
        for name, count in (
            (knobs.classifier, decision.classifiers),
            (knobs.consumer, decision.consumers),
        ):
            self.decision.set(count, tags={"application": app, "deployment": name})
