"""The ledger's rules: webhook attempts and deliveries, idempotency claims, and the two
bounds on its memory (a window after the last write, a cap on entries)."""

from __future__ import annotations

import pickle

import pytest

from deployments.ledger import Ledger as LedgerDeployment
from deployments.ledger import LedgerClient
from rabbit_serve.ledger import Claim, Ledger, WebhookRecord, webhook_key
from rabbit_serve.settings import Settings

WINDOW = 100.0


def ledger(**kwargs: float) -> Ledger:
    return Ledger(webhook_window=WINDOW, idempotency_window=WINDOW, **kwargs)  # type: ignore[arg-type]


# -- webhooks -------------------------------------------------------------------------


def test_each_attempt_returns_the_record_before_it_and_counts_it():
    book = ledger()
    assert book.webhook_attempt("t", 0) == WebhookRecord(0, False)
    assert book.webhook_attempt("t", 1) == WebhookRecord(1, False)
    assert book.webhook_record("t", 2) == WebhookRecord(2, False)
    assert book.webhook_record("other", 2) == WebhookRecord()


def test_a_delivered_result_is_reported_and_no_longer_counted():
    book = ledger()
    book.webhook_attempt("t", 0)
    book.webhook_delivered("t", 1)
    assert book.webhook_attempt("t", 2) == WebhookRecord(1, True)
    assert book.webhook_attempt("t", 3) == WebhookRecord(1, True)
    assert book.webhook_record("t", 3) == WebhookRecord(1, True)


def test_delivered_without_an_attempt_on_record_still_counts_as_delivered():
    # The attempt was recorded while the ledger was unreachable.
    book = ledger()
    book.webhook_delivered("t", 0)
    assert book.webhook_record("t", 0) == WebhookRecord(0, True)


def test_a_webhook_record_is_forgotten_a_window_after_its_last_write():
    book = ledger()
    book.webhook_attempt("t", 0)
    book.webhook_delivered("t", 50)
    assert book.webhook_record("t", 149).delivered
    assert book.webhook_record("t", 150) == WebhookRecord()
    assert book.sizes()["webhooks"] == 0


def test_reading_does_not_extend_the_window():
    book = ledger()
    book.webhook_delivered("t", 0)
    book.webhook_record("t", 99)
    assert not book.webhook_record("t", 100).delivered


def test_past_the_cap_the_least_recently_written_go_first():
    book = ledger(max_entries=2)
    book.webhook_attempt("a", 0)
    book.webhook_attempt("b", 1)
    book.webhook_attempt("a", 2)  # a is now the most recent
    book.webhook_attempt("c", 3)
    assert book.webhook_record("b", 3) == WebhookRecord()
    assert book.webhook_record("a", 3).attempts == 2
    assert book.webhook_record("c", 3).attempts == 1
    assert book.sizes() == {"webhooks": 2, "idempotency_keys": 0}


def test_a_replay_is_a_new_key():
    assert webhook_key("t") == webhook_key("t", 0) == "t"
    assert webhook_key("t", 1) != webhook_key("t", 2) != "t"


# -- idempotency keys -----------------------------------------------------------------

PROPOSAL = {"request_id": "r1", "task_ids": ["r1-0", "r1-1"]}
ANSWER = {"status": 200, "body": '{"results": []}'}


def test_the_first_claim_is_fresh_and_a_second_sees_it_in_progress():
    book = ledger()
    assert book.claim("k", "f", PROPOSAL, 0) == Claim("fresh", PROPOSAL)
    other = {"request_id": "r2", "task_ids": ["r2-0"]}
    assert book.claim("k", "f", other, 1) == Claim("in_progress", PROPOSAL)


def test_a_completed_claim_replays_its_answer():
    book = ledger()
    book.claim("k", "f", PROPOSAL, 0)
    book.complete("k", ANSWER, 1)
    assert book.claim("k", "f", {"request_id": "r2"}, 2) == Claim("done", ANSWER)


def test_the_same_key_with_another_request_is_a_mismatch():
    book = ledger()
    book.claim("k", "f", PROPOSAL, 0)
    assert book.claim("k", "g", PROPOSAL, 1).state == "mismatch"
    book.complete("k", ANSWER, 2)
    assert book.claim("k", "g", PROPOSAL, 3) == Claim("mismatch")


def test_a_released_key_is_fresh_again():
    book = ledger()
    book.claim("k", "f", PROPOSAL, 0)
    book.release("k", 1)
    other = {"request_id": "r2"}
    assert book.claim("k", "g", other, 2) == Claim("fresh", other)
    book.release("never-claimed", 3)  # a no-op


