"""What Ray's metrics export shows after real traffic, and what the dashboard makes of it.

Each Ray node serves Prometheus text on its metrics export port (``MetricsExportPort`` in
``ray.nodes()``). The first tests scrape it directly; the last starts a real Prometheus
(Debian's package; ``.ci/run`` installs it) scraping those ports and evaluates every query
of grafana/dashboards/rabbit-serve.json through its HTTP API, as Grafana would.

Ray exports what its workers recorded every few seconds, so every check polls up to a
deadline. Counters are compared with a scrape taken before the traffic: the main app is
shared with the rest of the session.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rabbit_serve.local_cluster import App, free_port
from tests.images import sample
from tests.unit.test_dashboard import load_dashboard, panel_exprs, substitute

pytestmark = pytest.mark.integration

REQUESTS = 8
# Ray's agents export what workers recorded every few seconds; this covers a slow spell.
EXPORT_DEADLINE_S = 45.0
# Queries that return nothing when nothing went wrong: no rework, no failed outcome.
EMPTY_ON_A_CLEAN_RUN = ("Rework by kind", "Failed in range")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_targets() -> list[str]:
    import ray

    return [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes()
        if node["Alive"] and node.get("MetricsExportPort")
    ]


def scrape(targets: list[str]) -> Samples:
    out: Samples = {}
    for target in targets:
        text = httpx.get(f"http://{target}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                out[key] = out.get(key, 0.0) + s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, tags), v in samples.items() if n == name and want <= tags)


def poll(check: Callable[[], str | None], deadline_s: float = EXPORT_DEADLINE_S) -> None:
    """Calls ``check`` until it returns None (done); fails with its last complaint."""
    deadline = time.monotonic() + deadline_s
    while True:
        complaint = check()
        if complaint is None:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"after {deadline_s:.0f} s: {complaint}")
        time.sleep(1.0)


def send_traffic(url: str, n: int = REQUESTS) -> None:
    """``n`` classify requests one after another (so, ``n`` batches of one), and one the
    ingress refuses, so the error panels have something to show."""
    image = sample("coffee.jpg")
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            response = client.post(
                f"{url}/v1/classify", content=image, headers={"content-type": "image/jpeg"}
            )
            assert response.status_code == 200, response.text
        bad = client.post(
            f"{url}/v1/classify", content=b"not an image", headers={"content-type": "image/jpeg"}
        )
        assert 400 <= bad.status_code < 500, bad.text


def test_ray_exports_the_pipelines_metrics(main_app: App, main_url: str):
    targets = metrics_targets()
    assert targets, "no Ray node reports a metrics export port"
    app = {"application": main_app.name}
    before = scrape(targets)
    send_traffic(main_url)

    def check() -> str | None:
        now = scrape(targets)
        grew = {
            name: total(now, name, **labels) - total(before, name, **labels)
            for name, labels in (
                ("ray_rabbit_serve_batch_size_count", app),
                ("ray_rabbit_serve_queue_wait_ms_count", app),
                ("ray_rabbit_serve_consumer_messages_total", {**app, "outcome": "answered"}),
                (
                    "ray_serve_num_http_requests_total",
                    {**app, "route": "/v1/classify", "status_code": "200"},
                ),
            )
        }
        # Requests sent one at a time go out as batches of one.
        short = {name: n for name, n in grew.items() if n < REQUESTS}
        return f"grew by less than {REQUESTS}: {short}" if short else None

    poll(check)
    now = scrape(targets)
    # Every batch is in a bucket no wider than MAX_BATCH_SIZE (8 here).
    assert total(now, "ray_rabbit_serve_batch_size_bucket", le="8.0", **app) == total(
        now, "ray_rabbit_serve_batch_size_count", **app
    )
    assert total(now, "ray_rabbit_serve_consumer_messages_total", outcome="poison", **app) == 0


def test_ray_exports_the_queue_depth_gauges(main_app: App, main_url: str):
    targets = metrics_targets()
    queue = main_app.settings.request_queue
    send_traffic(main_url, n=2)

    def check() -> str | None:
        now = scrape(targets)
        names = {n for n, _ in now}
        missing = {
            "ray_rabbit_serve_queue_messages_ready",
            "ray_rabbit_serve_queue_consumers",
            "ray_rabbit_serve_consumer_unacked",
        } - names
        if missing:
            return f"not exported: {sorted(missing)}"
        if total(now, "ray_rabbit_serve_queue_consumers", queue=queue) < 1:
            return f"no consumer counted on {queue}"
        return None

    poll(check)
    now = scrape(targets)
    app = {"application": main_app.name}
    assert total(now, "ray_rabbit_serve_queue_messages_ready", queue=queue, **app) >= 0
    # One consumer replica: what it holds is the queue's unacked, and nothing is left
    # waiting once every request was answered.
    assert 0 <= total(now, "ray_rabbit_serve_consumer_unacked", **app) <= REQUESTS


# --------------------------------------------------------------------------- Prometheus


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "needs the prometheus binary (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": .ci/run installs it")
        pytest.skip(message)
    return binary


@pytest.fixture
def prometheus(tmp_path: Path, main_url: str) -> Iterator[Prometheus]:
    binary = _prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "ray", "static_configs": [{"targets": metrics_targets()}]}
                ],
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_every_dashboard_query_has_data_after_traffic(prometheus: Prometheus, main_url: str):
    exprs = panel_exprs(load_dashboard())
    # A rate needs a sample from before the traffic: first let Prometheus see each series,
    # then send the traffic the panels must show.
    send_traffic(main_url, n=2)
    seen = 'ray_rabbit_serve_consumer_messages_total{outcome="answered"}'
    poll(lambda: None if prometheus.query(seen) else f"Prometheus has no {seen}")
    time.sleep(2)  # a scrape or two of the values before the traffic
    send_traffic(main_url)

    def check() -> str | None:
        empty = []
        for where, expr in exprs:
            result = prometheus.query(substitute(expr))
            values = [float(r["value"][1]) for r in result]
            if not any(math.isfinite(v) for v in values) and not where.startswith(
                EMPTY_ON_A_CLEAN_RUN
            ):
                empty.append(f"{where}: {values}")
        return f"no finite value: {empty}" if empty else None

    poll(check)
