"""The queue-aware policy: its rule (pure), a fluid model of the queue it steers, and
the policy called the way Serve's controller calls it (Serve's own wrapper and contexts)."""

from __future__ import annotations

import itertools
import math

import pytest
from ray.serve._private.common import DeploymentID
from ray.serve.autoscaling_policy import _apply_app_level_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from rabbit_serve.autoscaling import Knobs, QueueAutoscalingPolicy, Signals, decide, signals_from

KNOBS = Knobs(drain_target_s=30, replica_capacity=40, target_utilization=0.8)


def signals(ready: float | None, held: float = 0, rate: float = 0, n: int = 1, **kw) -> Signals:
    return Signals(ready, held, rate, classifiers=n, consumers=n, **kw)


def test_a_backlog_beyond_one_replica_asks_for_more() -> None:
    # 2400 waiting, 30 s to drain: 80 images/s more than the 32 served; at 40 x 0.8 = 32
    # per replica that is (32 + 80) / 32 = 3.5 -> 4.
    decision = decide(signals(2300, held=100, rate=32), KNOBS)
    assert decision.backlog == 2400
    assert decision.need == pytest.approx(3.5)
    assert (decision.classifiers, decision.consumers) == (4, 4)


def test_the_measured_capacity_wins_over_the_default() -> None:
    decision = decide(signals(0, rate=60, capacities=[100.0, 80.0, 90.0]), KNOBS)
    assert decision.capacity == 90.0
    assert decision.classifiers == 1  # 60 / (90 x 0.8) = 0.83


def test_no_fresh_sample_holds_the_counts() -> None:
    decision = decide(signals(None, held=50, rate=10, n=3), KNOBS)
    assert (decision.classifiers, decision.consumers) == (3, 3)
    assert "no fresh queue sample" in decision.reason


def test_scale_down_waits_for_the_margin() -> None:
    # From 3 replicas it goes down to 2 only once need x 1.2 fits in 2.
    steady = decide(signals(0, rate=0.9 * 2 * 32, n=3), KNOBS)  # need 1.8, x1.2 = 2.16
    assert steady.classifiers == 3 and steady.reason == "steady"
    down = decide(signals(0, rate=0.8 * 2 * 32, n=3), KNOBS)  # need 1.6, x1.2 = 1.92
    assert down.classifiers == 2


def test_an_idle_queue_goes_to_zero_classifiers_but_keeps_a_consumer() -> None:
    decision = decide(signals(0, n=2), KNOBS)
    assert decision.classifiers == 0  # Serve's min_replicas bounds it
    assert decision.consumers == 1


def test_work_waiting_never_gets_zero_replicas() -> None:
    assert decide(signals(1, n=0), KNOBS).classifiers == 1


def test_consumers_follow_their_ratio() -> None:
    knobs = Knobs(consumers_per_classifier=0.5)
    assert decide(signals(4000, n=1), knobs).consumers == math.ceil(
        decide(signals(4000, n=1), knobs).classifiers * 0.5
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"drain_target_s": 0},
        {"replica_capacity": -1},
        {"target_utilization": 1.5},
        {"consumers_per_classifier": 0},
        {"scale_down_margin": -0.1},
    ],
)
def test_knobs_refuse_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        Knobs(**bad)


def test_signals_combine_replicas() -> None:
    combined = signals_from(
        {
            "queue_ready": {"a": 100.0, "b": 120.0},
            "held": {"a": 24.0, "b": 20.0},
            "classified_per_s": {"a": 10.0, "b": 12.0},
        },
        {"images_per_busy_s": {"c": 50.0, "d": 0.0}},
        classifiers=2,
        consumers=2,
    )
    assert combined.ready == 120.0  # every consumer samples the same queue: the max
    assert combined.held == 44.0 and combined.classified_per_s == 22.0
    assert combined.capacities == [50.0]  # a replica that measured nothing is left out


def test_signals_without_a_sample_say_so() -> None:
    assert signals_from({"held": {"a": 1.0}}, {}, 1, 1).ready is None


