"""A poison image under steady load: a highly compressible 40-megapixel PNG (160 KiB on
the wire, hundreds of MiB once decoded), with CLASSIFIER_MAX_MEMORY_MB set about
150 MiB above a classifier replica's idle memory, and two classifier replicas.

The replica that decodes it passes its memory cap and exits (Serve replaces it). The
consumer splits the failing batch until the image is alone; that image is answered 422
and acked, never retried as a whole batch again, and its batch-mates get their 200s.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
from collections.abc import Callable

import orjson
import psutil
import pytest

from rabbit_serve.local_cluster import App
from tests.faults.chaos import replicas
from tests.faults.load import DEFAULT_MARGIN_S, Load, Payload
from tests.faults.scenario import Fault, under_load

TIMEOUT = 40.0  # the splits wait for replicas Serve restarts
CLIENTS = 8
# One at a time: two poisons sent together (likely in one batch) took over TIMEOUT=40 s
# to isolate on 2 cores (each split kills a replica and waits for Serve's restart), and
# took a batch-mate's answer past TIMEOUT with them (docs/reliability.md, open issues).
POISONS = 1
# Idle resident memory of a warm classifier replica, measured on this machine: 350-447
# MiB after a few seconds of batches of 8 (ONNX Runtime's arena grows with them); the
# test checks the measurement before it relies on it.
IDLE_RSS_MB = 450
MAX_MEMORY_MB = IDLE_RSS_MB + 150


@functools.cache
def poison_png() -> bytes:
    """8000 x 5000 RGBA of one colour: 40 Mpx (the ingress's MAX_IMAGE_PIXELS), ~160 KiB."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (8000, 5000), (200, 30, 30, 128)).save(out, format="PNG", compress_level=9)
    return out.getvalue()


@pytest.fixture
def app(fault_app: Callable[..., App]) -> App:
    return fault_app(
        "poison",
        classifiers=2,
        NUM_CONSUMERS=1,
        TIMEOUT=TIMEOUT,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        CLASSIFIER_MAX_MEMORY_MB=MAX_MEMORY_MB,
    )


async def test_poison_image_is_isolated(app: App) -> None:
    body = orjson.dumps({"image": base64.b64encode(poison_png()).decode(), "top_k": 1})
    idle: list[float] = []

    async def fault(load: Load) -> Fault:
        for replica in await asyncio.to_thread(replicas, app.name, "Classifier"):
            idle.append(psutil.Process(replica.pid).memory_info().rss / 2**20)
        assert max(idle) + 100 < MAX_MEMORY_MB, f"classifier idle RSS {idle} MiB: recalibrate"
        poison = Load(
            app.url,
            [Payload(body, "poison")],
            clients=1,
            count=POISONS,
            request_timeout=TIMEOUT + DEFAULT_MARGIN_S + 10,
            label="poison",
        )
        start = load.now()
        records = await poison.run()
        for r in records:
            r.sent += poison._t0 - load._t0
        return Fault(
            start,
            load.now(),
            {"classifier_idle_rss_mb": [round(x) for x in idle], "cap_mb": MAX_MEMORY_MB},
            records,
        )

    result = await under_load(
        app,
        fault,
        label="poison image, 2 classifier replicas",
        # Only the poison may fail, and only with its 422.
        allowed_if={422: lambda r: r.expected == "poison"},
        clients=CLIENTS,
        fault_at=5.0,
        after_s=8.0,
        # The splits requeue nothing; a batch whose every part failed is requeued whole.
        rework_bound=app.settings.prefetch_count * 2,
    )
    poison = [r for r in result.records if r.expected == "poison"]
    result.report(poison_outcomes=[(r.status, round(r.elapsed, 1)) for r in poison])
    result.check()
    assert [r.status for r in poison] == [422] * POISONS, [(r.status, r.detail) for r in poison]
    assert result.consumers.counts["poison"] >= POISONS, result.consumers.figures()
