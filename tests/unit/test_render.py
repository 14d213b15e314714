"""Every body the renderer writes is exactly a model of rabbit_serve.schemas, and the schema
the API serves: a field added on one side only fails here."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import BaseModel

from ingress.api import create_app
from rabbit_serve import render
from rabbit_serve.messages import ClassifyResult, ErrorInfo
from rabbit_serve.schemas import (
    AcceptedResponse,
    ClassifyResponse,
    ErrorResponse,
    HealthResponse,
    ImageError,
    ImageResult,
    MultiClassifyResponse,
    Prediction,
    StatsResponse,
    WebhookResult,
)

PREDICTIONS = [
    {"class_id": 967, "label": "espresso", "score": 0.954},
    {"class_id": 968, "label": "cup", "score": 0.012},
]
TIMINGS = {"queue": 2.71234, "batch_wait": 10.3, "inference": 19.2}
OK = ClassifyResult("r-0", "r", 0, predictions=PREDICTIONS, batch_size=4, timings_ms=TIMINGS)
BAD = ClassifyResult("r-1", "r", 1, error=ErrorInfo(422, "image could not be decoded"))
OPENAPI = create_app().openapi()


def openapi_validate(component: str, body: Any) -> None:
    """Validate against the served schema's component (JSON Schema 2020-12 in OpenAPI 3.1)."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": OPENAPI["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def conforms(model: type[BaseModel], body: bytes, *, served: bool = True) -> dict[str, Any]:
    """``body`` validates as ``model`` (which forbids extra keys) and, when the API serves
    that model, against the OpenAPI schema too; returns it decoded."""
    model.model_validate_json(body, strict=True)
    decoded = orjson.loads(body)
    if served:
        openapi_validate(model.__name__, decoded)
    else:
        jsonschema.Draft202012Validator(model.model_json_schema()).validate(decoded)
    return decoded


def test_single_result():
    rendered = render.classified("r", "m", [OK], multi=False, timeout=30, total_ms=40.44449)
    assert rendered.status == 200 and rendered.headers is None
    body = conforms(ClassifyResponse, rendered.body)
    assert body == {
        "id": "r",
        "model": "m",
        "predictions": PREDICTIONS,
        "batch_size": 4,
        "timings_ms": {"queue": 2.712, "batch_wait": 10.3, "inference": 19.2, "total": 40.444},
    }


def test_single_failure_is_its_own_status():
    rendered = render.classified("r", "m", [BAD], multi=False, timeout=30, total_ms=1)
    assert rendered.status == 422
    assert conforms(ErrorResponse, rendered.body) == {"detail": "image could not be decoded"}


@pytest.mark.parametrize("multi,count", [(False, 1), (True, 1), (True, 3)])
def test_no_answer_at_all_is_a_504(multi, count):
    rendered = render.classified("r", "m", [None] * count, multi=multi, timeout=2, total_ms=1)
    assert rendered.status == 504
    assert conforms(ErrorResponse, rendered.body) == {"detail": "no answer within TIMEOUT=2s"}
    assert render.timed_out(2) == rendered


def test_multi_results_keep_order_with_per_image_errors_and_timeouts():
    rendered = render.classified("r", "m", [OK, BAD, None], multi=True, timeout=2.5, total_ms=9)
    assert rendered.status == 200
    body = conforms(MultiClassifyResponse, rendered.body)
    assert body["results"] == [
        {"index": 0, "batch_size": 4, "predictions": PREDICTIONS},
        {"index": 1, "batch_size": 0, "error": {"status": 422, "message": BAD.error.message}},
        {"index": 2, "error": {"status": 504, "message": "no answer within TIMEOUT=2.5s"}},
    ]
    assert body["timings_ms"] == {"total": 9}


