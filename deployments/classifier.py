"""The classifier as a Ray Serve deployment: one ONNX Runtime session per replica.

It can sit on CPU or GPU nodes: give it ``num_gpus`` in the Serve config (and
install ``rabbit-serve[gpu]``) and it runs on CUDAExecutionProvider, saying so
in its log and in ``GET /v1/model``. With ``CLASSIFIER_MAX_MEMORY_MB``, a replica that
grows past it exits and Serve replaces it (:mod:`deployments.memory_guard`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import ray
from ray import serve

from deployments.memory_guard import MIB, rss_bytes, start_memory_guard
from deployments.onnx_model import OnnxClassifier, Outcome
from rabbit_serve.meters import BusyMeter
from rabbit_serve.settings import Settings


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    # Each request is a whole batch; a consumer keeps MAX_BATCHES_IN_FLIGHT of them here.
    max_ongoing_requests=16,
    health_check_period_s=10,
)
class Classifier:
    def __init__(self, settings: Settings) -> None:
        self._model = OnnxClassifier(
            settings.model_path,
            name=settings.model_name,
            want_gpu=bool(ray.get_gpu_ids()),
            intra_op_threads=settings.ort_intra_op_threads,
            lone_batch_threads=settings.ort_lone_batch_threads,
            allow_spinning=settings.ort_allow_spinning,
            max_pixels=settings.max_image_pixels,
            preprocess_threads=settings.preprocess_threads or None,
            fast_jpeg_decode=settings.fast_jpeg_decode,
        )
        # Started once the model is loaded: its idle size is the baseline a limit is set by.
        self._max_memory_mb = settings.classifier_max_memory_mb
        self._guard = start_memory_guard(self._max_memory_mb)
        self._busy = BusyMeter()

    async def classify(
        self, images: list[bytes], top_ks: list[int], alone: bool = False
    ) -> list[Outcome]:
        """``alone``: the consumer has nothing else in flight or waiting (see
        :meth:`OnnxClassifier.run`)."""
        self._busy.start(time.monotonic())
        try:
            # ONNX Runtime and PIL release the GIL: off the event loop, batches overlap.
            return await asyncio.to_thread(self._model.classify, images, top_ks, alone)
        finally:
            self._busy.finish(len(images), time.monotonic())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this when the deployment autoscales: images per busy second (what
        this replica can do, measured; left out until it has done a second of work) and
        the share of the last 30 s it was busy."""
        now = time.monotonic()
        stats = {"busy_fraction": self._busy.busy_fraction(now)}
        if (capacity := self._busy.capacity(now)) is not None:
            stats["images_per_busy_s"] = capacity
        return stats

    def info(self) -> dict[str, Any]:
        """The model, and where this replica runs (which node, which GPUs Ray gave it)."""
        return {
            **self._model.info(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def memory(self) -> dict[str, Any]:
        """This replica's resident memory and its limit, in MiB (0: no limit)."""
        rss = rss_bytes()
        return {
            "rss_mb": None if rss is None else round(rss / MIB, 1),
            "max_memory_mb": self._max_memory_mb,
            "pid": os.getpid(),
        }

    def __del__(self) -> None:
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.stop()
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()
