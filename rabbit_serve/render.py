"""The one renderer of client-facing results: HTTP answers and webhook bodies.

Every function returns JSON bytes in the shape of a model in
:mod:`rabbit_serve.schemas` (the models the OpenAPI schema is built from); the unit
tests validate each shape against its model and the served schema. Bodies are built
as plain dicts and dumped with orjson rather than through the models: 3 µs against
11-14 µs for ``model_construct`` or validation plus ``model_dump_json`` on a
five-prediction answer, measured on the development machine, and this runs once per
request (per image for webhooks).

The internal reply (:meth:`ClassifyResult.to_dict` on the reply queues) is the wire
format between processes; nothing here reads it except through ``ClassifyResult``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from rabbit_serve.messages import ClassifyResult, ErrorInfo


class Rendered(NamedTuple):
    """An HTTP answer: its status, JSON body and any extra headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None


def timeout_message(timeout: float) -> str:
    return f"no answer within TIMEOUT={timeout:g}s"


def error(message: str) -> bytes:
    """``ErrorResponse``: the body of every 4xx and 5xx."""
    return orjson.dumps({"detail": message})


def timed_out(timeout: float) -> Rendered:
    """The 504 for a request that got no answer within ``timeout``."""
    return Rendered(504, error(timeout_message(timeout)))


def timed(rendered: Rendered, metric: str, started: float) -> Rendered:
    """``rendered`` with ``metric`` (its duration since ``started``, a ``perf_counter``
    reading) added to its W3C ``Server-Timing`` header."""
    entry = f"{metric};dur={(time.perf_counter() - started) * 1000:.1f}"
    headers = dict(rendered.headers or {})
    previous = headers.get("Server-Timing")
    headers["Server-Timing"] = f"{previous}, {entry}" if previous else entry
    return rendered._replace(headers=headers)


def unavailable(message: str) -> Rendered:
    """The 503 for work the broker did not take: the client may retry at once."""
    return Rendered(503, error(message), {"Retry-After": "1"})


def _timings(result: ClassifyResult) -> dict[str, float]:
    return {k: round(v, 3) for k, v in result.timings_ms.items()}


def _image_error(error: ErrorInfo) -> dict[str, Any]:
    return {"status": error.status, "message": error.message}


def webhook_body(result: ClassifyResult, model: str) -> bytes:
    """``WebhookResult``: exactly the bytes POSTed (and signed) to a ``callback_url``."""
    body: dict[str, Any] = {
        "id": result.id,
        "request_id": result.request_id,
        "index": result.index,
        "model": model,
        "batch_size": result.batch_size,
        "timings_ms": _timings(result),
    }
    if result.error is not None:
        body["error"] = _image_error(result.error)
    else:
        body["predictions"] = result.predictions or []
    return orjson.dumps(body)


def accepted(request_id: str, callback_url: str, task_ids: Sequence[str]) -> bytes:
    """``AcceptedResponse``: the 202 for a request answered by webhook."""
    return orjson.dumps(
        {
            "id": request_id,
            "status": "accepted",
            "callback_url": callback_url,
            "task_ids": list(task_ids),
        }
    )


def classified(
    request_id: str,
    model: str,
    results: Sequence[ClassifyResult | None],
    *,
    multi: bool,
    timeout: float,
    total_ms: float,
) -> Rendered:
    """The answer to a synchronous classify request.

    ``results[i]`` answers image ``i``; ``None`` means it had no answer within
    ``timeout``. No answer at all is a 504. One image (``multi`` false) is a
    ``ClassifyResponse``, or its own error status; several are a
    ``MultiClassifyResponse`` in which each image has predictions or an error, an
    image without an answer a 504 of its own.
    """
    if all(r is None for r in results):
        return timed_out(timeout)
    total = round(total_ms, 3)
    if not multi:
        result = results[0]
        if result.error is not None:
            return Rendered(result.error.status, error(result.error.message))
        timings = _timings(result)
        timings["total"] = total
        body = {
            "id": request_id,
            "model": model,
            "predictions": result.predictions or [],
            "batch_size": result.batch_size,
            "timings_ms": timings,
        }
        return Rendered(200, orjson.dumps(body))
    entries: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        if result is None:
            entries.append(
                {"index": index, "error": {"status": 504, "message": timeout_message(timeout)}}
            )
        elif result.error is not None:
            failure = _image_error(result.error)
            entries.append({"index": index, "batch_size": result.batch_size, "error": failure})
        else:
            entries.append(
                {
                    "index": index,
                    "batch_size": result.batch_size,
                    "predictions": result.predictions or [],
                }
            )
    body = {"id": request_id, "model": model, "results": entries, "timings_ms": {"total": total}}
    return Rendered(200, orjson.dumps(body))


def model_info(info: Mapping[str, Any]) -> bytes:
    """``ModelInfo``: what the classifier reports about its model, as it reports it."""
    return orjson.dumps(dict(info))


def health(broker: bool, classifier: bool, reason: str | None) -> Rendered:
    """``HealthResponse``: 200 only when both are ready; else 503 with the reason."""
    ready = broker and classifier
    body: dict[str, Any] = {
        "status": "ok" if ready else "unavailable",
        "broker": broker,
        "classifier": classifier,
    }
    if not ready:
        body["reason"] = reason or "not ready"
    return Rendered(200 if ready else 503, orjson.dumps(body))


def stats(
    *,
    pending: int,
    delivered: int,
    late_results: int,
    malformed_results: int,
    broker: bool,
    reply_queue: str,
) -> bytes:
    """``StatsResponse``: one ingress replica's counters."""
    return orjson.dumps(
        {
            "pending": pending,
            "delivered": delivered,
            "late_results": late_results,
            "malformed_results": malformed_results,
            "broker": broker,
            "reply_queue": reply_queue,
        }
    )