def test_webhook_body_for_a_result_and_an_error():
    ok = conforms(WebhookResult, render.webhook_body(OK, "m"), served=False)
    assert ok == {
        "id": "r-0",
        "request_id": "r",
        "index": 0,
        "model": "m",
        "batch_size": 4,
        "timings_ms": {"queue": 2.712, "batch_wait": 10.3, "inference": 19.2},
        "predictions": PREDICTIONS,
    }
    bad = conforms(WebhookResult, render.webhook_body(BAD, "m"), served=False)
    assert bad["error"] == {"status": 422, "message": BAD.error.message}
    assert "predictions" not in bad
    # The README documents these; they must stay.
    assert {"id", "request_id", "index"} <= set(ok) & set(bad)


def test_accepted_errors_and_unavailable():
    body = conforms(AcceptedResponse, render.accepted("r", "https://hooks.example/x", ["r-0"]))
    assert body == {
        "id": "r",
        "status": "accepted",
        "callback_url": "https://hooks.example/x",
        "task_ids": ["r-0"],
    }
    unavailable = render.unavailable("message broker is not reachable")
    assert unavailable.status == 503 and unavailable.headers == {"Retry-After": "1"}
    assert conforms(ErrorResponse, unavailable.body)["detail"] == "message broker is not reachable"


def test_health_says_why_only_when_unavailable():
    ready = render.health(True, True, None)
    assert ready.status == 200
    assert conforms(HealthResponse, ready.body) == {
        "status": "ok",
        "broker": True,
        "classifier": True,
    }
    down = render.health(False, True, "message broker is not connected")
    assert down.status == 503
    assert conforms(HealthResponse, down.body) == {
        "status": "unavailable",
        "broker": False,
        "classifier": True,
        "reason": "message broker is not connected",
    }


def test_stats():
    body = render.stats(
        pending=1, delivered=2, late_results=3, malformed_results=0, broker=True, reply_queue="q"
    )
    assert conforms(StatsResponse, body)["reply_queue"] == "q"


def _every_rendered_body() -> dict[type[BaseModel], list[dict[str, Any]]]:
    multi = render.classified("r", "m", [OK, BAD, None], multi=True, timeout=1, total_ms=1)
    results = orjson.loads(multi.body)["results"]
    return {
        ClassifyResponse: [
            orjson.loads(render.classified("r", "m", [OK], multi=False, timeout=1, total_ms=1).body)
        ],
        MultiClassifyResponse: [orjson.loads(multi.body)],
        ImageResult: results,
        ImageError: [r["error"] for r in results if "error" in r],
        Prediction: PREDICTIONS,
        WebhookResult: [orjson.loads(render.webhook_body(r, "m")) for r in (OK, BAD)],
        AcceptedResponse: [orjson.loads(render.accepted("r", "u", []))],
        ErrorResponse: [orjson.loads(render.error("x"))],
        HealthResponse: [orjson.loads(render.health(False, False, "x").body)],
        StatsResponse: [
            orjson.loads(
                render.stats(
                    pending=0,
                    delivered=0,
                    late_results=0,
                    malformed_results=0,
                    broker=False,
                    reply_queue="q",
                )
            )
        ],
    }


@pytest.mark.parametrize("model,bodies", list(_every_rendered_body().items()), ids=lambda m: "")
def test_every_declared_field_is_rendered_somewhere(model, bodies):
    """The other direction: a field declared in a model that the renderer never writes
    would be documented in the schema and never sent."""
    assert set(model.model_fields) == set().union(*(set(b) for b in bodies))


def test_the_served_schema_uses_the_shared_models():
    responses = OPENAPI["paths"]["/v1/classify"]["post"]["responses"]
    refs = {r["$ref"] for r in responses["200"]["content"]["application/json"]["schema"]["anyOf"]}
    assert refs == {
        "#/components/schemas/ClassifyResponse",
        "#/components/schemas/MultiClassifyResponse",
    }
    assert responses["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AcceptedResponse"
    }
    for status in ("400", "401", "413", "415", "422", "503", "504"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, status
