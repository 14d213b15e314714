"""The ingress's HTTP rules on the real FastAPI app with a fake broker side: auth on every
/v1 route, answers in the documented shapes, /healthz open and saying why."""

from __future__ import annotations

import asyncio
import base64
import time

import orjson
import pytest
from fastapi.routing import APIRoute

from ingress.api import create_app, router
from ingress.auth import UNAUTHORIZED, require_api_key, v1_router
from ingress.keys import RELOAD_PERIOD_S
from ingress.service import current_service
from rabbit_serve.schemas import (
    ClassifyResponse,
    HealthResponse,
    MultiClassifyResponse,
    StatsResponse,
)
from rabbit_serve.settings import Settings
from tests.images import sample
from tests.ingress_fakes import MODEL_INFO, client_for, make_service

KEYS = Settings(api_keys=("key-one", "key-two"))
COFFEE = sample("coffee.jpg")
B64 = base64.b64encode(COFFEE).decode()


def v1_operations(app) -> list[tuple[str, str]]:
    """(method, path) of every /v1 operation the app serves, as its schema lists them."""
    paths = app.openapi()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/") for m in ops]


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": UNAUTHORIZED}
    assert response.headers["www-authenticate"] == 'Bearer realm="rabbit-serve"'
    assert response.headers["content-type"] == "application/json"


async def test_every_v1_route_refuses_a_request_without_a_valid_key():
    app = create_app()
    service, producer = make_service(KEYS)
    operations = v1_operations(app)
    assert {p for _, p in operations} >= {"/v1/classify", "/v1/model", "/v1/stats"}
    async with client_for(service, app) as client:
        for method, path in operations:
            for headers in ({}, {"authorization": "Bearer key-three"}, {"x-api-key": ""}):
                response = await client.request(method, path, headers=headers, json={"image": B64})
                assert_unauthorized(response)
    assert producer.published == []


async def test_every_v1_route_depends_on_the_key_check():
    assert router.routes
    for route in router.routes:
        assert isinstance(route, APIRoute) and route.path.startswith("/v1/")
        assert require_api_key in {d.call for d in route.dependant.dependencies}, route.path


async def test_a_route_added_to_the_v1_router_is_protected_without_code_of_its_own():
    router = v1_router()

    @router.get("/extra")
    async def extra() -> dict[str, bool]:
        return {"reached": True}

    app = create_app()
    app.include_router(router)
    service, _ = make_service(KEYS)
    async with client_for(service, app) as client:
        assert_unauthorized(await client.get("/v1/extra"))
        allowed = await client.get("/v1/extra", headers={"x-api-key": "key-two"})
        assert allowed.json() == {"reached": True}


@pytest.mark.parametrize("headers", [{"authorization": "Bearer key-one"}, {"x-api-key": "key-two"}])
async def test_a_valid_key_gets_through(headers):
    service, _ = make_service(KEYS)
    async with client_for(service) as client:
        response = await client.post("/v1/classify", json={"image": B64}, headers=headers)
        assert response.status_code == 200, response.text
        assert (await client.get("/v1/stats", headers=headers)).status_code == 200


async def test_without_api_keys_everything_is_open():
    service, _ = make_service(Settings(api_keys=()))
    async with client_for(service) as client:
        assert (await client.get("/v1/stats")).status_code == 200


async def test_healthz_stays_open_and_says_why_it_is_not_ready():
    async def dead() -> dict:
        raise RuntimeError("ActorDiedError: the classifier replica died\ntraceback ...")

    service, producer = make_service(KEYS, info=dead)
    producer.ready = False
    async with client_for(service) as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    HealthResponse.model_validate(body)
    assert body["status"] == "unavailable"
    assert body["broker"] is False and body["classifier"] is False
    assert "message broker is not connected" in body["reason"]
    assert "RuntimeError: ActorDiedError: the classifier replica died" in body["reason"]
    assert "traceback" not in body["reason"]


async def test_healthz_says_when_a_broker_alarm_blocks_publishes():
    service, producer = make_service()
    producer.blocked = True
    async with client_for(service) as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["broker"] is False and body["classifier"] is True
    assert body["reason"] == "message broker is blocking publishes (memory or disk alarm)"


