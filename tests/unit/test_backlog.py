"""What a consumer reports of the backlog: the last queue sample while fresh, what it holds."""

from __future__ import annotations

import time

from consumer.backlog import STALE_AFTER_INTERVALS, Backlog, QueueSample


def test_a_fresh_sample_is_reported_with_what_the_replica_holds() -> None:
    backlog = Backlog("q", 2.0, held=lambda: 24)
    backlog.sample = QueueSample(ready=500, consumers=2, at=time.monotonic())
    backlog.classified(8)
    stats = backlog.autoscaling_stats()
    assert stats["queue_ready"] == 500.0
    assert stats["held"] == 24.0
    assert stats["classified_per_s"] > 0


def test_a_stale_sample_is_left_out() -> None:
    backlog = Backlog("q", 2.0, held=lambda: 0)
    stale_at = time.monotonic() - STALE_AFTER_INTERVALS * 2.0 - 1
    backlog.sample = QueueSample(ready=500, consumers=2, at=stale_at)
    assert "queue_ready" not in backlog.autoscaling_stats()


def test_before_the_first_sample_only_the_replica_s_own_counts() -> None:
    stats = Backlog("q", 2.0, held=lambda: 3).autoscaling_stats()
    assert stats == {"held": 3.0, "classified_per_s": 0.0}
