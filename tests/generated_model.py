"""A second model, generated: another input size, normalisation, resize, crop and labels.

A fixed graph whose answer numpy can compute: the per-channel average of the
normalised input (GlobalAveragePool) times a 3 x 10 matrix plus a bias. Its first
three classes are "red", "green" and "blue", so a flat colour gets its own name.
Serving it must take its files alone (an ONNX graph, its spec and a labels file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

NAME = "tiny-colours"
INPUT_SIZE = 160
RESIZE_SHORT_SIDE = 200
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
LABELS = ("red", "green", "blue", "c3", "c4", "c5", "c6", "c7", "c8", "c9")
# Column k scores class k from the three channel averages.
WEIGHTS = np.zeros((3, len(LABELS)), dtype=np.float32)
WEIGHTS[:, :3] = [[1.5, -0.75, -0.75], [-0.75, 1.5, -0.75], [-0.75, -0.75, 1.5]]
WEIGHTS[:, 3:] = np.random.default_rng(0).normal(0, 0.5, (3, len(LABELS) - 3))
BIAS = np.linspace(-1, -2, len(LABELS), dtype=np.float32)

SPEC = {
    "name": NAME,
    "input_size": INPUT_SIZE,
    "resize_short_side": RESIZE_SHORT_SIDE,
    "crop": INPUT_SIZE,
    "mean": list(MEAN),
    "std": list(STD),
    "layout": "NCHW",
    "color": "RGB",
    "num_classes": len(LABELS),
    "labels": "labels.txt",
}


def write_model(
    directory: Path, *, spatial: tuple[int | str, int | str] = (INPUT_SIZE, INPUT_SIZE)
) -> Path:
    """The ONNX file, its spec and its labels in ``directory``; returns the ONNX path.

    ``spatial`` may name symbolic axes (a graph that takes any size).
    """
    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("Gemm", ["features", "weights", "bias"], ["scores"]),
        ],
        "tiny_colours",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, *spatial])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[
            numpy_helper.from_array(WEIGHTS, "weights"),
            numpy_helper.from_array(BIAS, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = directory / "tiny_colours.onnx"
    onnx.save(model, str(path))
    path.with_suffix(".json").write_text(json.dumps(SPEC, indent=2), encoding="utf-8")
    (directory / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    return path


def expected_scores(
    image: Image.Image,
    resize_short_side: int = RESIZE_SHORT_SIDE,
    crop: int = INPUT_SIZE,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> np.ndarray:
    """What the model must answer for ``image``: its spec's preprocessing (or the one
    given), then the graph, both written plainly in numpy."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resize_short_side / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    cropped = resized.crop((left, top, left + crop, top + crop))
    normalised = (np.asarray(cropped, dtype=np.float64) - mean) / std
    logits = normalised.mean(axis=(0, 1)) @ WEIGHTS.astype(np.float64) + BIAS
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def framed(
    size: tuple[int, int], inner: tuple[int, int, int], outer: tuple[int, int, int]
) -> Image.Image:
    """A centre square (60 % of the short side) of one colour on another: how much of
    each the model sees depends on where the resize and the crop fall."""
    image = Image.new("RGB", size, outer)
    side = round(0.6 * min(size))
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    image.paste(inner, (left, top, left + side, top + side))
    return image
