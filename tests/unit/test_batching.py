import pytest

from consumer.batching import BatchAccumulator


def test_size_trigger_returns_full_batch_at_once():
    acc = BatchAccumulator[int](max_size=3, timeout=1.0)
    assert acc.add(1, now=0.0)[1] is None
    assert acc.add(2, now=0.1)[1] is None
    opened, batch = acc.add(3, now=0.2)
    assert batch == [1, 2, 3]
    assert opened is None
    assert len(acc) == 0
    assert acc.deadline is None


def test_timeout_is_measured_from_the_first_item_of_that_batch():
    acc = BatchAccumulator[str](max_size=10, timeout=0.5)
    opened, _ = acc.add("a", now=100.0)
    assert opened is not None and opened.deadline == pytest.approx(100.5)
    # Later items do not push the deadline back.
    assert acc.add("b", now=100.4) == (None, None)
    assert acc.deadline == pytest.approx(100.5)
    assert acc.on_timer(opened.generation) == ["a", "b"]
    # The next batch gets its own deadline from its own first item.
    opened2, _ = acc.add("c", now=200.0)
    assert opened2 is not None and opened2.deadline == pytest.approx(200.5)
    assert opened2.generation != opened.generation


def test_lone_item_is_released_by_its_timer():
    acc = BatchAccumulator[str](max_size=32, timeout=0.01)
    opened, batch = acc.add("only", now=0.0)
    assert batch is None and opened is not None
    assert acc.on_timer(opened.generation) == ["only"]


def test_stale_timer_after_size_dispatch_does_nothing():
    acc = BatchAccumulator[int](max_size=2, timeout=1.0)
    opened, _ = acc.add(1, now=0.0)
    assert opened is not None
    _, batch = acc.add(2, now=0.1)
    assert batch == [1, 2]
    # A new batch starts before the old timer fires.
    opened_next, _ = acc.add(3, now=0.2)
    assert opened_next is not None
    # The first batch's timer must not release the second batch early.
    assert acc.on_timer(opened.generation) is None
    assert len(acc) == 1
    assert acc.on_timer(opened_next.generation) == [3]


def test_max_size_one_never_waits():
    acc = BatchAccumulator[int](max_size=1, timeout=5.0)
    for i in range(3):
        opened, batch = acc.add(i, now=float(i))
        assert batch == [i] and opened is None


def test_zero_timeout_is_due_immediately():
    acc = BatchAccumulator[int](max_size=4, timeout=0.0)
    opened, _ = acc.add(7, now=3.0)
    assert opened is not None and opened.deadline == 3.0


def test_drain_returns_waiting_items_and_invalidates_timer():
    acc = BatchAccumulator[int](max_size=4, timeout=1.0)
    opened, _ = acc.add(1, now=0.0)
    assert acc.drain() == [1]
    assert acc.drain() == []
    assert opened is not None and acc.on_timer(opened.generation) is None


@pytest.mark.parametrize("max_size,timeout", [(0, 1.0), (1, -0.1)])
def test_invalid_parameters_are_refused(max_size, timeout):
    with pytest.raises(ValueError):
        BatchAccumulator[int](max_size=max_size, timeout=timeout)
