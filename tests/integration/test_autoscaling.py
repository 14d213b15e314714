"""The queue-aware autoscaler on a real cluster: the shipped serve_config.autoscale.yaml,
a backlog of webhook jobs, the classifiers and consumers growing with it, every job
answered exactly once, and the counts back down after the quiet period."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from rabbit_serve.local_cluster import App, deploy_config, queue_depth, remove_app, wait_healthy
from tests.webhook_receiver import webhook_receiver

ROOT = Path(__file__).resolve().parents[2]
JOBS = 1200
MAX_REPLICAS = 3
DOWNSCALE_DELAY_S = 10


def autoscaled_config() -> dict:
    shipped = yaml.safe_load((ROOT / "serve_config.autoscale.yaml").read_text())
    app = shipped["applications"][0]
    app.update(name="autoscaled", route_prefix="/autoscaled")
    app["args"] = {
        "MAX_BATCH_SIZE": 8,
        "BATCH_TIMEOUT": 0.05,
        "WEBHOOK_ALLOW_PRIVATE": True,
        "WEBHOOK_ALLOWED_PORTS": "*",
    }
    for deployment in app["deployments"]:
        deployment["autoscaling_config"].update(
            max_replicas=MAX_REPLICAS, upscale_delay_s=2, downscale_delay_s=DOWNSCALE_DELAY_S
        )
        # Small enough that every replica fits beside the session's other apps.
        deployment["ray_actor_options"] = {"num_cpus": 0.2}
    return app


def replicas(app: str) -> dict[str, int]:
    from ray import serve

    deployments = serve.status().applications[app].deployments
    return {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}


async def send_jobs(url: str, callback: str, image: bytes, n: int) -> list[dict]:
    body = {"image": base64.b64encode(image).decode(), "callback_url": callback}
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> dict:
            async with limit:
                response = await client.post(f"{url}/v1/classify", json=body)
                assert response.status_code == 202, response.text
                return response.json()

        return await asyncio.gather(*(one() for _ in range(n)))


def test_the_backlog_scales_classifiers_and_consumers_up_and_back_down(
    serve_base_url: str,
) -> None:
    app: App = deploy_config(autoscaled_config(), serve_base_url)
    try:
        wait_healthy(app.url)
        assert replicas(app.name)["Classifier"] == 1
        image = (ROOT / "examples" / "images" / "chelsea.jpg").read_bytes()
        with webhook_receiver() as receiver:
            accepted = asyncio.run(send_jobs(app.url, receiver.url, image, JOBS))
            task_ids = [task for job in accepted for task in job["task_ids"]]
            peak: dict[str, int] = {}
            deadline = time.monotonic() + 240
            while len(receiver.bodies) < len(task_ids) and time.monotonic() < deadline:
                for name, count in replicas(app.name).items():
                    peak[name] = max(peak.get(name, 0), count)
                time.sleep(1)
            hits = receiver.wait_for(len(task_ids), timeout=5)
            answered = Counter(json.loads(hit.body)["id"] for hit in hits)
            assert set(answered) == set(task_ids)
            assert max(answered.values()) == 1, "a job was answered twice"
            assert all("predictions" in json.loads(hit.body) for hit in hits)
            assert peak["Classifier"] >= 2, peak
            assert peak["BatchingConsumer"] >= 2, peak  # consumers follow the classifiers
            assert queue_depth(app.settings, app.settings.request_queue) == 0

            # Quiet: after the downscale delay both come back to one replica.
            deadline = time.monotonic() + DOWNSCALE_DELAY_S + 60
            while time.monotonic() < deadline:
                now = replicas(app.name)
                if now["Classifier"] == 1 and now["BatchingConsumer"] == 1:
                    break
                time.sleep(1)
            assert now["Classifier"] == 1 and now["BatchingConsumer"] == 1, now
    finally:
        assert remove_app(app) == 0
