"""The replica's limits as numbers: token buckets, open requests per key, the byte budget."""

from __future__ import annotations

import pytest

from ingress.limits import ByteBudget, KeyLimits, Refused, TokenBucket, retry_after


def test_retry_after_rounds_up_and_is_at_least_one_second():
    assert [retry_after(s) for s in (0.0, 0.01, 0.99, 1.0, 1.01, 7.5)] == [1, 1, 1, 1, 2, 8]


def test_a_bucket_starts_full_and_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(rate=10, burst=5)
    assert bucket.take(5, now=0.0) == 0
    assert bucket.take(1, now=0.0) == pytest.approx(0.1)  # nothing taken
    assert bucket.take(1, now=0.1) == 0
    assert bucket.wait(3, now=0.1) == pytest.approx(0.3)
    assert bucket.full(now=100.0) and bucket.tokens == 5  # never more than the burst


def test_a_cost_above_the_burst_needs_a_full_bucket_and_leaves_a_debt():
    # Else a request of more images than the burst could never pass.
    bucket = TokenBucket(rate=2, burst=4)
    assert bucket.take(10, now=0.0) == 0
    assert bucket.tokens == -6
    # The debt is paid at the rate: the long-run rate holds.
    assert bucket.wait(1, now=0.0) == pytest.approx(3.5)
    assert bucket.wait(1, now=3.5) == 0


def refused(fn, *args) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args)
    return info.value


def test_a_request_of_n_images_costs_n_and_the_429_says_when_to_retry():
    limits = KeyLimits(rate=2, burst=4, max_concurrent=0)
    limits.enter("a", 0.0)
    limits.charge("a", 4, 0.0)
    error = refused(limits.enter, "a", 0.0)
    assert error.status == 429 and error.retry_after == 1  # 0.5 s, rounded up
    assert "KEY_RATE_LIMIT" in error.message and "2 images/s" in error.message
    limits.enter("a", 1.0)  # two tokens back
    error = refused(limits.charge, "a", 3, 1.0)
    assert error.retry_after == 1 and "retry in 1 s" in error.message
    limits.enter("a", 1.0)
    error = refused(limits.charge, "a", 4, 1.0)  # needs 2 more at 2/s
    assert error.retry_after == 1
    limits.charge("a", 2, 1.0)
    assert refused(limits.enter, "a", 1.0).retry_after == 1
    assert refused(limits.charge, "a", 4, 1.0).retry_after == 2


def test_open_requests_per_key_are_capped_and_freed_when_they_finish():
    limits = KeyLimits(rate=0, burst=1, max_concurrent=2)
    limits.enter("a", 0.0)
    limits.enter("a", 0.0)
    error = refused(limits.enter, "a", 0.0)
    assert error.status == 429 and error.retry_after == 1
    assert "KEY_MAX_CONCURRENT" in error.message
    limits.leave("a", 0.0)
    limits.enter("a", 0.0)


def test_one_key_at_its_limits_takes_nothing_from_another():
    limits = KeyLimits(rate=1, burst=2, max_concurrent=1)
    limits.enter("greedy", 0.0)
    limits.charge("greedy", 2, 0.0)
    assert refused(limits.enter, "greedy", 0.0).status == 429  # both limits reached
    limits.enter("other", 0.0)
    limits.charge("other", 2, 0.0)


def test_a_limit_of_zero_is_off():
    limits = KeyLimits(rate=0, burst=1, max_concurrent=0)
    for _ in range(1000):
        limits.enter("a", 0.0)
        limits.charge("a", 32, 0.0)


def test_state_is_kept_only_for_keys_in_use():
    limits = KeyLimits(rate=10, burst=10, max_concurrent=5)
    for i in range(100):
        limits.enter(f"k{i}", 0.0)
        limits.charge(f"k{i}", 1, 0.0)
        limits.leave(f"k{i}", 0.0)
    assert len(limits) == 100  # their buckets are not full yet
    limits.enter("k0", 1.0)
    limits.leave("k0", 1.0)
    assert len(limits) == 99
    limits.leave("never-seen", 1.0)  # nothing to forget


def test_the_byte_budget_reserves_grows_and_releases():
    budget = ByteBudget(100)
    first, second = budget.hold(), budget.hold()
    first.cover(60)
    first.cover(40)  # already covered: nothing more taken
    assert budget.used == 60
    error = refused(second.cover, 41)
    assert error.status == 503 and error.retry_after == 1
    assert "MAX_INFLIGHT_BYTES (100)" in error.message and budget.used == 60
    second.cover(10)
    second.cover(40)  # grows as a chunked body arrives
    assert budget.used == 100
    with pytest.raises(Refused):
        second.cover(41)
    first.release()
    first.release()  # twice is once
    assert budget.used == 40
    second.release()
    assert budget.used == 0
