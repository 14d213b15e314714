"""The public API's bodies: what clients send and receive, over HTTP and webhooks.

These models are the one definition of every client-facing shape: FastAPI builds the
OpenAPI schema from them, and :mod:`rabbit_serve.render` writes exactly these shapes
(its tests validate every rendered body against the models and the schema).
Response models forbid extra keys, so a field rendered but not declared here, or
declared but never rendered, fails a test instead of drifting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rabbit_serve.model_spec import ModelSpec

_STRICT = ConfigDict(extra="forbid")


class ClassifyRequest(BaseModel):
    """Exactly one of ``image`` or ``images``."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="Base64 image (a data: URI prefix is accepted).")
    images: list[str] | None = Field(None, description="Several base64 images in one request.")
    top_k: int | None = Field(
        None, strict=True, description="How many predictions per image (default 5)."
    )
    callback_url: str | None = Field(
        None, description="If set: answer 202 at once and POST each result to this URL."
    )


class Prediction(BaseModel):
    model_config = _STRICT

    class_id: int
    label: str
    score: float


class ImageError(BaseModel):
    """Why one image got no predictions, with the HTTP status it would have had alone."""

    model_config = _STRICT

    status: int
    message: str


class ImageResult(BaseModel):
    """One image of a multi-image request: ``predictions`` or ``error``."""

    model_config = _STRICT

    index: int
    batch_size: int | None = None
    predictions: list[Prediction] | None = None
    error: ImageError | None = None


class ClassifyResponse(BaseModel):
    model_config = _STRICT

    id: str
    model: str
    predictions: list[Prediction]
    batch_size: int = Field(description="How many images shared the model call.")
    timings_ms: dict[str, float]


class MultiClassifyResponse(BaseModel):
    model_config = _STRICT

    id: str
    model: str
    results: list[ImageResult]
    timings_ms: dict[str, float]


class AcceptedResponse(BaseModel):
    model_config = _STRICT

    id: str
    status: str = "accepted"
    callback_url: str
    task_ids: list[str]


class WebhookResult(BaseModel):
    """The JSON POSTed to a ``callback_url``, one per image: ``predictions`` or ``error``."""

    model_config = _STRICT

    id: str = Field(description="The task id, also sent as X-Rabbit-Serve-Id.")
    request_id: str = Field(description="The id the 202 answer gave.")
    index: int
    model: str
    predictions: list[Prediction] | None = None
    error: ImageError | None = None
    batch_size: int
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    model_config = _STRICT

    detail: str


class HealthResponse(BaseModel):
    model_config = _STRICT

    status: str = Field(description="'ok' or 'unavailable'.")
    broker: bool
    classifier: bool
    reason: str | None = Field(None, description="Only when unavailable: why.")


class StatsResponse(BaseModel):
    model_config = _STRICT

    pending: int
    delivered: int
    late_results: int
    malformed_results: int
    broker: bool
    reply_queue: str


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    path: str
    sha256: str
    provider: str
    providers_available: list[str]
    input_name: str
    input_shape: list[int | str | None]
    num_classes: int
    spec: ModelSpec = Field(description="The model's spec: its input contract and labels.")
    fast_jpeg_decode: bool = Field(
        description="Large JPEGs are decoded at a reduced scale (FAST_JPEG_DECODE)."
    )
    node_id: str
    gpu_ids: list[str]
