"""The wire format between ingress, consumers and callbacks, and nothing else.

A request travels as one AMQP message per image: the body is the raw encoded
image (no base64, no JSON around it) and everything else rides in AMQP
properties and headers, so a consumer reads metadata without parsing the body.
A result travels back as a small JSON document; the results of one batch that
belong to the same ingress replica travel together as one JSON array (one publish
and one delivery per batch, not per image).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from rabbit_serve.transport import Outbound

IMAGE_CONTENT_TYPE = "application/octet-stream"
RESULT_CONTENT_TYPE = "application/json"

# Header names, prefixed so they never collide with RabbitMQ's own x- arguments.
H_REQUEST_ID = "rs-request-id"
H_INDEX = "rs-index"
H_TOP_K = "rs-top-k"
# Times travel as integer epoch milliseconds: AMQP table encoders may narrow a
# Python float to 32 bits, which would shift an epoch timestamp by minutes.
H_SENT_AT = "rs-sent-at-ms"
H_DEADLINE = "rs-deadline-ms"
H_CALLBACK_URL = "rs-callback-url"
# Width x height, read from the image header by the ingress: the consumer's batches
# stay within MAX_BATCH_PIXELS without decoding anything. 0 when unknown.
H_PIXELS = "rs-pixels"


class MalformedMessage(ValueError):
    """A message that no consumer can ever process; it must not be requeued."""


# One prediction as it travels: a JSON object with the fields of
# ``rabbit_serve.schemas.Prediction``, the one definition of that shape (its tests hold
# rendered results to it). A plain dict, so the hot path builds no model objects.
Prediction = dict[str, Any]


@dataclass(frozen=True)
class ClassifyTask:
    """One image to classify, as published by the ingress."""

    id: str
    request_id: str
    index: int
    image: bytes
    top_k: int
    sent_at: float
    deadline: float
    reply_to: str | None = None
    callback_url: str | None = None
    pixels: int = 0

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the client stops waiting (negative once it has)."""
        return self.deadline - (time.time() if now is None else now)


def encode_task(task: ClassifyTask) -> Outbound:
    headers: dict[str, Any] = {
        H_REQUEST_ID: task.request_id,
        H_INDEX: task.index,
        H_TOP_K: task.top_k,
        H_SENT_AT: round(task.sent_at * 1000),
        H_DEADLINE: round(task.deadline * 1000),
    }
    if task.callback_url:
        headers[H_CALLBACK_URL] = task.callback_url
    if task.pixels:
        headers[H_PIXELS] = task.pixels
    return Outbound(
        body=task.image,
        message_id=task.id,
        correlation_id=task.id,
        headers=headers,
        content_type=IMAGE_CONTENT_TYPE,
        timestamp=task.sent_at,
        reply_to=task.reply_to,
        expiration=max(task.deadline - task.sent_at, 0.001),
    )


def _header(headers: dict[str, Any], name: str, kind: type) -> Any:
    try:
        value = headers[name]
    except KeyError:
        raise MalformedMessage(f"missing header {name!r}") from None
    if isinstance(value, bytes) and kind is str:
        value = value.decode("utf-8", "replace")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedMessage(f"header {name!r} should be {kind.__name__}, got {value!r}")
    return value


def decode_task(
    body: bytes,
    headers: dict[str, Any] | None,
    message_id: str | None,
    reply_to: str | None,
) -> ClassifyTask:
    """Rebuild a task from a delivery; raises :class:`MalformedMessage` on anything off."""
    headers = headers or {}
    if not message_id:
        raise MalformedMessage("missing message_id")
    if not body:
        raise MalformedMessage("empty body")
    callback_url = headers.get(H_CALLBACK_URL)
    if isinstance(callback_url, bytes):
        callback_url = callback_url.decode("utf-8", "replace")
    if callback_url is not None and not isinstance(callback_url, str):
        raise MalformedMessage(f"header {H_CALLBACK_URL!r} should be str")
    if not reply_to and not callback_url:
        raise MalformedMessage("message names neither reply_to nor a callback URL")
    pixels = headers.get(H_PIXELS, 0)
    if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 0:
        raise MalformedMessage(f"header {H_PIXELS!r} should be a non-negative int")
    top_k = _header(headers, H_TOP_K, int)
    if top_k < 1:
        raise MalformedMessage(f"top_k must be positive, got {top_k}")
    return ClassifyTask(
        id=message_id,
        request_id=_header(headers, H_REQUEST_ID, str),
        index=_header(headers, H_INDEX, int),
        image=bytes(body),
        top_k=top_k,
        sent_at=_header(headers, H_SENT_AT, int) / 1000,
        deadline=_header(headers, H_DEADLINE, int) / 1000,
        reply_to=reply_to or None,
        callback_url=callback_url or None,
        pixels=pixels,
    )


def dead_letter_reason(headers: dict[str, Any] | None) -> str:
    """Why RabbitMQ dead-lettered a message: ``expired``, ``delivery_limit``, ``rejected``,
    ``maxlen``; ``unknown`` if the headers do not say."""
    reason = (headers or {}).get("x-first-death-reason")
    if reason is None:
        deaths = (headers or {}).get("x-death") or []
        if deaths and isinstance(deaths[0], dict):
            reason = deaths[0].get("reason")
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason) if reason else "unknown"


@dataclass(frozen=True)
class ErrorInfo:
    """A per-image failure with the HTTP status the client should see."""

    status: int
    message: str


@dataclass(frozen=True)
class ClassifyResult:
    """The answer for one task, as it travels to the owning ingress replica.

    ``to_dict`` / ``from_dict`` are the internal wire format only; what a client sees
    (HTTP answer or webhook body) is rendered by :mod:`rabbit_serve.render`.
    """

    id: str
    request_id: str
    index: int
    predictions: list[Prediction] | None = None
    error: ErrorInfo | None = None
    batch_size: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "request_id": self.request_id,
            "index": self.index,
            "batch_size": self.batch_size,
            "timings_ms": self.timings_ms,
        }
        if self.error is not None:
            out["error"] = {"status": self.error.status, "message": self.error.message}
        else:
            out["predictions"] = self.predictions or []
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes) -> ClassifyResult:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"undecodable result: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> ClassifyResult:
        try:
            error = raw.get("error")
            return cls(
                id=str(raw["id"]),
                request_id=str(raw["request_id"]),
                index=int(raw["index"]),
                predictions=raw.get("predictions"),
                error=ErrorInfo(int(error["status"]), str(error["message"])) if error else None,
                batch_size=int(raw.get("batch_size", 0)),
                timings_ms=dict(raw.get("timings_ms") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"undecodable result: {exc}") from exc


def encode_reply(results: Sequence[ClassifyResult]) -> bytes:
    """One reply message carrying several results for the same ingress replica."""
    return orjson.dumps([r.to_dict() for r in results])


def decode_reply(data: bytes) -> list[ClassifyResult]:
    """The results in a reply: a JSON array of results, or a single result object."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"undecodable reply: {exc}") from exc
    if isinstance(raw, list):
        if not raw:
            raise MalformedMessage("empty reply")
        return [ClassifyResult.from_dict(item) for item in raw]
    return [ClassifyResult.from_dict(raw)]
