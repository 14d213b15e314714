"""`make bench`: the pipeline against the raw model and a plain Serve peer, in one run.

1. Raw limit: ONNX Runtime alone (decode + preprocess + inference), the best images/s
   over batch sizes and thread layouts, and the single-image latency.
2. The pipeline over HTTP (wrk, Lua) at several concurrencies, with DISPATCH_WHEN_IDLE on;
   concurrency 1 with it off; concurrency 32 with the JPEG itself as the body.
3. The plain Ray Serve peer (`bench/peer.py`) under the same load.

Each load point also records CPU milliseconds per request by role (from /proc), the
memory of every process, and the batch sizes the consumer formed. Everything shares
this machine's cores, the load generator too. Prints the tables, writes JSON and a PNG
under bench-results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Both systems get Serve's throughput-optimized HTTP path, as `make run` does and as a
# competent user of plain Serve would; set both to 0 to measure the default path.
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")

import httpx
from ray import serve

from bench.cpu import cpu_per_request_ms, snapshot
from bench.peer import build_peer
from deployments.onnx_model import OnnxClassifier
from rabbit_serve.local_cluster import delete_app_queues, deploy, start_cluster, stop_cluster
from rabbit_serve.settings import Settings

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


def write_load_files(directory: Path) -> tuple[Path, Path]:
    """The base64 JSON body of the bench image and wrk's Lua script, under ``directory``."""
    body, script = directory / "body.json", directory / "post.lua"
    body.write_text(json.dumps({"image": base64.b64encode(IMAGE.read_bytes()).decode()}))
    script.write_text(LUA)
    return body, script


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
    """ONNX Runtime alone, decode + preprocess + inference, in this process: the best
    images/s over batch sizes and two thread layouts (one batch at a time on every
    core, or one batch per core on one thread each), and the single-image latency."""
    image = IMAGE.read_bytes()
    cores = os.cpu_count() or 1
    layouts = {"all_cores_one_batch": (0, 1), f"one_thread_{cores}_batches": (1, cores)}
    out: dict[str, Any] = {"points": [], "single_image_ms_p50": float("inf")}
    best = 0.0
    for layout, (threads, streams) in layouts.items():
        model = OnnxClassifier(Settings().model_path, intra_op_threads=threads)
        single = []
        for _ in range(30):
            started = time.perf_counter()
            model.classify([image], [5])
            single.append(time.perf_counter() - started)
        out["single_image_ms_p50"] = min(
            out["single_image_ms_p50"], statistics.median(single) * 1000
        )
        for batch in (1, 4, 8, 16, 32):
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
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", result.stdout)
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


# Serve's throughput-optimized mode runs a handle's router on the caller's event loop,
# so the driver keeps one loop alive on a thread for its handle calls.
_LOOP = asyncio.new_event_loop()
threading.Thread(target=_LOOP.run_forever, daemon=True).start()


def batch_sizes(app: str) -> dict[int, int]:
    """How many batches of each size the (single) consumer of ``app`` has sent so far."""

    async def ask() -> dict[int, int]:
        consumers = serve.get_deployment_handle("BatchingConsumer", app_name=app)
        return (await consumers.stats.remote())["batch_sizes"]

    return asyncio.run_coroutine_threadsafe(ask(), _LOOP).result(timeout=30)


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


