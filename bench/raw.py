"""The raw limit: ONNX Runtime alone (decode + preprocess + inference) in this process,
the ceiling any serving stack on this machine is measured against."""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

from bench.load import IMAGE
from deployments.onnx_model import OnnxClassifier
from rabbit_serve.settings import Settings

BATCHES = (1, 4, 8, 16, 32)
SINGLE_IMAGE_CALLS = 30


def _raw_point(
    model: OnnxClassifier, image: bytes, batch: int, streams: int, seconds: float
) -> tuple[float, float]:
    """Images/s and CPU ms per image of ``streams`` threads calling classify in a loop."""
    images, top_ks = [image] * batch, [5] * batch
    model.classify(images, top_ks)
    counts = [0] * streams
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            model.classify(images, top_ks)
            counts[i] += batch

    started, cpu_started = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    count = sum(counts)
    cpu_ms = (time.process_time() - cpu_started) * 1000 / count
    return count / (time.perf_counter() - started), cpu_ms


def raw_limit(seconds: float) -> dict[str, Any]:
    """The best images/s over batch sizes and two thread layouts (one batch at a time on
    every core, or one batch per core on one thread each), and the single-image latency."""
    image = IMAGE.read_bytes()
    cores = os.cpu_count() or 1
    layouts = {"all_cores_one_batch": (0, 1), f"one_thread_{cores}_batches": (1, cores)}
    out: dict[str, Any] = {"points": [], "single_image_ms_p50": float("inf")}
    best = 0.0
    for layout, (threads, streams) in layouts.items():
        model = OnnxClassifier(Settings().model_path, intra_op_threads=threads)
        single = []
        for _ in range(SINGLE_IMAGE_CALLS):
            started = time.perf_counter()
            model.classify([image], [5])
            single.append(time.perf_counter() - started)
        out["single_image_ms_p50"] = min(
            out["single_image_ms_p50"], statistics.median(single) * 1000
        )
        for batch in BATCHES:
            rate, cpu_ms = _raw_point(model, image, batch, streams, seconds)
            out["points"].append(
                {"layout": layout, "batch": batch, "images_per_s": rate, "cpu_ms_per_image": cpu_ms}
            )
            if rate > best:
                best = rate
                # What an image costs the model itself: the floor for any serving stack.
                out.update(best_images_per_s=rate, cpu_ms_per_image=cpu_ms, best=(layout, batch))
        model.close()
    return out
