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
        422: "Not a decodable image, or invalid fields",
        503: "Broker unreachable or request queue full; retry after Retry-After",
        504: "No answer within TIMEOUT seconds",
    }.items()
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
    ],
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries for these error statuses."""
    return {code: ERRORS[code] for code in codes}
