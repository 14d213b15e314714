"""Outcomes: the README's metric lists are the enums, and each message counts once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer.outcomes import Outcome, Rework, Tally

README = Path(__file__).resolve().parents[2] / "README.md"


def documented(metric: str, tag: str) -> list[str]:
    """The backticked values listed for ``tag`` after ``metric`` in the README."""
    text = README.read_text()
    match = re.search(rf"`{metric}`\s*\(([^)]*?)\b{tag}: ([^)]*)\)", text, re.S)
    assert match, f"README lists no {tag} values for {metric}"
    return re.findall(r"`([a-z_]+)`", match.group(2))


def test_the_readme_lists_every_outcome_and_nothing_else():
    assert documented("rabbit_serve_consumer_messages", "outcome") == [o.value for o in Outcome]


def test_the_readme_lists_every_kind_of_rework_and_nothing_else():
    assert documented("rabbit_serve_consumer_rework", "kind") == [k.value for k in Rework]


def test_outcomes_and_rework_share_no_name():
    # A name in both would count one message twice in a dashboard that sums them.
    assert not {o.value for o in Outcome} & {k.value for k in Rework}


def test_snapshot_keeps_the_stats_keys():
    tally = Tally()
    tally.outcome(Outcome.ANSWERED, 3)
    tally.again(Rework.REDELIVERED)
    tally.batch(3)
    assert tally.snapshot() == {
        "counts": {"answered": 3},
        "rework": {"redelivered": 1},
        "batch_sizes": {3: 1},
    }


@pytest.mark.parametrize("outcome", list(Outcome))
def test_outcome_values_are_metric_tag_friendly(outcome):
    assert re.fullmatch(r"[a-z_]+", outcome.value)
