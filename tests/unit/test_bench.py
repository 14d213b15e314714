"""The benchmark's arithmetic: rounds folded into medians, mean batch sizes, the CLI."""

from __future__ import annotations

import math
import os

import pytest

from bench.load import RESULT, median_point
from bench.report import mean_batch
from bench.run import VARIANTS, main, parse_args


def point(rate: float, p50: float, errors: int = 0, **extra: object) -> dict:
    return {
        "concurrency": 8,
        "images_per_s": rate,
        "p50_ms": p50,
        "p95_ms": p50 * 2,
        "p99_ms": p50 * 3,
        "errors": errors,
        "cpu_ms_per_request": {"ingress": rate / 100},
        "rss_mb": {"ingress": 100.0},
        **extra,
    }


def test_median_point_takes_medians_and_sums_errors_and_batches():
    folded = median_point(
        [
            point(10, 5, errors=1, batch_sizes={1: 2}),
            point(30, 9, batch_sizes={1: 1, 4: 3}),
            point(20, 7, errors=2),
        ]
    )
    assert folded["rounds"] == 3 and folded["concurrency"] == 8
    assert folded["images_per_s"] == 20 and folded["p50_ms"] == 7
    assert folded["errors"] == 3
    assert folded["batch_sizes"] == {1: 3, 4: 3}
    assert folded["cpu_ms_per_request"] == {"ingress": 0.2}
    assert [r["images_per_s"] for r in folded["each_round"]] == [10, 30, 20]


def test_mean_batch():
    assert mean_batch({1: 2, 4: 2}) == 2.5
    assert math.isnan(mean_batch({}))


def test_wrk_result_line_parses():
    match = RESULT.search("noise\nRESULT 120 2 8000000 12.500 20.000 31.250\n")
    assert match and (int(match[1]), int(match[2]), float(match[6])) == (120, 2, 31.25)


def test_cli_defaults_run_every_system():
    args = parse_args([])
    assert args.systems.split(",") == list(VARIANTS)
    assert (args.rounds, args.seconds, args.concurrency) == (3, 8, "1,8,32,64")


def test_unknown_system_is_refused_before_anything_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    with pytest.raises(SystemExit, match="unknown systems: pipe"):
        main(["--systems", "pipe", "--out", str(tmp_path / "out")])
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    assert not (tmp_path / "out").exists()
