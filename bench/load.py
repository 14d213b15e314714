"""Load points: wrk against an HTTP endpoint, with CPU per request and memory by role,
the batch sizes the pipeline's consumer formed, and rounds folded into medians."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cpu import cpu_per_request_ms, snapshot

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "images" / "chelsea.jpg"
LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "rb"); local body = f:read("*all"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f %.3f %.3f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""
RESULT = re.compile(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)")


def write_load_files(directory: Path) -> tuple[Path, Path]:
    """The base64 JSON body of the bench image and wrk's Lua script, under ``directory``."""
    body, script = directory / "body.json", directory / "post.lua"
    body.write_text(json.dumps({"image": base64.b64encode(IMAGE.read_bytes()).decode()}))
    script.write_text(LUA)
    return body, script


def wait_answering(url: str) -> None:
    """Until ``url`` classifies the bench image: health alone does not mean warm."""
    image = base64.b64encode(IMAGE.read_bytes()).decode()
    for _ in range(240):
        try:
            if httpx.post(url, json={"image": image}, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} never answered")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(
    url: str, concurrency: int, seconds: int, body: Path, script: Path, app: str | None = None
) -> dict[str, Any]:
    """One load point: wrk's figures, plus CPU per request and memory by role (of ``app``'s
    replicas and the shared processes)."""
    threads = min(concurrency, 2)
    before, wrk_before = snapshot(app), _children_cpu_s()
    result = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "BENCH_BODY": str(body),
            "BENCH_TYPE": "application/json" if body.suffix == ".json" else "image/jpeg",
        },
        check=True,
    )
    after = snapshot(app)
    match = RESULT.search(result.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    requests, errors, duration_us = (int(match[i]) for i in (1, 2, 3))
    cpu = cpu_per_request_ms(before, after, requests)
    # wrk has exited by the second snapshot; its CPU comes from the rusage of children.
    cpu["load_generator"] = (_children_cpu_s() - wrk_before) * 1000 / max(requests, 1)
    return {
        "concurrency": concurrency,
        "images_per_s": (requests - errors) / (duration_us / 1e6),
        "errors": errors,
        "p50_ms": float(match[4]),
        "p95_ms": float(match[5]),
        "p99_ms": float(match[6]),
        "cpu_ms_per_request": {k: round(v, 3) for k, v in cpu.items()},
        "rss_mb": {k: round(v) for k, v in after.rss_mb.items()},
    }


@functools.cache
def _driver_loop() -> asyncio.AbstractEventLoop:
    """Serve's throughput-optimized mode runs a handle's router on the caller's event loop,
    so the driver keeps one loop alive on a thread for its handle calls (from first use)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="bench-handles", daemon=True).start()
    return loop


def batch_sizes(app: str) -> dict[int, int]:
    """How many batches of each size the (single) consumer of ``app`` has sent so far."""
    from ray import serve  # after the caller set Ray's environment (local_cluster)

    async def ask() -> dict[int, int]:
        consumers = serve.get_deployment_handle("BatchingConsumer", app_name=app)
        return (await consumers.stats.remote())["batch_sizes"]

    return asyncio.run_coroutine_threadsafe(ask(), _driver_loop()).result(timeout=30)


def pipeline_point(
    app: str, url: str, concurrency: int, seconds: int, body: Path, script: Path
) -> dict[str, Any]:
    """A load point on the pipeline, with the batch sizes its consumer formed meanwhile."""
    before = batch_sizes(app)
    point = wrk(url, concurrency, seconds, body, script, app)
    after = batch_sizes(app)
    point["batch_sizes"] = {
        int(k): n - before.get(k, 0) for k, n in sorted(after.items()) if n > before.get(k, 0)
    }
    return point


def median_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One load point's rounds folded into medians (errors and batches are summed)."""

    def median_of(values: list[dict[str, float]]) -> dict[str, float]:
        keys = sorted(set().union(*values))
        return {k: statistics.median(v.get(k, 0.0) for v in values) for k in keys}

    out: dict[str, Any] = {"concurrency": points[0]["concurrency"], "rounds": len(points)}
    for key in ("images_per_s", "p50_ms", "p95_ms", "p99_ms"):
        out[key] = statistics.median(p[key] for p in points)
    out["errors"] = sum(p["errors"] for p in points)
    out["cpu_ms_per_request"] = median_of([p["cpu_ms_per_request"] for p in points])
    out["rss_mb"] = median_of([p["rss_mb"] for p in points])
    if any("batch_sizes" in p for p in points):
        sizes: dict[int, int] = {}
        for p in points:
            for size, n in p.get("batch_sizes", {}).items():
                sizes[int(size)] = sizes.get(int(size), 0) + n
        out["batch_sizes"] = dict(sorted(sizes.items()))
    out["each_round"] = [
        {k: round(p[k], 1) for k in ("images_per_s", "p50_ms", "p99_ms")} for p in points
    ]
    return out
