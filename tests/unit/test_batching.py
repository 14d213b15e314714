import pytest

from consumer.batching import Batcher


def test_size_trigger_dispatches_at_once():
    b = Batcher[int](max_size=3, timeout=1.0, max_in_flight=2, dispatch_when_idle=False)
    assert b.add(1, now=0.0).batches == []
    assert b.add(2, now=0.1).batches == []
    step = b.add(3, now=0.2)
    assert step.batches == [[1, 2, 3]]
    assert step.wake_at is None and b.waiting == 0 and b.in_flight == 1


def test_timeout_is_measured_from_the_first_item_of_that_batch():
    b = Batcher[str](max_size=10, timeout=0.5, max_in_flight=2, dispatch_when_idle=False)
    assert b.add("a", now=100.0).wake_at == pytest.approx(100.5)
    # Later items do not push the deadline back.
    assert b.add("b", now=100.4).wake_at == pytest.approx(100.5)
    assert b.on_timer(now=100.5).batches == [["a", "b"]]
    # The next batch gets its own deadline from its own first item.
    assert b.add("c", now=200.0).wake_at == pytest.approx(200.5)


def test_lone_item_goes_out_when_its_timer_fires():
    b = Batcher[str](max_size=32, timeout=0.01, dispatch_when_idle=False)
    step = b.add("only", now=0.0)
    assert step.batches == [] and step.wake_at == pytest.approx(0.01)
    assert b.on_timer(now=0.01).batches == [["only"]]


def test_early_timer_changes_nothing_and_asks_to_be_rearmed():
    b = Batcher[str](max_size=4, timeout=1.0, dispatch_when_idle=False)
    b.add("x", now=0.0)
    step = b.on_timer(now=0.999)
    assert step.batches == [] and step.wake_at == pytest.approx(1.0)


def test_stale_timer_after_size_dispatch_does_nothing():
    b = Batcher[int](max_size=2, timeout=1.0, max_in_flight=4, dispatch_when_idle=False)
    first_wake = b.add(1, now=0.0).wake_at
    assert b.add(2, now=0.1).batches == [[1, 2]]
    # A new batch starts before the first batch's timer fires...
    second_wake = b.add(3, now=0.9).wake_at
    assert second_wake == pytest.approx(1.9)
    # ...and that stale timer must not release the new batch early.
    assert first_wake is not None
    step = b.on_timer(now=first_wake)
    assert step.batches == [] and step.wake_at == pytest.approx(1.9)
    assert b.on_timer(now=1.9).batches == [[3]]


def test_no_new_batch_while_every_slot_is_busy_and_batches_grow_meanwhile():
    b = Batcher[int](max_size=4, timeout=0.01, max_in_flight=1, dispatch_when_idle=False)
    b.add(0, now=0.0)
    assert b.on_timer(now=0.01).batches == [[0]]
    # The only slot is busy: items collect past their timeout, no timer is needed.
    for i in range(1, 4):
        step = b.add(i, now=0.02 * i)
        assert step.batches == [] and step.wake_at is None
    # When the slot frees, the overdue batch leaves at once, bigger than it would have been.
    assert b.on_done(now=1.0).batches == [[1, 2, 3]]


def test_full_batches_wait_for_a_slot_and_keep_their_order():
    b = Batcher[int](max_size=2, timeout=5.0, max_in_flight=1, dispatch_when_idle=False)
    dispatched = []
    for i in range(6):
        dispatched += b.add(i, now=0.0).batches
    assert dispatched == [[0, 1]] and b.waiting == 4
    assert b.on_done(now=0.1).batches == [[2, 3]]
    assert b.on_done(now=0.2).batches == [[4, 5]]
    assert b.on_done(now=0.3).batches == [] and b.in_flight == 0


def test_several_batches_in_flight():
    b = Batcher[int](max_size=2, timeout=5.0, max_in_flight=3, dispatch_when_idle=False)
    out = []
    for i in range(8):
        out += b.add(i, now=0.0).batches
    assert out == [[0, 1], [2, 3], [4, 5]] and b.in_flight == 3 and b.waiting == 2


def test_max_size_one_never_waits():
    b = Batcher[int](max_size=1, timeout=5.0, max_in_flight=8)
    for i in range(3):
        assert b.add(i, now=float(i)).batches == [[i]]


def test_zero_timeout_dispatches_immediately_when_a_slot_is_free():
    b = Batcher[int](max_size=8, timeout=0.0)
    assert b.add(7, now=3.0).batches == [[7]]