async def test_healthz_ready_has_exactly_the_documented_fields():
    service, _ = make_service()
    async with client_for(service) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "broker": True, "classifier": True}


async def test_model_and_stats():
    service, _ = make_service()
    async with client_for(service) as client:
        model = await client.get("/v1/model")
        stats = await client.get("/v1/stats")
    # The classifier's report, as it made it (ModelInfo is the classifier's to fill).
    assert model.status_code == 200 and model.json() == MODEL_INFO
    assert StatsResponse.model_validate(stats.json()).reply_queue == "rabbit-serve.replies.test"


async def test_model_without_a_classifier_is_a_503_with_the_reason():
    async def slow() -> dict:
        import asyncio

        await asyncio.sleep(5)
        return {}

    service, _ = make_service(info=slow)
    async with client_for(service) as client:
        response = await client.get("/v1/model")
    assert response.status_code == 503
    assert response.json() == {
        "detail": "classifier is not ready: classifier did not answer within 0.2s"
    }


async def test_classify_single_multi_and_webhook_shapes():
    service, producer = make_service(
        Settings(webhook_allow_private=True, webhook_allowed_ports="*")
    )
    async with client_for(service) as client:
        one = await client.post("/v1/classify", json={"image": B64, "top_k": 1})
        many = await client.post("/v1/classify", json={"images": [B64, B64]})
        raw = await client.post(
            "/v1/classify",
            content=COFFEE,
            params={"top_k": "1"},
            headers={"content-type": "image/jpeg"},
        )
        hook = await client.post(
            "/v1/classify", json={"image": B64, "callback_url": "http://127.0.0.1:9/hook"}
        )
    assert one.status_code == 200 and raw.status_code == 200
    ClassifyResponse.model_validate(one.json())
    assert one.json()["predictions"][0]["label"] == "espresso"
    assert set(one.json()["timings_ms"]) == {"queue", "batch_wait", "inference", "total"}
    assert [r.index for r in MultiClassifyResponse.model_validate(many.json()).results] == [
        0,
        1,
    ]
    assert hook.status_code == 202
    accepted = hook.json()
    assert accepted["status"] == "accepted" and len(accepted["task_ids"]) == 1
    assert producer.tasks[-1].reply_to is None
    assert producer.tasks[-1].callback_url == "http://127.0.0.1:9/hook"


async def test_client_errors_and_unknown_paths_are_json_details():
    service, _ = make_service()
    async with client_for(service) as client:
        bad = await client.post(
            "/v1/classify", content=b"{oops", headers={"content-type": "application/json"}
        )
        missing = await client.get("/v1/nothing")
        wrong_method = await client.get("/v1/classify")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["detail"]
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert wrong_method.status_code == 405 and orjson.loads(wrong_method.content)["detail"]


@pytest.mark.parametrize("fail", [None, "the message broker is blocking publishes"])
async def test_every_classify_answer_says_the_replicas_own_time(fail):
    # Server-Timing: what the replica spent, so a slow answer can be told apart from a
    # wait in front of it (Serve's proxy, the network).
    service, _ = make_service(fail=fail)
    async with client_for(service) as client:
        response = await client.post("/v1/classify", json={"image": B64})
    assert response.status_code == (200 if fail is None else 503)
    timings = dict(
        entry.strip().split(";dur=") for entry in response.headers["server-timing"].split(",")
    )
    # A refused publish also says how long the publish itself took.
    assert set(timings) == ({"ingress"} if fail is None else {"publish", "ingress"})
    assert all(0 <= float(ms) < 10_000 for ms in timings.values())
    assert float(timings.get("publish", 0)) <= float(timings["ingress"])


# -- key rotation, per-key limits, the byte budget ------------------------------------------


