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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import (
    IMAGE,
    ROOT,
    median_point,
    pipeline_point,
    wait_answering,
    write_load_files,
    wrk,
)
from bench.raw import raw_limit
from bench.report import bench_report, plot, print_table, write_json
from rabbit_serve.local_cluster import (
    SERVE_FAST_PATH_ENV,
    apply_ray_env_defaults,
    delete_app_queues,
    deploy,
    start_cluster,
    stop_cluster,
)


@dataclass(frozen=True)
class Variant:
    """One system under load; ``dispatch_when_idle`` None is the plain Serve peer."""

    dispatch_when_idle: bool | None
    concurrencies: tuple[int, ...] | None = None  # None: every --concurrency level
    raw_body: bool = False  # the JPEG itself as the body instead of base64 JSON


VARIANTS: dict[str, Variant] = {
    "pipeline": Variant(dispatch_when_idle=True),
    "pipeline_no_idle_dispatch": Variant(dispatch_when_idle=False, concurrencies=(1,)),
    "pipeline_raw_body": Variant(dispatch_when_idle=True, concurrencies=(32,), raw_body=True),
    "peer": Variant(dispatch_when_idle=None),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="per load point and round")
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument(
        "--systems",
        default=",".join(VARIANTS),
        help=f"which of {', '.join(VARIANTS)} to run; empty: the raw limit only",
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    return parser.parse_args(argv)


def run_rounds(
    selected: dict[str, Variant], levels: list[int], rounds: int, seconds: int
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every selected system's load points, ``rounds`` times; one cluster for all."""
    # Imported here, after main() set Ray's environment: Serve reads it at import.
    from ray import serve

    from bench.peer import build_peer
    from rabbit_serve.settings import Settings

    body, script = write_load_files(Path(tempfile.mkdtemp()))
    base = start_cluster(log_to_driver=False)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        # Each round deploys, measures and removes every system in turn: a slow spell of
        # this (shared, virtual) machine hits all systems alike, and no idle replicas of
        # one system take CPU from another.
        for round_ in range(1, rounds + 1):
            for name, variant in selected.items():
                points = list(variant.concurrencies or levels)
                payload = IMAGE if variant.raw_body else body
                app = None
                if variant.dispatch_when_idle is None:
                    serve.run(build_peer(Settings()), name=name, route_prefix=f"/{name}")
                    url = f"{base}/{name}/v1/classify"
                else:
                    app = deploy(
                        name, f"/{name}", base, DISPATCH_WHEN_IDLE=variant.dispatch_when_idle
                    )
                    url = f"{app.url}/v1/classify"
                wait_answering(url)
                wrk(url, 8, 2, body, script)  # warm-up
                for c in points:
                    print(f"round {round_}/{rounds}: {name} c={c} ...", flush=True)
                    point = (
                        wrk(url, c, seconds, payload, script, name)
                        if app is None
                        else pipeline_point(name, url, c, seconds, payload, script)
                    )
                    runs.setdefault((name, c), []).append(point)
                serve.delete(name)
                if app is not None:
                    delete_app_queues(app)
    finally:
        stop_cluster()
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [s for s in args.systems.split(",") if s]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))}")
    selected = {name: v for name, v in VARIANTS.items() if name in names}
    # Both systems get Serve's throughput-optimized HTTP path, as `make run` does and as a
    # competent user of plain Serve would; set both variables to 0 to measure the default.
    serve_env = apply_ray_env_defaults(fast_path=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    print("raw limit ...", flush=True)
    raw = raw_limit(min(args.seconds, 3))
    runs = run_rounds(selected, levels, args.rounds, args.seconds) if selected else {}
    results: dict[str, list[dict[str, Any]]] = {}
    for (name, _), points in runs.items():
        results.setdefault(name, []).append(median_point(points))

    report = bench_report(
        serve_env={name: serve_env[name] for name in SERVE_FAST_PATH_ENV},
        rounds=args.rounds,
        seconds=args.seconds,
        raw=raw,
        results=results,
    )
    write_json(report, out_dir / "bench.json")
    print_table(report)
    if results:
        plot(report, out_dir / "bench.png")


if __name__ == "__main__":
    main()
