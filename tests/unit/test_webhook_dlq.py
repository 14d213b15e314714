"""The webhook dead-letter command's pure parts: what `list` shows of an entry, what
`replay` sends back, and its arguments (the broker round trip is an integration test)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from rabbit_serve.ledger import H_REPLAYS
from rabbit_serve.messages import H_CALLBACK_URL, RESULT_CONTENT_TYPE
from rabbit_serve.webhook_dlq import Entry, describe, format_entries, parse_args, replayed

URL = "https://hooks.example.com/x"
NOW = 1_800_000_000.0


def death(reason: str, count: int, at: float) -> dict[str, object]:
    return {
        "reason": reason,
        "count": count,
        "queue": "rabbit-serve.webhooks",
        "time": datetime.fromtimestamp(at, tz=timezone.utc),
    }


def test_an_entry_says_why_how_often_and_since_when():
    headers = {
        H_CALLBACK_URL: URL.encode(),
        "x-death": [death("rejected", 2, NOW - 90), death("delivery_limit", 1, NOW - 4000)],
        "x-first-death-reason": "delivery_limit",
        H_REPLAYS: 1,
    }
    assert describe("t1", headers, NOW) == Entry("t1", URL, "rejected", 3, 90.0, 1)


def test_an_entry_without_death_records_still_lists():
    entry = describe(None, {}, NOW, published=datetime.fromtimestamp(NOW - 5, tz=timezone.utc))
    assert entry == Entry("", "", "unknown", 1, 5.0, 0)
    assert describe("t", {}, NOW).age_s is None


def test_a_replayed_entry_drops_the_death_records_and_counts_the_replay():
    headers = {
        H_CALLBACK_URL: URL,
        "x-death": [death("rejected", 1, NOW)],
        "x-first-death-reason": "rejected",
        "x-first-death-queue": "rabbit-serve.webhooks",
        "x-last-death-reason": "rejected",
        "x-delivery-count": 3,
        "rs-other": "kept",
    }
    message = replayed(b'{"id":"t1"}', headers, "t1", None)
    assert message.body == b'{"id":"t1"}' and message.message_id == "t1"
    assert dict(message.headers) == {H_CALLBACK_URL: URL, "rs-other": "kept", H_REPLAYS: 1}
    assert message.persistent and message.content_type == RESULT_CONTENT_TYPE
    again = replayed(message.body, message.headers, "t1", "application/json")
    assert again.headers[H_REPLAYS] == 2 and again.content_type == "application/json"


def test_the_listing_is_a_table_with_a_count():
    entries = [Entry("t1", URL, "rejected", 1, 7200.0, 0), Entry("t2", URL, "rejected", 2, None, 1)]
    lines = format_entries(entries, total=5).splitlines()
    assert lines[0].split() == ["ID", "CALLBACK", "URL", "REASON", "DEATHS", "AGE", "REPLAYS"]
    assert lines[1].split() == ["t1", URL, "rejected", "1", "2.0h", "0"]
    assert lines[2].split() == ["t2", URL, "rejected", "2", "?", "1"]
    assert lines[-1] == "2 shown of 5 in the webhook dead-letter queue"


def test_arguments():
    assert parse_args(["list"]).limit == 100
    assert parse_args(["list", "--limit", "3"]).limit == 3
    assert parse_args(["replay", "--all"]).all
    assert parse_args(["replay", "--id", "a", "--id", "b"]).ids == ["a", "b"]


@pytest.mark.parametrize(
    "argv",
    [[], ["replay"], ["replay", "--all", "--id", "a"], ["list", "--limit", "0"], ["drop"]],
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
