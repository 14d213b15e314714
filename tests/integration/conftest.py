"""One real local Ray cluster per test session, the real broker and the real model.

Three Serve applications share the cluster, each with its own queues:
  main      (/)          the full pipeline, two ingress replicas
  orphan    (/orphan)    no consumers: requests must time out with 504
  nobroker  (/nobroker)  points at a closed port: requests must get a fast 503
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from ray import serve

from rabbit_serve.local_cluster import (
    App,
    delete_app_queues,
    deploy,
    remove_app,
    start_cluster,
    stop_cluster,
    wait_healthy,
)

WEBHOOK_SECRET = "integration-webhook-secret"
NOBROKER_API_KEYS = ("key-one", "key-two")
# What a slow spell of this shared 2-core machine may add to an answer. Timing bounds
# are written relative to the setting they test plus this, never as a tight band.
SLOW_SPELL_S = 2.0
# The ingress starts its TIMEOUT clock a little after the client sends.
CLOCK_SLACK_S = 0.2


@pytest.fixture(scope="session")
def serve_base_url() -> Iterator[str]:
    url = start_cluster()
    try:
        yield url
    finally:
        stop_cluster()


@pytest.fixture(scope="session")
def main_app(serve_base_url: str) -> Iterator[App]:
    app = deploy(
        "main",
        "/",
        serve_base_url,
        ingress_replicas=2,
        MAX_BATCH_SIZE=8,
        BATCH_TIMEOUT=0.05,
        MAX_BATCHES_IN_FLIGHT=2,
        TIMEOUT=30,
        NUM_CONSUMERS=1,
        # The suite's webhook receivers listen on loopback, on ports of their own.
        WEBHOOK_ALLOW_PRIVATE=True,
        WEBHOOK_ALLOWED_PORTS="*",
        WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    yield app
    depth = remove_app(app)
    assert depth == 0, f"{depth} messages were left unacknowledged in the request queue"


@pytest.fixture(scope="session")
def orphan_app(serve_base_url: str, main_app: App) -> Iterator[App]:
    # TIMEOUT short enough to wait out, long enough that "at once" and "after TIMEOUT"
    # stay apart on a slow machine.
    app = deploy("orphan", "/orphan", serve_base_url, TIMEOUT=3, NUM_CONSUMERS=0)
    yield app
    serve.delete(app.name)
    delete_app_queues(app)


@pytest.fixture(scope="session")
def nobroker_app(serve_base_url: str, main_app: App) -> Iterator[App]:
    app = deploy(
        "nobroker",
        "/nobroker",
        serve_base_url,
        AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F",
        # Longer than a fast 503 may take, so the test can tell it waited for none of them.
        BROKER_CONNECT_TIMEOUT=3,
        TIMEOUT=5,
        NUM_CONSUMERS=0,
        API_KEYS=",".join(NOBROKER_API_KEYS),
    )
    yield app
    serve.delete(app.name)


@pytest.fixture(scope="session")
def main_url(main_app: App) -> str:
    wait_healthy(main_app.url)
    return main_app.url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=128, max_keepalive_connections=128)
    ) as c:
        yield c