async def test_keys_rotate_through_the_key_file_without_a_restart(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text("old-key\n")
    service, _ = make_service(Settings(api_keys_file=str(path)))
    async with client_for(service) as client:

        async def status(key: str) -> int:
            response = await client.post(
                "/v1/classify", json={"image": B64}, headers={"x-api-key": key}
            )
            return response.status_code

        assert await status("old-key") == 200
        assert await status("new-key") == 401
        # Step 1: add the new key next to the old one (write, then rename: atomic).
        staged = tmp_path / "staged"
        staged.write_text("old-key\nnew-key\n")
        staged.replace(path)
        changed = time.monotonic()
        while await status("new-key") != 200:
            assert time.monotonic() - changed < RELOAD_PERIOD_S + 1
            await asyncio.sleep(0.05)
        assert await status("old-key") == 200  # step 2: clients move at their pace
        # Step 3: remove the old key.
        staged.write_text("new-key\n")
        staged.replace(path)
        changed = time.monotonic()
        while await status("old-key") != 401:
            assert time.monotonic() - changed < RELOAD_PERIOD_S + 1
            await asyncio.sleep(0.05)
        revoked_after = time.monotonic() - changed
        assert await status("new-key") == 200
    assert revoked_after <= RELOAD_PERIOD_S + 1


async def test_an_emptied_key_file_refuses_everyone_rather_than_serving_anonymously(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text("# no keys yet\n")
    service, producer = make_service(Settings(api_keys_file=str(path)))
    async with client_for(service) as client:
        assert_unauthorized(await client.post("/v1/classify", json={"image": B64}))
        assert_unauthorized(await client.get("/v1/stats"))
    assert producer.published == []


async def until_published(producer, count: int, timeout: float = 5.0) -> None:
    """Until ``count`` tasks reached the (fake) broker: requests let through the door."""
    for _ in range(int(timeout / 0.01)):
        if len(producer.tasks) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(producer.tasks)} tasks published, expected {count}")


def assert_too_many(response, retry_after: int = 1) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(retry_after)
    assert set(response.json()) == {"detail"}
    assert "server-timing" in response.headers


async def test_a_key_over_its_rate_gets_429_and_another_key_is_not_affected():
    settings = Settings(api_keys=("greedy", "modest"), key_rate_limit=0.5, key_rate_burst=3)
    service, producer = make_service(settings)
    async with client_for(service) as client:
        greedy = {"x-api-key": "greedy"}
        three = await client.post("/v1/classify", json={"images": [B64] * 3}, headers=greedy)
        assert three.status_code == 200  # a request of N images costs N: the whole burst
        refused = await client.post("/v1/classify", json={"image": B64}, headers=greedy)
        assert_too_many(refused, retry_after=2)  # one image at 0.5/s
        assert "KEY_RATE_LIMIT" in refused.json()["detail"]
        modest = await client.post(
            "/v1/classify", json={"images": [B64] * 3}, headers={"x-api-key": "modest"}
        )
        assert modest.status_code == 200
    assert len(producer.tasks) == 6  # nothing of the refused request was published


async def test_a_key_with_its_maximum_open_gets_429_at_once_and_another_key_is_not_affected():
    settings = Settings(api_keys=("busy", "idle"), key_max_concurrent=2, timeout=5)
    service, producer = make_service(settings, answer=lambda task: None)  # never answered
    async with client_for(service) as client:
        busy = {"x-api-key": "busy"}
        held = [
            asyncio.create_task(client.post("/v1/classify", json={"image": B64}, headers=busy))
            for _ in range(2)
        ]
        await until_published(producer, 2)
        third = await client.post("/v1/classify", json={"image": B64}, headers=busy)
        assert_too_many(third)
        assert "KEY_MAX_CONCURRENT" in third.json()["detail"]
        other = asyncio.create_task(
            client.post("/v1/classify", json={"image": B64}, headers={"x-api-key": "idle"})
        )
        await until_published(producer, 3)
        for task in held:
            task.cancel()
        other.cancel()
        await asyncio.gather(*held, other, return_exceptions=True)
    assert len(producer.tasks) == 3


async def test_anonymous_loopback_traffic_is_not_limited():
    settings = Settings(key_rate_limit=0.001, key_rate_burst=1, key_max_concurrent=1)
    service, _ = make_service(settings)
    async with client_for(service) as client:
        for _ in range(5):
            response = await client.post("/v1/classify", json={"images": [B64] * 2})
            assert response.status_code == 200


async def test_requests_past_the_byte_budget_get_503_at_once_and_their_bytes_come_back():
    budget = 3 * len(COFFEE)
    settings = Settings(max_inflight_bytes=budget, timeout=5)
    service, producer = make_service(settings, answer=lambda task: None)
    raw = {"content-type": "image/jpeg"}
    async with client_for(service) as client:
        held = [
            asyncio.create_task(client.post("/v1/classify", content=COFFEE, headers=raw))
            for _ in range(3)
        ]
        await until_published(producer, 3)
        assert service.budget.used == budget
        refused = await client.post("/v1/classify", content=COFFEE, headers=raw)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "MAX_INFLIGHT_BYTES" in refused.json()["detail"]
        for task in held:
            task.cancel()  # the client goes away: the handler is cancelled
        await asyncio.gather(*held, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert service.budget.used == 0
        # Freed: the next request is taken again.
        held = asyncio.create_task(client.post("/v1/classify", content=COFFEE, headers=raw))
        await until_published(producer, 4)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
    assert len(producer.tasks) == 4


@pytest.mark.parametrize(
    "answer_kind", ["ok", "client-error", "broker-down", "rate-refused", "concurrency-refused"]
)
async def test_limits_are_given_back_whatever_the_outcome(answer_kind):
    settings = Settings(
        api_keys=("k",),
        key_rate_limit=1,
        key_rate_burst=2,
        key_max_concurrent=1,
        max_inflight_bytes=10 * 1024 * 1024,
    )
    service, _ = make_service(
        settings, fail="broker down" if answer_kind == "broker-down" else None
    )
    headers = {"x-api-key": "k"}
    payload = {"images": [B64] * 3} if answer_kind == "rate-refused" else {"image": B64}
    async with client_for(service) as client:
        if answer_kind == "client-error":
            payload = {"image": "not base64!"}
        if answer_kind == "concurrency-refused":
            service.limits.enter("k", 0.0)  # another request of this key is open
        response = await client.post("/v1/classify", json=payload, headers=headers)
    expected = {
        "ok": 200,
        "client-error": 400,
        "broker-down": 503,
        "rate-refused": 200,  # 3 images > burst 2: a full bucket lets it through, in debt
        "concurrency-refused": 429,
    }[answer_kind]
    assert response.status_code == expected, response.text
    assert service.budget.used == 0
    if answer_kind == "concurrency-refused":
        service.limits.leave("k", 0.0)
    assert service.limits._keys.get("k") is None or service.limits._keys["k"].open == 0


async def asgi_post(app, headers: dict[str, str], body: bytes) -> tuple[int, dict, int]:
    """POST /v1/classify straight through ASGI; (status, headers, body chunks read)."""
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    read = 0

    async def receive() -> dict:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {
                "type": "http.request",
                "body": chunks[read - 1],
                "more_body": read < len(chunks),
            }
        return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/classify",
        "raw_path": b"/v1/classify",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("ingress", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, read


@pytest.mark.parametrize("refusal", ["concurrency", "rate", "bytes"])
async def test_refusals_come_before_the_body_is_read(refusal):
    settings = Settings(
        api_keys=("k",),
        key_max_concurrent=1,
        key_rate_limit=1,
        key_rate_burst=1,
        max_inflight_bytes=len(COFFEE) - 1 if refusal == "bytes" else 10**9,
    )
    service, producer = make_service(settings)
    if refusal == "concurrency":
        service.limits.enter("k", time.monotonic())
    if refusal == "rate":
        service.limits.charge("k", 1, time.monotonic())
    app = create_app()
    app.dependency_overrides[current_service] = lambda: service
    headers = {"x-api-key": "k", "content-type": "image/jpeg", "content-length": str(len(COFFEE))}
    status, response_headers, read = await asgi_post(app, headers, COFFEE)
    assert status == (503 if refusal == "bytes" else 429)
    assert response_headers["retry-after"] == "1"
    assert read == 0 and producer.published == []
