import pytest

from consumer.dedup import RecentIds


def test_remembers_and_forgets_the_oldest():
    recent = RecentIds(capacity=2)
    recent.add("a")
    recent.add("b")
    assert "a" in recent and "b" in recent
    recent.add("c")
    assert "a" not in recent and len(recent) == 2


def test_re_adding_refreshes():
    recent = RecentIds(capacity=2)
    recent.add("a")
    recent.add("b")
    recent.add("a")
    recent.add("c")
    assert "a" in recent and "b" not in recent


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        RecentIds(0)