def wait_healthy(url: str) -> None:
    image = base64.b64encode(IMAGE.read_bytes()).decode()
    for _ in range(240):
        try:
            if httpx.post(url, json={"image": image}, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} never answered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="per load point and round")
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument(
        "--systems",
        default="pipeline,pipeline_no_idle_dispatch,pipeline_raw_body,peer",
        help="which of pipeline, pipeline_no_idle_dispatch, pipeline_raw_body and peer to run",
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    systems = set(args.systems.split(","))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    print("raw limit ...", flush=True)
    raw = raw_limit(min(args.seconds, 3))
    best_raw = raw["best_images_per_s"]

    body, script = write_load_files(Path(tempfile.mkdtemp()))

    base = start_cluster(log_to_driver=False)
    # name: (DISPATCH_WHEN_IDLE, concurrencies, body); None is the peer.
    variants: dict[str, tuple[bool, list[int], Path] | None] = {
        "pipeline": (True, levels, body),
        "pipeline_no_idle_dispatch": (False, [1], body),
        # The same image sent as the file itself instead of base64 JSON.
        "pipeline_raw_body": (True, [32], IMAGE),
        "peer": None,
    }
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        # Each round deploys, measures and removes every system in turn: a slow spell of
        # this (shared, virtual) machine hits all systems alike, and no idle replicas of
        # one system take CPU from another.
        for round_ in range(1, args.rounds + 1):
            for name, variant in variants.items():
                if name not in systems:
                    continue
                app = None
                if variant is None:
                    serve.run(build_peer(Settings()), name=name, route_prefix=f"/{name}")
                    url, points, payload = f"{base}/{name}/v1/classify", levels, body
                else:
                    idle, points, payload = variant
                    app = deploy(name, f"/{name}", base, DISPATCH_WHEN_IDLE=idle)
                    url = f"{app.url}/v1/classify"
                wait_healthy(url)
                wrk(url, 8, 2, body, script)  # warm-up
                for c in points:
                    print(f"round {round_}/{args.rounds}: {name} c={c} ...", flush=True)
                    point = (
                        wrk(url, c, args.seconds, payload, script, name)
                        if app is None
                        else pipeline_point(name, url, c, args.seconds, payload, script)
                    )
                    runs.setdefault((name, c), []).append(point)
                serve.delete(name)
                if app is not None:
                    delete_app_queues(app)
    finally:
        stop_cluster()
    results: dict[str, list[dict[str, Any]]] = {}
    for (name, _), points in runs.items():
        results.setdefault(name, []).append(median_point(points))

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "serve_env": {
            name: os.environ[name]
            for name in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")
        },
        "rounds": args.rounds,
        "seconds_per_point": args.seconds,
        "raw": raw,
        "raw_best_images_per_s": best_raw,
        "results": results,
    }
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    plot(report, out_dir / "bench.png")


SERVING_ROLES = ("ingress", "http_proxy", "broker", "consumer", "classifier", "ray_daemons")


def mean_batch(sizes: dict[int, int]) -> float:
    batches = sum(sizes.values())
    return sum(int(k) * n for k, n in sizes.items()) / batches if batches else float("nan")


def print_table(report: dict) -> None:
    raw = report["raw_best_images_per_s"]
    raw_cpu = report["raw"]["cpu_ms_per_image"]
    print(
        f"\nraw limit: {raw:.1f} images/s ({report['raw']['best'][0]}, batch "
        f"{report['raw']['best'][1]}), {raw_cpu:.1f} ms CPU per image; "
        f"single image {report['raw']['single_image_ms_p50']:.1f} ms"
    )
    peer = {p["concurrency"]: p for p in report["results"].get("peer", [])}
    print(f"medians of {report['rounds']} rounds of {report['seconds_per_point']} s per point")
    print(
        "| system | c | images/s | p50 ms | p95 ms | p99 ms | errors | /raw | /peer "
        "| mean batch | CPU ms/req | over raw | RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, points in report["results"].items():
        for p in points:
            other = peer.get(p["concurrency"])
            vs_peer = p["images_per_s"] / other["images_per_s"] if other else float("nan")
            cpu = sum(p["cpu_ms_per_request"].get(r, 0.0) for r in SERVING_ROLES)
            print(
                f"| {name} | {p['concurrency']} | {p['images_per_s']:.1f} | "
                f"{p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['p99_ms']:.1f} | "
                f"{p['errors']} | {p['images_per_s'] / raw:.2f} | {vs_peer:.2f} | "
                f"{mean_batch(p.get('batch_sizes', {})):.1f} | {cpu:.1f} | "
                f"{cpu - raw_cpu:.1f} | {sum(p['rss_mb'].values()):.0f} |"
            )
    print("\nCPU ms per request by role (load generator shown apart):")
    print("| system | c | " + " | ".join(SERVING_ROLES) + " | load generator |")
    print("|---|---:|" + "---:|" * (len(SERVING_ROLES) + 1))
    for name, points in report["results"].items():
        for p in points:
            cpu = p["cpu_ms_per_request"]
            cells = " | ".join(f"{cpu.get(r, 0.0):.2f}" for r in SERVING_ROLES)
            print(
                f"| {name} | {p['concurrency']} | {cells} | {cpu.get('load_generator', 0.0):.2f} |"
            )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("pipeline", "peer"):
        points = report["results"].get(name, [])
        xs = [p["concurrency"] for p in points]
        left.plot(xs, [p["images_per_s"] for p in points], marker="o", label=name)
        right.plot(xs, [p["p99_ms"] for p in points], marker="o", label=name)
    left.axhline(report["raw_best_images_per_s"], linestyle="--", color="grey", label="raw")
    left.set(xlabel="concurrency", ylabel="images/s", xscale="log", title="throughput")
    right.set(xlabel="concurrency", ylabel="p99 ms", xscale="log", title="p99 latency")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
