"""An ONNX Runtime image classifier: encoded images in, ranked predictions out.

No Ray here, so it is tested directly; :mod:`deployments.classifier` wraps it in
a Serve deployment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rabbit_serve.errors import ClientError
from rabbit_serve.labels import load_labels
from rabbit_serve.messages import ErrorInfo, Prediction
from rabbit_serve.model_spec import ModelSpec, load_spec, spec_path
from rabbit_serve.postprocessing import softmax, top_k
from rabbit_serve.preprocessing import preprocess

logger = logging.getLogger("rabbit_serve.classifier")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

Outcome = list[Prediction] | ErrorInfo


def choose_providers(want_gpu: bool, available: list[str]) -> list[str]:
    """CUDA first when a GPU was granted and the CUDA build is installed, else CPU."""
    if want_gpu:
        if CUDA in available:
            return [CUDA, CPU]
        logger.warning(
            "a GPU was requested but ONNX Runtime has no %s (install rabbit-serve[gpu]); "
            "running on the CPU",
            CUDA,
        )
    return [CPU]


def _session(
    model_path: Path, providers: list[str], intra_op_threads: int, allow_spinning: bool
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # An explicit count also keeps ONNX Runtime from pinning its threads to cores, which
    # stalls them when the ingress, consumers and broker share those cores.
    options.intra_op_num_threads = intra_op_threads
    # Spin-waiting burns cores that the ingress and consumers share with us.
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)


def check_interface(
    spec: ModelSpec, input_shape: list[Any], output_shape: list[Any], model_path: Path
) -> None:
    """The ONNX graph must take what the spec says and give one score per class.

    A symbolic (named) axis accepts any size, so only fixed sizes are compared.
    """
    expected = ["N", *spec.input_shape]
    if len(input_shape) != len(expected) or any(
        isinstance(got, int) and got != want
        for got, want in zip(input_shape[1:], expected[1:], strict=True)
    ):
        raise ValueError(
            f"{model_path} takes input {input_shape}; its spec "
            f"{spec_path(model_path).name} says {expected}"
        )
    classes = output_shape[-1] if output_shape else None
    if len(output_shape) != 2 or (isinstance(classes, int) and classes != spec.num_classes):
        raise ValueError(
            f"{model_path} gives output {output_shape}; its spec says [N, {spec.num_classes}]"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxClassifier:
    def __init__(
        self,
        model_path: Path,
        *,
        name: str = "model",
        want_gpu: bool = False,
        intra_op_threads: int = 0,
        lone_batch_threads: int = 0,
        allow_spinning: bool = False,
        max_pixels: int = 40_000_000,
        preprocess_threads: int | None = None,
        fast_jpeg_decode: bool = False,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"MODEL_PATH {model_path} does not exist")
        self.spec = load_spec(model_path)
        self.labels = load_labels(
            self.spec.labels, spec_path(model_path).parent, self.spec.num_classes
        )
        self.providers_available = ort.get_available_providers()
        providers = choose_providers(want_gpu, self.providers_available)
        self.session = _session(model_path, providers, intra_op_threads, allow_spinning)
        self.provider = self.session.get_providers()[0]
        # One thread per batch suits a busy CPU classifier (batches side by side), but
        # holds a lone request to one core: a second session with more threads takes the
        # batches that find no other batch running.
        self._lone_session: ort.InferenceSession | None = None
        if self.provider == CPU and 0 < intra_op_threads < lone_batch_threads:
            self._lone_session = _session(model_path, providers, lone_batch_threads, allow_spinning)
        self._running = 0
        self._running_lock = threading.Lock()
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = list(model_input.shape)
        check_interface(
            self.spec, self.input_shape, list(self.session.get_outputs()[0].shape), model_path
        )
        self.num_classes = self.spec.num_classes
        self.name = name
        self.model_path = model_path
        self.sha256 = file_sha256(model_path)
        self.max_pixels = max_pixels
        self.fast_jpeg_decode = fast_jpeg_decode
        # PIL releases the GIL while decoding and resizing, so threads help.
        self._pool = ThreadPoolExecutor(
            max_workers=preprocess_threads or min(4, os.cpu_count() or 1),
            thread_name_prefix="preprocess",
        )
        logger.info("loaded %s (%s) on %s", name, model_path, self.provider)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.model_path),
            "sha256": self.sha256,
            "provider": self.provider,
            "providers_available": self.providers_available,
            "input_name": self.input_name,
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "spec": self.spec.model_dump(mode="json"),
            "fast_jpeg_decode": self.fast_jpeg_decode,
        }

    def _preprocess_one(self, data: bytes) -> np.ndarray | ErrorInfo:
        try:
            return preprocess(data, self.spec, self.max_pixels, self.fast_jpeg_decode)
        except ClientError as exc:
            return ErrorInfo(exc.status, exc.message)
        except Exception as exc:  # a decoder bug must fail one image, not the batch
            return ErrorInfo(422, f"image could not be decoded: {exc}")

    def run(self, tensor: np.ndarray, alone: bool = False) -> np.ndarray:
        """Raw logits for an ``[N, *spec.input_shape]`` float32 batch.

        ``alone``: the caller has no other batch on the way, so if none is running here
        either, the batch may take the lone-batch session's extra threads. Under load
        that would put more threads than cores to work (5 % fewer images/s measured).
        """
        with self._running_lock:
            session = self.session
            if alone and self._running == 0 and self._lone_session is not None:
                session = self._lone_session
            self._running += 1
        try:
            return session.run(None, {self.input_name: tensor})[0]
        finally:
            with self._running_lock:
                self._running -= 1

    def classify(
        self, images: list[bytes], top_ks: list[int], alone: bool = False
    ) -> list[Outcome]:
        """One outcome per image: its predictions, or why it could not be classified."""
        # The calling thread decodes the first image itself instead of idling while the
        # pool works: a lone image never changes threads at all.
        rest = [self._pool.submit(self._preprocess_one, data) for data in images[1:]]
        prepared = [self._preprocess_one(images[0])] if images else []
        prepared += [future.result() for future in rest]
        good = [i for i, p in enumerate(prepared) if isinstance(p, np.ndarray)]
        outcomes: list[Outcome] = [p if isinstance(p, ErrorInfo) else [] for p in prepared]
        if good:
            batch = np.stack([prepared[i] for i in good])
            probabilities = softmax(self.run(batch, alone))
            for row, i in enumerate(good):
                outcomes[i] = top_k(probabilities[row], top_ks[i], self.labels)
        return outcomes

    def close(self) -> None:
        self._pool.shutdown(wait=False)
