"""The sliding-window meters behind the autoscaling signals, on a clock of the test's own."""

from __future__ import annotations

import pytest

from rabbit_serve.meters import BusyMeter, RateWindow


def test_a_steady_rate_reads_as_itself() -> None:
    meter = RateWindow(10.0)
    for i in range(200):  # 20 events/s for 10 s
        meter.add(1, 100.0 + i * 0.05)
    assert meter.rate(110.0) == pytest.approx(20.0, rel=0.06)


def test_a_young_meter_divides_by_its_age_not_its_window() -> None:
    meter = RateWindow(10.0)
    for i in range(40):  # 20 events/s for 2 s
        meter.add(1, 100.0 + i * 0.05)
    assert meter.rate(102.0) == pytest.approx(20.0, rel=0.06)


def test_old_events_leave_the_window() -> None:
    meter = RateWindow(10.0)
    meter.add(100, 100.0)
    assert meter.rate(105.0) > 0
    assert meter.rate(112.0) == 0.0


def test_rate_window_rejects_a_window_of_nothing() -> None:
    with pytest.raises(ValueError):
        RateWindow(0)


def test_overlapping_calls_count_their_wall_time_once() -> None:
    meter = BusyMeter(30.0)
    # Two 1-second calls side by side, 8 items each: 16 items in 1 busy second.
    meter.start(100.0)
    meter.start(100.0)
    meter.finish(8, 101.0)
    meter.finish(8, 101.0)
    assert meter.busy_seconds(101.0) == pytest.approx(1.0)
    assert meter.capacity(101.0) == pytest.approx(16.0)


def test_idle_time_is_not_busy_time() -> None:
    meter = BusyMeter(30.0)
    for second in range(0, 20, 4):  # 1 s of work every 4 s
        meter.start(100.0 + second)
        meter.finish(10, 101.0 + second)
    now = 120.0
    assert meter.capacity(now) == pytest.approx(10.0)
    assert meter.busy_fraction(now) == pytest.approx(5 / 20)


def test_a_replica_that_never_goes_idle_is_measured_over_the_window() -> None:
    meter = BusyMeter(10.0)
    now = 100.0
    meter.start(now)  # one long-running call keeps it busy throughout
    for _ in range(120):  # and 4 items finish every 0.5 s: 8 items/s
        meter.start(now)
        now += 0.5
        meter.finish(4, now)
    assert meter.busy_fraction(now) == pytest.approx(1.0)
    assert meter.capacity(now) == pytest.approx(8.0, rel=0.06)


def test_too_little_work_says_nothing_about_capacity() -> None:
    meter = BusyMeter(30.0)
    meter.start(100.0)
    meter.finish(1, 100.2)
    assert meter.capacity(100.2) is None
    assert meter.capacity(100.2, min_busy_s=0.1) == pytest.approx(5.0)


def test_finish_without_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        BusyMeter().finish(1, 1.0)
