"""A real local Ray cluster with Serve apps on it, for integration and fault tests.

One cluster per pytest session; each app gets its own queue names so that a run
never touches a `make run` (or another run) on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

# Before Ray is imported: keep it on 127.0.0.1 and out of ~/.ray (see README).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import aio_pika
import httpx
import ray
from ray import serve

from deployments.app import wire
from rabbit_serve.settings import Settings

RUN_ID = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class App:
    name: str
    url: str
    settings: Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(num_cpus: int = 4, log_to_driver: bool = True) -> str:
    """Start Ray and Serve on loopback; returns the HTTP base URL."""
    ray.init(
        log_to_driver=log_to_driver,
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        # Logical CPUs: the deployments ask for fractions; 2 real cores run them all.
        num_cpus=num_cpus,
        object_store_memory=300 * 1024 * 1024,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def stop_cluster() -> None:
    serve.shutdown()
    ray.shutdown()


def queue_names(prefix: str) -> dict[str, str]:
    """Setting overrides that give an app queues of its own, all named ``prefix.*``."""
    return {
        "REQUEST_QUEUE": f"{prefix}.requests",
        "REPLY_QUEUE_PREFIX": f"{prefix}.replies",
        "DEAD_LETTER_QUEUE": f"{prefix}.dead",
        "WEBHOOK_QUEUE": f"{prefix}.webhooks",
    }


def deploy(
    name: str,
    route: str,
    base_url: str,
    ingress_replicas: int = 1,
    classifier_replicas: int = 1,
    classifier_actor_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> App:
    """Deploy the full application under ``route``; queue names are unique to this run.

    ``overrides`` are settings (``MAX_BATCH_SIZE=8``); the other arguments go to
    :func:`deployments.app.wire`.
    """
    settings = Settings.from_overrides(
        {**queue_names(f"rabbit-serve-test-{RUN_ID}.{name}"), **overrides}
    )
    serve.run(
        wire(
            settings,
            ingress_replicas=ingress_replicas,
            classifier_replicas=classifier_replicas,
            classifier_actor_options=classifier_actor_options,
        ),
        name=name,
        route_prefix=route,
        blocking=False,
    )
    return App(name, base_url + (route if route != "/" else ""), settings)


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/healthz", timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} never became healthy: {last!r}")


async def _with_channel(settings: Settings, fn: Any) -> Any:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        return await fn(await connection.channel())


def queue_depth(settings: Settings, queue: str) -> int:
    """Ready messages in ``queue`` (unacked ones are not counted until their consumer goes)."""

    async def depth(channel: Any) -> int:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0

    return asyncio.run(_with_channel(settings, depth))


def delete_queue(settings: Settings, queue: str) -> None:
    async def delete(channel: Any) -> None:
        await channel.queue_delete(queue)

    asyncio.run(_with_channel(settings, delete))


def app_queues(app: App) -> tuple[str, ...]:
    """Every durable queue an app declares: requests first, then dead letters and the
    webhook outbox."""
    return (
        app.settings.request_queue,
        app.settings.dead_letter_queue,
        app.settings.webhook_queue,
    )


def delete_app_queues(app: App) -> None:
    for queue in app_queues(app):
        delete_queue(app.settings, queue)
