"""The HTTP API's request and response bodies (they also make the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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


class PredictionOut(BaseModel):
    class_id: int
    label: str
    score: float


class ErrorOut(BaseModel):
    status: int
    message: str


class ImageResult(BaseModel):
    index: int
    batch_size: int | None = None
    predictions: list[PredictionOut] | None = None
    error: ErrorOut | None = None


class ClassifyResponse(BaseModel):
    id: str
    model: str
    predictions: list[PredictionOut]
    batch_size: int = Field(description="How many images shared the model call.")
    timings_ms: dict[str, float]


class MultiClassifyResponse(BaseModel):
    id: str
    model: str
    results: list[ImageResult]
    timings_ms: dict[str, float]


class AcceptedResponse(BaseModel):
    id: str
    status: str = "accepted"
    callback_url: str
    task_ids: list[str]


class ErrorResponse(BaseModel):
    detail: str


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
    node_id: str
    gpu_ids: list[str]
