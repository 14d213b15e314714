"""What the OpenAPI schema says beyond the routes' models: error answers and the request
body of ``POST /v1/classify``, which the handler reads itself (three body kinds)."""

from __future__ import annotations

from typing import Any

from rabbit_serve.schemas import ClassifyRequest, ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or base64",
        401: "API_KEYS is set and the request has no valid key",
        413: "Image, request or pixel count over the limit",
        415: "Unsupported content type",
        422: "Not a decodable image, invalid fields, or an Idempotency-Key that is malformed "
        "or was used with a different request",
        503: "Nothing of the request was queued (broker unreachable, blocked, or the queue "
        "full); retry after Retry-After. Only a 503 whose detail says the broker may have "
        "queued it is unsure: retry it with the same Idempotency-Key",
        504: "No answer within TIMEOUT seconds",
    }.items()
}

# Answers only POST /v1/classify gives (with an Idempotency-Key).
CLASSIFY_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "A request with this Idempotency-Key is still in progress; retry "
        "after Retry-After",
    }
}

IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Makes a retry safe: a request with a key already answered (within "
    "IDEMPOTENCY_WINDOW) gets that answer again, with the same ids and the header "
    "Idempotent-Replayed: true, and nothing is queued twice. While the first is running, "
    "409. The same key with another request: 422.",
}

CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "top_k": {"type": "integer"},
                        "callback_url": {"type": "string"},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
        "description": "JSON with base64 images, a multipart upload, or the image file itself "
        "(then top_k and callback_url go in the query string).",
    },
    "parameters": [
        {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "callback_url", "in": "query", "required": False, "schema": {"type": "string"}},
        IDEMPOTENCY_KEY,
    ],
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries for these error statuses."""
    return {code: ERRORS[code] for code in codes}
