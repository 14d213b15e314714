"""What a good export is: the checks ``scripts/export_model.py`` fails the export on.

The graph must have the interface the service relies on, ONNX Runtime must agree
with PyTorch, and the two reference photos must get their classes through the
preprocessing the spec describes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import torch
from PIL import Image
from skimage import data as skdata

from deployments.onnx_model import check_interface as check_against_spec
from rabbit_serve.labels import imagenet_labels
from rabbit_serve.model_spec import ModelSpec
from rabbit_serve.postprocessing import softmax
from rabbit_serve.preprocessing import resize_and_crop, to_tensor

LOG = logging.getLogger("export_model")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# ORT 1.31 runs opsets up to well beyond 18; 18 is the lowest opset the dynamo
# exporter emits natively, so no ONNX version conversion pass is involved.
OPSET = 18

# Max |onnx - torch| on logits (typical magnitude ~10). Observed diffs are
# ~1e-5; this leaves headroom for different CPU kernels without hiding bugs.
ATOL = 1e-3
RTOL = 1e-3

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Reference:
    """A reference photo and the ImageNet class ids that count as correct."""

    name: str
    expected: frozenset[int]


REFERENCES = (
    # 281..285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    Reference("chelsea", frozenset(range(281, 286))),
    Reference("coffee", frozenset({967})),  # espresso
)


def reference_preprocess(image: Image.Image, spec: ModelSpec) -> FloatArray:
    """The spec's preprocessing contract, written the plain way (models/PROVENANCE.md).

    RGB -> resize the whole image so the short side is ``resize_short_side`` (PIL
    bilinear, long side rounded to nearest) -> centre crop (offset
    floor((size - crop) / 2)) -> (pixel - mean) / std as float32 -> CHW.
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = spec.resize_short_side / min(width, height)
    new_size = (max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BILINEAR)
    left = (new_size[0] - spec.crop) // 2
    top = (new_size[1] - spec.crop) // 2
    image = image.crop((left, top, left + spec.crop, top + spec.crop))
    pixels = np.asarray(image, dtype=np.float32)
    normalised = (pixels - np.float32(spec.mean)) / np.float32(spec.std)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def check_interface(path: Path, spec: ModelSpec) -> None:
    """Validate the ONNX file, its opset and names, and its shapes against ``spec``."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise RuntimeError(f"unexpected opset imports: {opsets}")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise RuntimeError("model references external data")

    def describe(value: onnx.ValueInfoProto) -> tuple[str, int, list[int | str]]:
        tensor = value.type.tensor_type
        dims: list[int | str] = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return value.name, tensor.elem_type, dims

    inputs = [describe(v) for v in model.graph.input]
    outputs = [describe(v) for v in model.graph.output]
    f32 = onnx.TensorProto.FLOAT
    if len(inputs) != 1 or inputs[0][:2] != (INPUT_NAME, f32):
        raise RuntimeError(f"unexpected inputs: {inputs}")
    if len(outputs) != 1 or outputs[0][:2] != (OUTPUT_NAME, f32):
        raise RuntimeError(f"unexpected outputs: {outputs}")
    # The spatial size is fixed (static SAME padding), so it must be spelled out exactly.
    if inputs[0][2][1:] != spec.input_shape or outputs[0][2][1:] != [spec.num_classes]:
        raise RuntimeError(f"{inputs[0]} -> {outputs[0]} is not what the spec says")
    # The very check the classifier makes at start-up.
    check_against_spec(spec, inputs[0][2], outputs[0][2], path)
    if not isinstance(inputs[0][2][0], str) or inputs[0][2][0] != outputs[0][2][0]:
        raise RuntimeError(f"batch axis is not symbolic/shared: {inputs} -> {outputs}")
    LOG.info("interface ok: opset %s, %s -> %s", OPSET, inputs[0], outputs[0])


def make_session(path: Path) -> ort.InferenceSession:
    """Open a CPU-only ONNX Runtime session."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, batch: FloatArray) -> FloatArray:
    """Run one batch through ONNX Runtime and return the logits."""
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    return np.asarray(logits, dtype=np.float32)


def reference_photos(spec: ModelSpec) -> dict[str, FloatArray]:
    """The bundled scikit-image reference photos, preprocessed by the contract.

    Fails unless the service's own (one-pass) preprocessing gives the same input
    within one grey level: the spec is only worth checking if it is what is served.
    """
    out: dict[str, FloatArray] = {}
    for ref in REFERENCES:
        image = Image.fromarray(getattr(skdata, ref.name)())
        out[ref.name] = reference_preprocess(image, spec)
        served = to_tensor(resize_and_crop(image, spec), spec)
        grey_levels = float(np.abs(served - out[ref.name]).max() * np.float32(spec.std).max())
        if grey_levels > 1.0 + 1e-3:
            raise RuntimeError(f"{ref.name}: served input is {grey_levels:.1f} grey levels off")
    return out


def verify_parity(
    model: torch.nn.Module, session: ort.InferenceSession, photos: FloatArray, spec: ModelSpec
) -> float:
    """Check ONNX Runtime matches PyTorch for batch 1 and batch 4.

    Returns the largest absolute logit difference seen.
    """
    rng = np.random.default_rng(0)
    random = rng.uniform(-1.0, 1.0, size=(3, *spec.input_shape)).astype(np.float32)
    batches = {
        1: random[:1],
        4: np.concatenate([photos, random[1:]], axis=0)[:4],
    }
    worst = 0.0
    for size, batch in batches.items():
        assert batch.shape[0] == size
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        actual = run_onnx(session, batch)
        if actual.shape != (size, spec.num_classes):
            raise RuntimeError(f"batch {size}: unexpected output shape {actual.shape}")
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
        if not np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1)):
            raise RuntimeError(f"batch {size}: top-1 differs between torch and onnxruntime")
        diff = float(np.max(np.abs(actual - expected)))
        LOG.info("parity batch %d: max |onnx - torch| = %.3g", size, diff)
        worst = max(worst, diff)
    return worst


def label(class_id: int) -> str:
    """First synonym of the original ImageNet-1k label, e.g. 282 -> 'tiger cat'."""
    return imagenet_labels()[class_id].split(",", maxsplit=1)[0]


def verify_references(session: ort.InferenceSession, photos: dict[str, FloatArray]) -> list[str]:
    """Classify the reference photos and fail unless top-1 is as expected.

    Returns Markdown lines describing the top-5 for each photo.
    """
    lines: list[str] = []
    for ref in REFERENCES:
        probs = softmax(run_onnx(session, photos[ref.name][None]))[0]
        top5 = [int(i) for i in np.argsort(-probs)[:5]]
        described = ", ".join(f"{i} {label(i)} ({probs[i]:.4f})" for i in top5)
        LOG.info("%s top-5: %s", ref.name, described)
        if top5[0] not in ref.expected:
            expected = sorted(ref.expected)
            msg = f"{ref.name}: top-1 not in {expected}; top-5: {described}"
            raise RuntimeError(msg)
        lines.append(f"- `skimage.data.{ref.name}()` top-5 (id label softmax): {described}")
    return lines
