"""One real local Ray cluster per test session, the real broker and the real model.

Three Serve applications share the cluster, each with its own queues so that
nothing here touches a `make run` on the same machine:
  main      (/)          the full pipeline, two ingress replicas
  orphan    (/orphan)    no consumers: requests must time out with 504
  nobroker  (/nobroker)  points at a closed port: requests must get a fast 503
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import aio_pika
import httpx
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Loopback-only test cluster; without this Ray writes a token into ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
from ray import serve

from deployments.app import wire
from rabbit_serve.settings import Settings

RUN_ID = uuid.uuid4().hex[:8]
PREFIX = f"rabbit-serve-test-{RUN_ID}"


@dataclass(frozen=True)
class App:
    name: str
    url: str
    settings: Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queue_depth(settings: Settings, queue: str) -> int:
    async def depth() -> int:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0

    return asyncio.run(depth())


def _delete_queue(settings: Settings, queue: str) -> None:
    async def delete() -> None:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)

    asyncio.run(delete())


@pytest.fixture(scope="session")
def serve_base_url() -> Iterator[str]:
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        # Logical CPUs: the deployments ask for fractions; 2 real cores run them all.
        num_cpus=4,
        object_store_memory=300 * 1024 * 1024,
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _deploy(name: str, route: str, base_url: str, ingress_replicas: int = 1, **overrides) -> App:
    settings = Settings.from_overrides(overrides)
    serve.run(
        wire(settings, ingress_replicas=ingress_replicas),
        name=name,
        route_prefix=route,
        blocking=False,
    )
    return App(name, base_url + (route if route != "/" else ""), settings)


@pytest.fixture(scope="session")
def main_app(serve_base_url: str) -> Iterator[App]:
    app = _deploy(
        "main",
        "/",
        serve_base_url,
        ingress_replicas=2,
        REQUEST_QUEUE=f"{PREFIX}.requests",
        REPLY_QUEUE_PREFIX=f"{PREFIX}.replies",
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        MAX_BATCHES_IN_FLIGHT=2,
        TIMEOUT=30,
        NUM_CONSUMERS=1,
    )
    yield app
    serve.delete(app.name)
    # With the consumers gone, anything unacked is back in the queue: it must be empty.
    try:
        depth = _queue_depth(app.settings, app.settings.request_queue)
    finally:
        _delete_queue(app.settings, app.settings.request_queue)
    assert depth == 0, f"{depth} messages were left unacknowledged in the request queue"


@pytest.fixture(scope="session")
def orphan_app(serve_base_url: str, main_app: App) -> Iterator[App]:
    app = _deploy(
        "orphan",
        "/orphan",
        serve_base_url,
        REQUEST_QUEUE=f"{PREFIX}.orphan",
        REPLY_QUEUE_PREFIX=f"{PREFIX}.orphan-replies",
        TIMEOUT=2,
        NUM_CONSUMERS=0,
    )
    yield app
    serve.delete(app.name)
    _delete_queue(app.settings, app.settings.request_queue)


@pytest.fixture(scope="session")
def nobroker_app(serve_base_url: str, main_app: App) -> Iterator[App]:
    app = _deploy(
        "nobroker",
        "/nobroker",
        serve_base_url,
        AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F",
        BROKER_CONNECT_TIMEOUT=1,
        TIMEOUT=2,
        NUM_CONSUMERS=0,
    )
    yield app
    serve.delete(app.name)


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/healthz", timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} never became healthy: {last!r}")


@pytest.fixture(scope="session")
def main_url(main_app: App) -> str:
    _wait_healthy(main_app.url)
    return main_app.url


@pytest.fixture
async def client() -> httpx.AsyncClient:
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=128, max_keepalive_connections=128)
    ) as c:
        yield c
