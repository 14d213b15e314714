"""The pure half of :mod:`rabbit_serve.client`: errors, the retry policy, turning an input
into request bytes and an answer into typed results. No network I/O (only
:func:`image_bytes` reads a file), so every rule is unit-tested without a server; the sync
and async clients share all of it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import orjson
from PIL import Image

from rabbit_serve.schemas import ClassifyResponse, HealthResponse, ModelInfo, Prediction

__all__ = [
    "Classification",
    "ClassifyError",
    "ImageInput",
    "Prediction",
    "RabbitServeError",
    "RequestRejected",
    "RetryPolicy",
    "ServerError",
    "TimedOut",
    "Unauthorized",
    "Unavailable",
]

# What classify() takes: a file's path, the encoded file itself, or a decoded PIL image.
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image
# The service's answer models are the one definition of its shapes (see schemas.py).
Classification = ClassifyResponse
# Answers that are worth another try after Retry-After: nothing was queued (503), this
# key is over its limits (429), the same Idempotency-Key is still running (409).
RETRYABLE = frozenset({409, 429, 503})


class RabbitServeError(Exception):
    """Any failure of a request; ``status`` is the HTTP status (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.message = message
        self.status = status


class RequestRejected(RabbitServeError):
    """A 4xx: the request itself is wrong (not an image, too large, bad top_k); retrying
    the same request gets the same answer."""


class Unauthorized(RequestRejected):
    """401: keys are on and the request carried no valid one."""


class TimedOut(RabbitServeError):
    """504 (or Serve's 408): no answer within the service's TIMEOUT."""


class Unavailable(RabbitServeError):
    """503/429/409 after every retry, or the service could not be reached at all."""


class ServerError(RabbitServeError):
    """Any other 5xx."""


# ``ClassifyError`` reads better at a call site that catches everything.
ClassifyError = RabbitServeError


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before try ``attempt + 1`` (``attempt`` counts from 0).

    The wait is the larger of the server's ``Retry-After`` and an exponential backoff,
    never over ``max_delay``: the server knows when a token bucket refills, the backoff
    keeps many clients from coming back in lockstep after a broker outage. ``jitter`` is
    the fraction of the wait that is randomised.
    """

    max_attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 10.0
    jitter: float = 0.2

    def delay(self, attempt: int, retry_after: str | None, random: float = 0.5) -> float:
        """``random`` in [0, 1): the caller's random draw (0.5 means no jitter)."""
        backoff = self.base_delay * (2**attempt)
        hinted = parse_retry_after(retry_after)
        wait = max(backoff, hinted or 0.0)
        wait *= 1 + self.jitter * (2 * random - 1)
        return min(self.max_delay, max(0.0, wait))

    def should_retry(self, attempt: int, status: int | None) -> bool:
        """``status`` None: the request never got an answer (connection refused or
        dropped). Classification is a pure function of the image, so a repeat after a
        lost answer costs work, never a wrong result."""
        if attempt + 1 >= self.max_attempts:
            return False
        return status is None or status in RETRYABLE


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; the service sends whole seconds. An HTTP
    date or garbage means no hint."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


def image_bytes(image: ImageInput) -> bytes:
    """The encoded file to send. Blocking (reads files, encodes images): the async client
    calls it on a worker thread."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, Image.Image):
        return encode_pil(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    raise TypeError(f"cannot classify a {type(image).__name__}: give a path, bytes or PIL image")


def encode_pil(image: Image.Image) -> bytes:
    """PNG, lossless, for images with alpha or a palette; JPEG at quality 95 otherwise: a
    photo as PNG can be several times larger than MAX_IMAGE_BYTES allows, and the model
    sees it at 224x224, where q95 changes no prediction."""
    buffer = io.BytesIO()
    if image.mode in ("RGB", "L"):
        image.save(buffer, "JPEG", quality=95)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def error_message(body: bytes) -> str:
    """The text of an error answer: ``{"detail"}`` on /v1, ``{"error"}`` on /v2."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for field in ("detail", "error"):
            if isinstance(data.get(field), str):
                return data[field]
    text = body[:300].decode("utf-8", "replace").strip()
    return text or "no message"


def error_for(status: int, body: bytes) -> RabbitServeError:
    """The exception for a non-2xx answer."""
    message = error_message(body)
    if status == 401:
        return Unauthorized(message, status)
    if status in (408, 504):
        return TimedOut(message, status)
    if status in RETRYABLE:
        return Unavailable(message, status)
    if 400 <= status < 500:
        return RequestRejected(message, status)
    return ServerError(message, status)


def classification(body: bytes) -> Classification:
    """A 200 from ``POST /v1/classify`` with one image."""
    return ClassifyResponse.model_validate_json(body)


def health(body: bytes) -> HealthResponse:
    """``/healthz``: its 503 carries the same body, with the reason."""
    return HealthResponse.model_validate_json(body)


def model_info(body: bytes) -> ModelInfo:
    return ModelInfo.model_validate_json(body)


def classify_params(top_k: int | None) -> dict[str, Any]:
    return {} if top_k is None else {"top_k": str(top_k)}


def headers(api_key: str | None) -> dict[str, str]:
    """The raw file as the body: no base64 and no form to parse, the cheapest way in."""
    out = {"content-type": "application/octet-stream"}
    if api_key:
        out["authorization"] = f"Bearer {api_key}"
    return out
