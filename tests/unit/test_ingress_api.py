"""The ingress's HTTP rules on the real FastAPI app with a fake broker side: auth on every
/v1 route, answers in the documented shapes, /healthz open and saying why."""

from __future__ import annotations

import base64

import orjson
import pytest
from fastapi.routing import APIRoute

from ingress.api import create_app, router
from ingress.auth import UNAUTHORIZED, require_api_key, v1_router
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
    service, producer = make_service(Settings(webhook_allow_private=True))
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
    name, duration = response.headers["server-timing"].split(";")
    assert name == "ingress" and duration.startswith("dur=")
    assert 0 <= float(duration.removeprefix("dur=")) < 10_000