def simulate(arrivals: list[float], capacity: float = 40.0, start_delay: int = 5) -> list[int]:
    """A fluid model: each second ``arrivals[t]`` images join the queue, the replicas
    serve ``capacity`` each; a replica asked for serves after ``start_delay`` s. Returns
    the target count per second."""
    queue, target, live = 0.0, 1, [1] * start_delay
    history = []
    for arriving in arrivals:
        serving = live[-start_delay]
        served = min(queue + arriving, serving * capacity)
        queue += arriving - served
        decision = decide(
            Signals(queue, 0.0, served, [capacity], classifiers=target, consumers=target),
            KNOBS,
        )
        target = max(1, min(decision.classifiers, 8))
        live.append(target)
        history.append(target)
    return history


def test_a_step_load_scales_up_drains_and_comes_back_down_without_flapping() -> None:
    history = simulate([5.0] * 30 + [150.0] * 60 + [5.0] * 120)
    assert history[29] == 1
    assert max(history[30:90]) >= 4  # 150/s needs 150 / 32 = 4.7 replicas
    steady = history[60:90]
    assert max(steady) - min(steady) <= 1
    changes = sum(1 for a, b in itertools.pairwise(steady) if a != b)
    assert changes <= 2
    assert history[-1] == 1


def test_a_noisy_steady_load_does_not_flap() -> None:
    import random

    rng = random.Random(7)
    history = simulate([64.0 * (1 + rng.uniform(-0.1, 0.1)) for _ in range(300)])
    late = history[60:]
    assert sum(1 for a, b in itertools.pairwise(late) if a != b) <= 2


def context(
    name: str, replicas: int, metrics: dict, config: AutoscalingConfig
) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=DeploymentID(name=name, app_name="app"),
        deployment_name=name,
        app_name="app",
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=[],
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config,
    )


def test_serve_s_wrapper_bounds_and_delays_what_the_policy_asks() -> None:
    config = AutoscalingConfig(
        min_replicas=1, max_replicas=3, upscale_delay_s=0, downscale_delay_s=60
    )
    policy = _apply_app_level_autoscaling_config(QueueAutoscalingPolicy(drain_target_s=10))
    busy = {"queue_ready": {"r1": 5000.0}, "held": {"r1": 24.0}, "classified_per_s": {"r1": 30.0}}
    contexts = {
        c.deployment_id: c
        for c in (
            context("Classifier", 1, {"images_per_busy_s": {"c1": 40.0}}, config),
            context("BatchingConsumer", 1, busy, config),
            context("Ingress", 2, {}, AutoscalingConfig(min_replicas=2, max_replicas=2)),
        )
    }
    decisions, _ = policy(contexts)
    by_name = {dep.name: n for dep, n in decisions.items()}
    # 5024 / 10 s + 30 = 532 images/s = 17 replicas: the classifier's max_replicas 3, and
    # the consumers follow those 3; Ingress keeps Serve's rule (Serve bounds it after).
    assert by_name == {"Classifier": 3, "BatchingConsumer": 3, "Ingress": 2}

    idle = {"queue_ready": {"r1": 0.0}, "held": {"r1": 0.0}, "classified_per_s": {"r1": 0.0}}
    contexts = {
        c.deployment_id: c
        for c in (
            context("Classifier", 3, {}, config),
            context("BatchingConsumer", 3, idle, config),
        )
    }
    decisions, _ = policy(contexts)
    # Wanted down, but downscale_delay_s has not passed: Serve holds the count.
    assert {dep.name: n for dep, n in decisions.items()} == {"Classifier": 3, "BatchingConsumer": 3}


def test_without_the_consumer_deployment_serve_s_own_rule_applies() -> None:
    config = AutoscalingConfig(min_replicas=1, max_replicas=4)
    ctx = context("Classifier", 2, {}, config)
    decisions, _ = QueueAutoscalingPolicy()({ctx.deployment_id: ctx})
    assert decisions[ctx.deployment_id] == pytest.approx(0.0)  # no requests: Serve's rule


def test_consumers_follow_the_bounded_classifier_count() -> None:
    decision = decide(signals(100_000), KNOBS, bounds=(1, 3))
    assert (decision.classifiers, decision.consumers) == (3, 3)
    assert decide(signals(0, n=2), KNOBS, bounds=(1, 3)).classifiers == 1
