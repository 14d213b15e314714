"""The webhook outbox sender: POST each entry's bytes as they are; ack it once a 2xx is
recorded, reject it (to the webhook dead-letter queue) once refused or out of attempts;
never POST what the shared ledger says was delivered."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

import consumer.outbox
from consumer.outbox import WebhookSender, outbox_entry
from consumer.outcomes import Outcome, Rework, Tally
from consumer.webhook import WebhookPolicy
from rabbit_serve.ledger import H_REPLAYS, WebhookRecord, webhook_key
from rabbit_serve.messages import H_CALLBACK_URL, ClassifyResult
from rabbit_serve.render import webhook_body
from rabbit_serve.webhook_security import ID_HEADER, SIGNATURE_HEADER, verify
from tests.fakes import FakeInbound, FakeLedger

URL = "http://127.0.0.1:9/hook"
POLICY = WebhookPolicy(allow_private=True, allowed_ports=(), attempts=3, timeout=1.0)
RESULT = ClassifyResult(id="t1", request_id="r1", index=0, predictions=[], batch_size=1)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(consumer.outbox, "backoff_delay", lambda attempt: 0.0)


class Receiver:
    """Answers with ``statuses`` in turn (the last one repeats); records each request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        status = self.statuses[min(len(self.seen), len(self.statuses)) - 1]
        return httpx.Response(status)


def sender(
    receiver: Receiver,
    ledger: FakeLedger | None = None,
    policy: WebhookPolicy = POLICY,
    **kwargs: float,
) -> tuple[WebhookSender, Tally]:
    tally = Tally()
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    return WebhookSender(client, policy, tally, ledger, **kwargs), tally


def entry_inbound(
    result: ClassifyResult = RESULT, url: str = URL, **headers: object
) -> FakeInbound:
    entry = outbox_entry(result, url, "m")
    return FakeInbound(entry.body, {**entry.headers, **headers}, entry.message_id)


async def test_an_entry_is_posted_byte_for_byte_recorded_then_acked():
    receiver, ledger = Receiver(200), FakeLedger()
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert [r.content for r in receiver.seen] == [webhook_body(RESULT, "m")]
    assert receiver.seen[0].headers[ID_HEADER] == "t1"
    assert inbound.settled_as == "ack" and tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}
    assert ledger.calls == ["webhook_attempt", "webhook_delivered"]
    assert ledger.book.webhook_record("t1", 0) == WebhookRecord(1, True)


async def test_a_refusing_receiver_sends_the_entry_to_the_dead_letter_queue():
    receiver = Receiver(400)
    send, tally = sender(receiver, FakeLedger())
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert len(receiver.seen) == 1  # a 4xx is not retried
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}


async def test_a_failing_receiver_gets_the_policys_attempts_then_the_entry_is_rejected():
    receiver, ledger = Receiver(503), FakeLedger()
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert len(receiver.seen) == POLICY.attempts
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}
    assert ledger.book.webhook_record("t1", 0).attempts == POLICY.attempts


async def test_retries_until_a_2xx():
    receiver = Receiver(500, 429, 204)
    send, tally = sender(receiver, FakeLedger())
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert len(receiver.seen) == 3
    assert inbound.settled_as == "ack" and tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}


async def test_what_another_consumer_delivered_is_acked_without_a_post():
    receiver, ledger = Receiver(200), FakeLedger()
    ledger.book.webhook_attempt("t1", 0)
    ledger.book.webhook_delivered("t1", 0)
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert receiver.seen == []
    assert inbound.settled_as == "ack"
    # Counted as delivered by the consumer that delivered it; here it is rework.
    assert tally.outcomes == {} and tally.rework == {Rework.DUPLICATE: 1}


async def test_a_redelivery_continues_the_attempt_count_of_the_consumer_that_died():
    receiver, ledger = Receiver(503), FakeLedger()
    ledger.book.webhook_attempt("t1", 0)  # it died during its first POST
    ledger.book.webhook_attempt("t1", 0)  # and another one during the second
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert len(receiver.seen) == POLICY.attempts - 2
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}


async def test_an_entry_whose_attempts_are_all_spent_is_rejected_without_a_post():
    receiver, ledger = Receiver(200), FakeLedger()
    for _ in range(POLICY.attempts):
        ledger.book.webhook_attempt("t1", 0)
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert receiver.seen == []
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}


