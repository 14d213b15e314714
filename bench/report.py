"""What `make bench` and `make bench-scale` print and write: Markdown tables, the JSON
report (docs/performance.json has its shape) and a plot."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Roles whose CPU a request costs the serving stack; the load generator is shown apart.
SERVING_ROLES = ("ingress", "http_proxy", "broker", "consumer", "classifier", "ray_daemons")


def mean_batch(sizes: dict[int, int]) -> float:
    batches = sum(sizes.values())
    return sum(int(k) * n for k, n in sizes.items()) / batches if batches else float("nan")


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def bench_report(
    *,
    serve_env: dict[str, str],
    rounds: int,
    seconds: int,
    raw: dict[str, Any],
    results: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "date": now(),
        "serve_env": serve_env,
        "rounds": rounds,
        "seconds_per_point": seconds,
        "raw": raw,
        "raw_best_images_per_s": raw["best_images_per_s"],
        "results": results,
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))


def print_table(report: dict[str, Any]) -> None:
    raw = report["raw_best_images_per_s"]
    raw_cpu = report["raw"]["cpu_ms_per_image"]
    print(
        f"\nraw limit: {raw:.1f} images/s ({report['raw']['best'][0]}, batch "
        f"{report['raw']['best'][1]}), {raw_cpu:.1f} ms CPU per image; "
        f"single image {report['raw']['single_image_ms_p50']:.1f} ms"
    )
    if not report["results"]:
        return
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


def print_scale_table(points: list[dict[str, Any]]) -> None:
    print(
        "\n| layout | classifiers on | images/s | p50 ms | p99 ms | errors | mean batch | "
        + " | ".join(SERVING_ROLES)
        + " |"
    )
    print("|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(SERVING_ROLES))
    for p in points:
        cpu = p["cpu_ms_per_request"]
        print(
            f"| {p['layout']} | {', '.join(p['classifiers_on'])} | {p['images_per_s']:.1f} | "
            f"{p['p50_ms']:.0f} | {p['p99_ms']:.0f} | {p['errors']} | "
            f"{mean_batch(p.get('batch_sizes', {})):.1f} | "
            + " | ".join(f"{cpu.get(r, 0.0):.2f}" for r in SERVING_ROLES)
            + " |"
        )


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # the [bench] extra; nothing else needs it

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