def test_drain_and_on_done_misuse():
    b = Batcher[int](max_size=4, timeout=1.0, dispatch_when_idle=False)
    b.add(1, now=0.0)
    assert b.drain() == [1] and b.drain() == []
    with pytest.raises(RuntimeError):
        b.on_done(now=0.0)


@pytest.mark.parametrize("max_size,timeout,in_flight", [(0, 1.0, 1), (1, -0.1, 1), (1, 1.0, 0)])
def test_invalid_parameters_are_refused(max_size, timeout, in_flight):
    with pytest.raises(ValueError):
        Batcher[int](max_size=max_size, timeout=timeout, max_in_flight=in_flight)


def test_lone_item_at_an_idle_classifier_goes_out_at_once():
    b = Batcher[str](max_size=32, timeout=0.5, max_in_flight=2)  # dispatch_when_idle default
    step = b.add("alone", now=10.0)
    assert step.batches == [["alone"]] and step.wake_at is None


def test_when_busy_the_size_and_timeout_rule_still_decides():
    b = Batcher[int](max_size=4, timeout=0.5, max_in_flight=2)
    assert b.add(0, now=0.0).batches == [[0]]  # idle: at once
    # One batch in flight: the next items wait for size or their own timeout.
    assert b.add(1, now=0.1).batches == [] and b.add(2, now=0.2).batches == []
    assert b.on_timer(now=0.6).batches == [[1, 2]]
    # Both slots busy now; when one frees, the overdue head leaves.
    b.add(3, now=0.7)
    assert b.on_done(now=1.5).batches == [[3]]


def weighed(max_size: int = 8, max_weight: int = 100, **kwargs: object) -> Batcher[int]:
    """Items are their own weight (say, pixels)."""
    return Batcher[int](
        max_size=max_size,
        timeout=1.0,
        max_in_flight=4,
        dispatch_when_idle=False,
        weight=lambda item: item,
        max_weight=max_weight,
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_item_that_would_pass_the_weight_budget_closes_the_batch_early():
    b = weighed()
    assert b.add(40, now=0.0).batches == []
    assert b.add(50, now=0.1).batches == []  # 90: still open
    step = b.add(30, now=0.2)  # 120 would pass 100: the first two are a complete batch
    assert step.batches == [[40, 50]] and b.waiting == 1
    assert step.wake_at == pytest.approx(1.2)  # the next batch's clock is its own item's


def test_the_budget_may_be_met_exactly():
    b = weighed()
    b.add(60, now=0.0)
    assert b.add(40, now=0.0).batches == []  # exactly 100 fits; the batch stays open
    assert b.add(1, now=0.0).batches == [[60, 40]]


def test_an_item_over_the_budget_on_its_own_still_goes_alone():
    b = weighed()
    b.add(10, now=0.0)
    assert b.add(500, now=0.0).batches == [[10]]
    step = b.add(5, now=0.0)
    assert step.batches == [[500]] and b.waiting == 1


def test_a_burst_of_heavy_items_leaves_in_several_batches_when_a_slot_frees():
    b = Batcher[int](max_size=32, timeout=0.5, max_in_flight=1, weight=lambda i: i, max_weight=100)
    assert b.add(1, now=0.0).batches == [[1]]  # idle: out at once
    for _ in range(5):
        assert b.add(40, now=0.1).batches == []  # the one slot is busy
    # Slot free: only what fits in the budget leaves; the rest waits for the next slot.
    assert b.on_done(now=0.2).batches == [[40, 40]]
    assert b.on_done(now=0.3).batches == [[40, 40]]
    assert b.on_done(now=0.4).batches == [[40]]


def test_without_a_weight_the_budget_is_off():
    b = Batcher[int](max_size=3, timeout=1.0, dispatch_when_idle=False, max_weight=1)
    assert b.add(10**9, now=0.0).batches == []
    b.add(10**9, now=0.0)
    assert b.add(10**9, now=0.0).batches == [[10**9] * 3]
    with pytest.raises(ValueError):
        Batcher[int](max_size=3, timeout=1.0, max_weight=-1)


def test_the_weight_is_counted_once_per_item():
    seen: list[int] = []
    b = Batcher[int](
        max_size=4,
        timeout=1.0,
        dispatch_when_idle=False,
        weight=lambda i: seen.append(i) or i,
        max_weight=1000,
    )
    for i in range(4):
        b.on_timer(now=0.0)
        b.add(i, now=0.0)
    assert seen == [0, 1, 2, 3]