def test_a_key_is_forgotten_a_window_after_its_answer():
    book = ledger()
    book.claim("k", "f", PROPOSAL, 0)
    book.complete("k", ANSWER, 60)
    assert book.claim("k", "f", {}, 159).state == "done"
    assert book.claim("k", "f", {"request_id": "r2"}, 160) == Claim("fresh", {"request_id": "r2"})


def test_an_expired_claim_is_not_brought_back_by_a_late_answer():
    book = ledger()
    book.claim("k", "f", PROPOSAL, 0)
    book.complete("k", ANSWER, 200)
    assert book.claim("k", "g", {}, 201).state == "fresh"  # no fingerprint left to mismatch


def test_the_first_answer_stays():
    book = ledger()
    book.claim("k", "f", PROPOSAL, 0)
    book.complete("k", ANSWER, 1)
    book.complete("k", {"status": 503, "body": "{}"}, 2)
    assert book.claim("k", "f", {}, 3) == Claim("done", ANSWER)


def test_an_unanswered_claim_is_taken_over_with_its_ids_once_its_lease_ends():
    book = ledger(claim_lease=10)
    book.claim("k", "f", PROPOSAL, 0)
    assert book.claim("k", "f", {"request_id": "r2"}, 9.9).state == "in_progress"
    # Its claimant died: the retry proceeds, with the ids that may already be queued.
    assert book.claim("k", "f", {"request_id": "r2"}, 10) == Claim("fresh", PROPOSAL)
    assert book.claim("k", "f", {"request_id": "r3"}, 11).state == "in_progress"
    assert book.claim("k", "g", {}, 30).state == "mismatch"


def test_idempotency_keys_have_their_own_cap():
    book = ledger(max_entries=1)
    book.claim("k1", "f", PROPOSAL, 0)
    book.webhook_attempt("t", 0)
    book.claim("k2", "f", PROPOSAL, 1)
    assert book.claim("k1", "f", {"request_id": "new"}, 2) == Claim("fresh", {"request_id": "new"})
    assert book.webhook_record("t", 2).attempts == 1


def test_returned_records_are_copies():
    book = ledger()
    claim = book.claim("k", "f", dict(PROPOSAL), 0)
    claim.record["request_id"] = "changed"
    assert book.claim("k", "f", {}, 1).record == PROPOSAL


def test_answers_cross_process_boundaries():
    # The Serve deployment returns these to other processes.
    for value in (WebhookRecord(2, True), Claim("done", ANSWER)):
        assert pickle.loads(pickle.dumps(value)) == value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"webhook_window": 0, "idempotency_window": 1},
        {"webhook_window": 1, "idempotency_window": -1},
        {"webhook_window": 1, "idempotency_window": 1, "max_entries": 0},
    ],
)
def test_bounds_must_be_positive(kwargs):
    with pytest.raises(ValueError):
        Ledger(**kwargs)


# -- the Serve deployment and its client, without Ray ---------------------------------


async def test_the_deployment_wraps_the_ledger_on_the_wall_clock():
    replica = LedgerDeployment.func_or_class(Settings())
    assert await replica.webhook_attempt("t") == WebhookRecord(0, False)
    await replica.webhook_delivered("t")
    assert await replica.webhook_record("t") == WebhookRecord(1, True)
    assert await replica.claim("k", "f", PROPOSAL) == Claim("fresh", PROPOSAL)
    await replica.complete("k", ANSWER)
    assert await replica.claim("k", "f", {}) == Claim("done", ANSWER)
    await replica.release("k")
    assert replica.sizes() == {"webhooks": 1, "idempotency_keys": 0}


def test_the_deployment_is_one_small_replica():
    assert LedgerDeployment.num_replicas == 1
    assert LedgerDeployment.ray_actor_options["num_cpus"] <= 0.1


async def test_the_client_awaits_the_handles_responses():
    calls: list[tuple[str, tuple[object, ...]]] = []

    class Method:
        def __init__(self, name: str) -> None:
            self.name = name

        def remote(self, *args: object):
            calls.append((self.name, args))

            async def response() -> object:
                return WebhookRecord(1, False) if self.name.startswith("webhook") else None

            return response()

    class Handle:
        def __getattr__(self, name: str) -> Method:
            return Method(name)

    client = LedgerClient(Handle())  # type: ignore[arg-type]
    assert await client.webhook_attempt("t") == WebhookRecord(1, False)
    await client.webhook_delivered("t")
    await client.claim("k", "f", PROPOSAL)
    await client.complete("k", ANSWER)
    await client.release("k")
    assert [name for name, _ in calls] == [
        "webhook_attempt",
        "webhook_delivered",
        "claim",
        "complete",
        "release",
    ]
    assert calls[2][1] == ("k", "f", PROPOSAL)
