"""The classifier's memory guard decides without exiting: the exit and RSS reader are fakes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from deployments.memory_guard import MIB, MemoryGuard, rss_bytes, start_memory_guard


class Exits:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def test_under_or_at_the_limit_nothing_happens():
    exits = Exits()
    guard = MemoryGuard(100 * MIB, read_rss=lambda: 100 * MIB, exit=exits)
    assert guard.check() is False and exits.codes == []


def test_past_the_limit_it_exits_with_1_and_says_why(caplog):
    exits = Exits()
    guard = MemoryGuard(100 * MIB, read_rss=lambda: 100 * MIB + 1, exit=exits)
    assert guard.check() is True
    assert exits.codes == [1]
    assert "past CLASSIFIER_MAX_MEMORY_MB (100 MiB)" in caplog.text


def test_an_unreadable_rss_never_exits():
    exits = Exits()
    assert MemoryGuard(1, read_rss=lambda: None, exit=exits).check() is False
    assert exits.codes == []


def test_the_watch_thread_samples_until_memory_grows_past_the_limit():
    samples = iter([10 * MIB, 20 * MIB, 30 * MIB, 200 * MIB])
    exits = Exits()
    guard = MemoryGuard(
        100 * MIB, read_rss=lambda: next(samples, 200 * MIB), exit=exits, interval=0.005
    ).start()
    assert exits.called.wait(2.0)
    time.sleep(0.05)
    assert exits.codes == [1]  # the thread stops after deciding
    guard.stop()


def test_a_stopped_guard_samples_no_more():
    reads: list[int] = []
    guard = MemoryGuard(MIB, read_rss=lambda: reads.append(1) or 0, interval=0.005).start()
    time.sleep(0.03)
    guard.stop()
    time.sleep(0.02)
    seen = len(reads)
    time.sleep(0.03)
    assert seen > 0 and len(reads) == seen


def test_rss_is_read_from_proc():
    rss = rss_bytes()
    if not os.path.exists("/proc/self/statm"):
        assert rss is None
        return
    assert rss is not None and 10 * MIB < rss < 100_000 * MIB
    before = rss
    block = bytearray(64 * MIB)
    block[::4096] = b"\x01" * (64 * MIB // 4096)  # every page touched: resident
    after = rss_bytes()
    assert after is not None and after - before > 48 * MIB
    del block


def test_zero_means_off():
    assert start_memory_guard(0) is None
    with pytest.raises(ValueError):
        MemoryGuard(0)
