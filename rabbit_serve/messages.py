"""The wire format between ingress, consumers and callbacks, and nothing else.

A one-image request is one AMQP message: the body is the raw image (no base64, no
JSON) and the rest rides in properties and headers, read without parsing the body. N > 1
images are one *bundle* message (:func:`encode_bundle`): the images concatenated, their
lengths in a header, so one confirm queues all or none (a 503 never leaves part queued).
A result travels back as a small JSON document; the results of one batch for the same
ingress replica travel as one JSON array (one publish and one delivery per batch).
"""

from __future__ import annotations

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
# Width x height from the image header: batches keep to MAX_BATCH_PIXELS without
# decoding anything. 0 when unknown. A bundle: each image's byte length and pixel
# count, in order; its message_id is the request id, part i the task f"{request_id}-{i}".
H_PIXELS = "rs-pixels"
H_SIZES = "rs-sizes"
H_PIXELS_LIST = "rs-pixels-list"


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
    # ``deadline``, the ingress's clock, is never compared with a consumer's: it only sets
    # the message's TTL (deadline - sent_at), which the broker counts from enqueue.


def _request_headers(task: ClassifyTask) -> dict[str, Any]:
    headers: dict[str, Any] = {
        H_REQUEST_ID: task.request_id,
        H_TOP_K: task.top_k,
        H_SENT_AT: round(task.sent_at * 1000),
        H_DEADLINE: round(task.deadline * 1000),
    }
    if task.callback_url:
        headers[H_CALLBACK_URL] = task.callback_url
    return headers


def _outbound(task: ClassifyTask, body: bytes, message_id: str, headers: dict) -> Outbound:
    return Outbound(
        body=body,
        message_id=message_id,
        correlation_id=message_id,
        headers=headers,
        content_type=IMAGE_CONTENT_TYPE,
        timestamp=task.sent_at,
        reply_to=task.reply_to,
        # Measured by the broker's clock from enqueue: expiry never compares two clocks.
        expiration=max(task.deadline - task.sent_at, 0.001),
    )


def encode_task(task: ClassifyTask) -> Outbound:
    headers = _request_headers(task)
    headers[H_INDEX] = task.index
    if task.pixels:
        headers[H_PIXELS] = task.pixels
    return _outbound(task, task.image, task.id, headers)


def encode_bundle(tasks: Sequence[ClassifyTask]) -> Outbound:
    """The tasks of one request (same request id, options and times) as one message."""
    first = tasks[0]
    headers = _request_headers(first)
    headers[H_SIZES] = [len(t.image) for t in tasks]
    headers[H_PIXELS_LIST] = [t.pixels for t in tasks]
    return _outbound(first, b"".join(t.image for t in tasks), first.request_id, headers)


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


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _counts(headers: dict[str, Any], name: str) -> list[int]:
    value = headers.get(name)
    if not isinstance(value, (list, tuple)) or not all(_count(v) for v in value):
        raise MalformedMessage(f"header {name!r} should be a list of non-negative ints")
    return list(value)


def _common(headers: dict[str, Any], reply_to: str | None) -> dict[str, Any]:
    """The fields every task of a message shares, validated."""
    callback_url = headers.get(H_CALLBACK_URL)
    if isinstance(callback_url, bytes):
        callback_url = callback_url.decode("utf-8", "replace")
    if callback_url is not None and not isinstance(callback_url, str):
        raise MalformedMessage(f"header {H_CALLBACK_URL!r} should be str")
    if not reply_to and not callback_url:
        raise MalformedMessage("message names neither reply_to nor a callback URL")
    top_k = _header(headers, H_TOP_K, int)
    if top_k < 1:
        raise MalformedMessage(f"top_k must be positive, got {top_k}")
    return {
        "request_id": _header(headers, H_REQUEST_ID, str),
        "top_k": top_k,
        "sent_at": _header(headers, H_SENT_AT, int) / 1000,
        "deadline": _header(headers, H_DEADLINE, int) / 1000,
        "reply_to": reply_to or None,
        "callback_url": callback_url or None,
    }


# Every decoder takes (body, headers, message_id, reply_to) of a delivery and raises
# MalformedMessage on anything off.
Headers = dict[str, Any] | None


def decode_task(
    body: bytes, headers: Headers, message_id: str | None, reply_to: str | None
) -> ClassifyTask:
    """A one-image message's task."""
    headers = headers or {}
    if not message_id:
        raise MalformedMessage("missing message_id")
    if not body:
        raise MalformedMessage("empty body")
    if not _count(pixels := headers.get(H_PIXELS, 0)):
        raise MalformedMessage(f"header {H_PIXELS!r} should be a non-negative int")
    index = _header(headers, H_INDEX, int)
    common = _common(headers, reply_to)
    return ClassifyTask(message_id, index=index, image=bytes(body), pixels=pixels, **common)


def decode_bundle(
    body: bytes, headers: Headers, message_id: str | None, reply_to: str | None
) -> list[ClassifyTask]:
    """A bundle's tasks, in order: sizes must cut the body into non-empty parts."""
    headers = headers or {}
    common = _common(headers, reply_to)
    rid = common["request_id"]
    if message_id != rid:
        raise MalformedMessage("a bundle's message_id must be its request id")
    sizes = _counts(headers, H_SIZES)
    pixels = _counts(headers, H_PIXELS_LIST) if H_PIXELS_LIST in headers else [0] * len(sizes)
    if not sizes or 0 in sizes or sum(sizes) != len(body) or len(pixels) != len(sizes):
        raise MalformedMessage(f"bundle of {len(body)} bytes, sizes {sizes}, pixels {pixels}")
    body, tasks, start = bytes(body), [], 0
    for i, (size, count) in enumerate(zip(sizes, pixels, strict=True)):
        image, start = body[start : start + size], start + size
        tasks.append(ClassifyTask(f"{rid}-{i}", index=i, image=image, pixels=count, **common))
    return tasks


def decode_tasks(
    body: bytes, headers: Headers, message_id: str | None, reply_to: str | None
) -> list[ClassifyTask]:
    """The tasks of a request message of either kind (one image, or a bundle)."""
    if H_SIZES in (headers or {}):
        return decode_bundle(body, headers, message_id, reply_to)
    return [decode_task(body, headers, message_id, reply_to)]


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
    """The answer for one task, as it travels to the owning ingress replica: the
    internal format only; what a client sees is rendered by :mod:`rabbit_serve.render`."""

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
        return cls.from_dict(_loads(data, "result"))

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


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"undecodable {what}: {exc}") from exc


def decode_reply(data: bytes) -> list[ClassifyResult]:
    """The results in a reply: a JSON array of results, or a single result object."""
    raw = _loads(data, "reply")
    if isinstance(raw, list):
        if not raw:
            raise MalformedMessage("empty reply")
        return [ClassifyResult.from_dict(item) for item in raw]
    return [ClassifyResult.from_dict(raw)]
