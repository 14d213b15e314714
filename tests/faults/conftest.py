"""Fault-injection suite: one real local Ray cluster per session, the real broker and model.

Each scenario deploys its own Serve application (own route, own queues, one ingress
replica so that its ``/v1/stats`` counters are the whole story), puts it under load,
injects a real fault, and reconciles what the clients saw. At the end of each scenario
the request queue must drain to 0 ready messages and, after ``serve.delete`` (consumers
gone, so anything they had not acked is back in the queue), still hold 0.

RabbitMQ is shared by everything on this machine: the suite makes sure its app is
running before and after every test, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika
import pytest
from ray import serve

from rabbit_serve.local_cluster import (
    App,
    app_queues,
    delete_queue,
    deploy,
    queue_depth,
    start_cluster,
    stop_cluster,
    wait_healthy,
)
from tests.faults.chaos import drain, ensure_broker_running, quorum_queue_stuck
from tests.faults.hooks import HookServer, hook_server
from tests.faults.reconcile import record


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: minutes-long soak test; runs only with SOAK=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def broker_up() -> Iterator[None]:
    ensure_broker_running()
    yield
    ensure_broker_running()


@pytest.fixture(scope="session")
def serve_base_url(broker_up: None) -> Iterator[str]:
    url = start_cluster()
    try:
        yield url
    finally:
        stop_cluster()


def _depth(app: App, queue: str) -> int | None:
    """Ready messages in ``queue``; None if it was never declared."""
    try:
        return queue_depth(app.settings, queue)
    except Exception:
        return None


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    """A webhook receiver on 127.0.0.1 that answers at once (a scenario that needs a slow
    one overrides this fixture)."""
    with hook_server("", slow_s=0.0) as server:
        yield server


@pytest.fixture
def fault_app(serve_base_url: str) -> Iterator[Callable[..., App]]:
    """Deploy a fresh application for one scenario: ``fault_app(name, **settings)``.

    At teardown: the queue drains to 0 ready, the app is deleted, and the queue must
    still hold 0 (nothing was left unacked); then the queue is deleted.
    """
    apps: list[App] = []

    def make(name: str, *, classifiers: int = 1, ingress: int = 1, **overrides: Any) -> App:
        if overrides.get("WEBHOOK_ALLOW_PRIVATE"):
            # A scenario that allows private webhooks posts to a receiver on 127.0.0.1,
            # on a port of its own, not 80 or 443.
            overrides.setdefault("WEBHOOK_ALLOWED_PORTS", "*")
        ensure_broker_running()
        app = deploy(
            name,
            f"/{name}",
            serve_base_url,
            ingress_replicas=ingress,
            classifier_replicas=classifiers,
            **overrides,
        )
        apps.append(app)
        wait_healthy(app.url, timeout=180)
        return app

    yield make

    failures = []
    for app in apps:
        ensure_broker_running()
        try:
            drained_s = drain(app)
        except AssertionError as exc:
            failures.append(str(exc))
            drained_s = float("nan")
        except aio_pika.exceptions.ChannelNotFoundEntity:
            # The request queue is gone: fine only if the broker will not declare it.
            if quorum_queue_stuck(app.settings, app.settings.request_queue) is None:
                raise
            drained_s = float("nan")
        serve.delete(app.name)
        others = app_queues(app)[1:]
        try:
            left = queue_depth(app.settings, app.settings.request_queue)
            # Reported, not asserted: dead letters are answered by the consumers, and a
            # webhook still being retried at the delete goes back to its outbox.
            rest = {queue.rsplit(".", 1)[-1]: _depth(app, queue) for queue in others}
        finally:
            for queue in app_queues(app):
                with contextlib.suppress(Exception):
                    delete_queue(app.settings, queue)
        print(
            f"\n[{app.name}] queue drained to 0 ready in {drained_s:.1f}s; "
            f"after serve.delete: {left} messages (other queues: {rest})"
        )
        record(app.name, {"drain_s": round(drained_s, 1), "left_after_delete": left, **rest})
        if left:
            failures.append(f"{app.name}: {left} messages were left unacknowledged")
    assert not failures, failures