async def test_a_replayed_dead_letter_gets_a_fresh_budget():
    receiver, ledger = Receiver(200), FakeLedger()
    for _ in range(POLICY.attempts):
        ledger.book.webhook_attempt("t1", 0)
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound(**{H_REPLAYS: 1})
    await send.on_entry(inbound)
    assert len(receiver.seen) == 1 and receiver.seen[0].headers[ID_HEADER] == "t1"
    assert inbound.settled_as == "ack" and tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}
    assert ledger.book.webhook_record(webhook_key("t1", 1), 0).delivered


@pytest.mark.parametrize("trouble", ["fail", "hang"])
async def test_an_unreachable_ledger_does_not_stop_the_post(trouble):
    receiver, ledger = Receiver(200), FakeLedger()
    setattr(ledger, trouble, True)
    send, tally = sender(receiver, ledger, ledger_timeout=0.05)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert len(receiver.seen) == 1
    assert inbound.settled_as == "ack" and tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}


async def test_an_unreachable_ledger_still_bounds_the_attempts():
    receiver, ledger = Receiver(503), FakeLedger()
    ledger.fail = True
    send, tally = sender(receiver, ledger)
    inbound = entry_inbound()
    await send.on_entry(inbound)
    assert len(receiver.seen) == POLICY.attempts
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}


async def test_two_consumers_sharing_a_ledger_post_a_result_once():
    receiver, ledger = Receiver(200), FakeLedger()
    first, _ = sender(receiver, ledger)
    second, tally = sender(receiver, ledger)
    await first.on_entry(entry_inbound())
    # The first one's ack was lost: the broker redelivers the entry to the second.
    redelivered = entry_inbound()
    await second.on_entry(redelivered)
    assert len(receiver.seen) == 1 and redelivered.settled_as == "ack"
    assert tally.rework == {Rework.DUPLICATE: 1}


async def test_without_a_ledger_this_process_still_skips_what_it_delivered():
    receiver = Receiver(200)
    send, tally = sender(receiver)
    await send.on_entry(entry_inbound())
    again = entry_inbound()
    await send.on_entry(again)
    assert len(receiver.seen) == 1 and again.settled_as == "ack"
    assert tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}
    assert tally.rework == {Rework.DUPLICATE: 1}


async def test_an_entry_without_a_url_is_rejected():
    send, tally = sender(Receiver(200))
    inbound = FakeInbound(b"{}", {}, "t1")
    await send.on_entry(inbound)
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.MALFORMED: 1}
    as_bytes = FakeInbound(b"{}", {H_CALLBACK_URL: URL.encode()}, "t2")
    await send.on_entry(as_bytes)
    assert as_bytes.settled_as == "ack"


async def test_each_entry_is_signed_for_the_url_it_carries():
    receiver = Receiver(200)
    signing = WebhookPolicy(secret="s3cret", allow_private=True, allowed_ports=())
    send, _ = sender(receiver, policy=signing)
    other = "http://127.0.0.1:9/other-tenant"
    await send.on_entry(entry_inbound(url=URL))
    await send.on_entry(entry_inbound(replace(RESULT, id="t2"), other))
    first, second = receiver.seen
    assert verify("s3cret", first.headers[SIGNATURE_HEADER], first.content, URL)
    assert verify("s3cret", second.headers[SIGNATURE_HEADER], second.content, other)
    # Swapped, neither verifies: a body cannot be moved from one receiver to another.
    assert not verify("s3cret", first.headers[SIGNATURE_HEADER], first.content, other)
    assert not verify("s3cret", second.headers[SIGNATURE_HEADER], second.content, URL)


async def test_an_entry_for_a_port_off_the_list_is_dead_lettered_without_a_post():
    # The ingress refuses such a URL; an entry that got in anyway (replayed from the
    # dead-letter queue after WEBHOOK_ALLOWED_PORTS was narrowed) is checked again here.
    receiver = Receiver(200)
    send, tally = sender(receiver, policy=WebhookPolicy(allow_private=True, attempts=3))
    inbound = entry_inbound(url="http://127.0.0.1:6379/hook")
    await send.on_entry(inbound)
    assert receiver.seen == []
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}
