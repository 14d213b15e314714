"""The webhook outbox sender: POST each entry's bytes as they are, then ack it."""

from __future__ import annotations

import httpx

from consumer.outbox import WebhookSender, outbox_entry
from consumer.outcomes import Outcome, Tally
from consumer.webhook import WebhookPolicy
from rabbit_serve.messages import H_CALLBACK_URL, ClassifyResult
from rabbit_serve.render import webhook_body
from rabbit_serve.webhook_security import ID_HEADER
from tests.fakes import FakeInbound

URL = "http://127.0.0.1:9/hook"
POLICY = WebhookPolicy(allow_private=True, attempts=2, timeout=1.0)


def sender(status: int, seen: list[httpx.Request]) -> tuple[WebhookSender, Tally]:
    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    tally = Tally()
    client = httpx.AsyncClient(transport=httpx.MockTransport(respond))
    return WebhookSender(client, POLICY, tally), tally


def entry_inbound(result: ClassifyResult) -> FakeInbound:
    entry = outbox_entry(result, URL, "m")
    return FakeInbound(entry.body, entry.headers, entry.message_id)


RESULT = ClassifyResult(id="t1", request_id="r1", index=0, predictions=[], batch_size=1)


async def test_an_entry_is_posted_byte_for_byte_then_acked():
    seen: list[httpx.Request] = []
    send, tally = sender(200, seen)
    inbound = entry_inbound(RESULT)
    await send.on_entry(inbound)
    assert [r.content for r in seen] == [webhook_body(RESULT, "m")]
    assert seen[0].headers[ID_HEADER] == "t1"
    assert inbound.settled_as == "ack" and tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}


async def test_a_refusing_receiver_still_acks_the_entry_once_the_policy_gives_up():
    seen: list[httpx.Request] = []
    send, tally = sender(400, seen)
    inbound = entry_inbound(RESULT)
    await send.on_entry(inbound)
    assert len(seen) == 1  # a 4xx is not retried
    assert inbound.settled_as == "ack" and tally.outcomes == {Outcome.WEBHOOK_FAILED: 1}


async def test_an_entry_without_a_url_is_rejected():
    send, tally = sender(200, [])
    inbound = FakeInbound(b"{}", {}, "t1")
    await send.on_entry(inbound)
    assert inbound.settled_as == "reject" and tally.outcomes == {Outcome.MALFORMED: 1}
    as_bytes = FakeInbound(b"{}", {H_CALLBACK_URL: URL.encode()}, "t2")
    await send.on_entry(as_bytes)
    assert as_bytes.settled_as == "ack"
