"""Idempotency-Key on POST /v1/classify, on the real app with a fake broker and an
in-memory ledger: a retry gets the same ids and answer and queues nothing again."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from ingress.api import create_app
from ingress.idempotency import check_key, fingerprint, ledger_key
from ingress.parsing import ParsedRequest
from ingress.service import MAYBE_QUEUED
from rabbit_serve.errors import ClientError, ServiceUnavailable
from rabbit_serve.ledger import Claim
from rabbit_serve.settings import Settings
from rabbit_serve.transport import PublishTimedOut
from tests.fakes import FakeLedger
from tests.images import sample
from tests.ingress_fakes import client_for, make_service

COFFEE = sample("coffee.jpg")
B64 = base64.b64encode(COFFEE).decode()
ONE = {"image": B64}
TWO = {"images": [B64, B64], "top_k": 2}
HOOK = "http://127.0.0.1:9/hook"


def rig(**kwargs):
    ledger = FakeLedger()
    settings = kwargs.pop(
        "settings", Settings(webhook_allow_private=True, webhook_allowed_ports="*")
    )
    service, producer = make_service(settings, idempotency=ledger, **kwargs)
    return service, producer, ledger


async def post(client, body, key: str | None = "key-1", **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/classify", json=body, headers=headers)


@pytest.mark.parametrize("body", [ONE, TWO])
async def test_a_retry_gets_the_same_ids_and_answer_and_queues_nothing(body):
    service, producer, ledger = rig()
    async with client_for(service) as client:
        first = await post(client, body)
        again = await post(client, body)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(producer.published) == 1  # one message, a bundle for several images
    assert {t.request_id for t in producer.tasks} == {first.json()["id"]}
    assert ledger.calls == ["claim", "complete", "claim"]


async def test_a_webhook_retry_replays_the_202_with_the_same_task_ids():
    service, producer, _ = rig()
    async with client_for(service) as client:
        first = await post(client, {**TWO, "callback_url": HOOK})
        again = await post(client, {**TWO, "callback_url": HOOK})
    assert first.status_code == again.status_code == 202
    assert again.json()["task_ids"] == first.json()["task_ids"] == [t.id for t in producer.tasks]
    assert len(producer.published) == 1


async def test_a_second_request_while_the_first_runs_is_a_409():
    service, producer, _ = rig(answer=lambda task: None, settings=Settings(timeout=0.5))
    async with client_for(service) as client:
        first = asyncio.create_task(post(client, ONE))
        await asyncio.sleep(0.1)
        second = await post(client, ONE)
        assert second.status_code == 409 and second.headers["retry-after"] == "1"
        assert "in progress" in second.json()["detail"]
        assert (await first).status_code == 504
        # The 504 is the answer: replayed, not queued again.
        third = await post(client, ONE)
    assert third.status_code == 504 and third.headers["idempotent-replayed"] == "true"
    assert len(producer.published) == 1


async def test_the_same_key_with_another_request_is_a_422():
    service, producer, _ = rig()
    async with client_for(service) as client:
        assert (await post(client, ONE)).status_code == 200
        other = await post(client, {**ONE, "top_k": 1})
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    assert len(producer.published) == 1


async def test_a_503_with_nothing_queued_releases_the_key_and_keeps_the_ids():
    service, producer, ledger = rig()
    producer.fail = "the request queue is full; retry after the Retry-After delay"
    async with client_for(service) as client:
        refused = await post(client, TWO)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert ledger.calls == ["claim", "release"]
        producer.fail = None
        retried = await post(client, TWO)
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert len(producer.published) == 1


async def test_an_unconfirmed_publish_says_so_and_its_retry_reuses_the_ids():
    # The broker may hold the first copy: the retry's copy carries the same task ids,
    # so it is answered (and POSTed) once per id.
    service, producer, ledger = rig()
    publish = producer.publish

    async def unconfirmed(message):
        producer.published.append(message)
        cause = PublishTimedOut("no confirm within 5s")
        raise ServiceUnavailable("message broker did not confirm the publish in time") from cause

    producer.publish = unconfirmed
    async with client_for(service) as client:
        unsure = await post(client, {**TWO, "callback_url": HOOK})
        assert unsure.status_code == 503 and MAYBE_QUEUED in unsure.json()["detail"]
        assert ledger.calls == ["claim", "release"]
        producer.publish = publish
        accepted = await post(client, {**TWO, "callback_url": HOOK})
    assert accepted.status_code == 202
    first, second = producer.published
    assert first.message_id == second.message_id == accepted.json()["id"]


async def test_the_same_keyed_request_gets_the_same_ids_from_any_replica():
    ids = []
    for _ in range(2):
        service, _, _ = rig()  # a fresh ledger: the key was forgotten in between
        async with client_for(service) as client:
            ids.append((await post(client, {**TWO, "callback_url": HOOK})).json()["task_ids"])
    assert ids[0] == ids[1]


@pytest.mark.parametrize("fault", ["fail", "hang"])
async def test_an_unreachable_ledger_is_a_503_and_nothing_is_queued(fault):
    service, producer, ledger = rig()
    setattr(ledger, fault, True)
    async with client_for(service) as client:
        response = await post(client, ONE)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "ledger" in response.json()["detail"] and producer.published == []


async def test_without_the_header_no_ledger_call_is_made():
    service, producer, ledger = rig()
    async with client_for(service) as client:
        first = await post(client, ONE, key=None)
        second = await post(client, ONE, key=None)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert ledger.calls == [] and len(producer.published) == 2


async def test_without_a_ledger_a_keyed_request_is_a_503_and_a_keyless_one_is_served():
    service, producer = make_service()
    async with client_for(service) as client:
        keyed = await post(client, ONE)
        keyless = await post(client, ONE, key=None)
    assert keyed.status_code == 503 and "no ledger" in keyed.json()["detail"]
    assert keyless.status_code == 200 and len(producer.published) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_malformed_key_is_a_422_before_anything_else(key):
    service, producer, ledger = rig()
    async with client_for(service) as client:
        response = await client.post(
            "/v1/classify", json=ONE, headers={"Idempotency-Key": key.encode("utf-8")}
        )
    assert response.status_code == 422 and "Idempotency-Key" in response.json()["detail"]
    assert ledger.calls == [] and producer.published == []


def test_valid_keys_and_their_scope():
    assert check_key("x" * 255) == "x" * 255
    assert check_key("order-42/retry:~!") == "order-42/retry:~!"
    with pytest.raises(ClientError):
        check_key(" lead")
    # Two API keys that pick the same Idempotency-Key never share an entry.
    assert ledger_key("k", "key-one") != ledger_key("k", "key-two")
    assert "key-one" not in ledger_key("k", "key-one")


async def test_keys_are_scoped_by_api_key():
    settings = Settings(api_keys=("key-one", "key-two"))
    service, producer, _ = rig(settings=settings)
    async with client_for(service) as client:
        one = await post(client, ONE, **{"X-API-Key": "key-one"})
        two = await post(client, {**ONE, "top_k": 1}, **{"X-API-Key": "key-two"})
    assert one.status_code == two.status_code == 200
    assert len(producer.published) == 2


def test_the_fingerprint_is_of_the_request_not_its_encoding():
    base = ParsedRequest([b"a", b"b"], 5, None, True)
    assert fingerprint(base) == fingerprint(ParsedRequest([b"a", b"b"], 5, None, True, [1, 2]))
    for other in (
        ParsedRequest([b"ab"], 5, None, False),
        ParsedRequest([b"a", b"b"], 4, None, True),
        ParsedRequest([b"a", b"b"], 5, HOOK, True),
        ParsedRequest([b"ab", b""], 5, None, True),
        ParsedRequest([b"b", b"a"], 5, None, True),
    ):
        assert fingerprint(other) != fingerprint(base)


async def test_the_answer_stored_is_the_one_the_client_got():
    service, _, ledger = rig()
    async with client_for(service) as client:
        response = await post(client, ONE)
    (entry,) = ledger.book._keys._entries.values()
    assert entry.value.done and entry.value.record["status"] == 200
    assert orjson.loads(entry.value.record["body"]) == response.json()


class TakenOver:
    """A ledger whose claim hands over ids an earlier (dead) claimant proposed."""

    def __init__(self) -> None:
        self.completed: list[dict] = []

    async def claim(self, key, fingerprint, proposal):
        return Claim("fresh", {"request_id": "0" * 32})

    async def complete(self, key, record):
        self.completed.append(record)

    async def release(self, key):
        raise AssertionError("nothing to release")


async def test_the_ids_are_the_claims_not_the_proposal():
    store = TakenOver()
    service, producer = make_service(idempotency=store)
    async with client_for(service) as client:
        response = await post(client, TWO)
    assert response.json()["id"] == "0" * 32
    assert {t.id for t in producer.tasks} == {"0" * 32 + "-0", "0" * 32 + "-1"}
    assert store.completed[0]["request_id"] == "0" * 32


def test_the_schema_documents_the_header_and_the_409():
    operation = create_app().openapi()["paths"]["/v1/classify"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]]
    assert "409" in operation["responses"]
    assert "Idempotency-Key" in operation["responses"]["503"]["description"]
