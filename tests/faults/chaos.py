"""Real faults: SIGKILL of Serve replica processes, RabbitMQ app stop/start, and the
measurements around them (replica pids, resident memory of this Ray cluster)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import ray
from ray._private import state as ray_state

from rabbit_serve.broker import request_queue_arguments
from rabbit_serve.local_cluster import App, queue_depth
from rabbit_serve.settings import Settings

# isort: split
# Vendored by Ray (ray/thirdparty_files), importable once ray is imported.
import psutil


@dataclass(frozen=True)
class Replica:
    name: str
    pid: int


def replicas(app: str, deployment: str) -> list[Replica]:
    """Alive replicas of ``deployment`` in ``app``, from the GCS actor table.

    Serve's replica actors have the class name ``ServeReplica:<app>:<deployment>``.
    (``ray.util.state.list_actors`` would say the same but needs the dashboard, which
    the test cluster does not start.)
    """
    class_name = f"ServeReplica:{app}:{deployment}"
    found = []
    for info in ray_state.actors().values():
        if info.get("ActorClassName") == class_name and info.get("State") == "ALIVE":
            pid = info.get("Pid")
            if pid and psutil.pid_exists(pid):
                found.append(Replica(info.get("Name") or "", int(pid)))
    return sorted(found, key=lambda r: r.pid)


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def wait_replicas(
    app: str, deployment: str, count: int, exclude: set[int], timeout: float = 90.0
) -> float:
    """Seconds until ``count`` replicas are alive again, none of them a pid in ``exclude``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        alive = [r for r in replicas(app, deployment) if r.pid not in exclude]
        if len(alive) >= count:
            return time.monotonic() - started
        time.sleep(0.25)
    raise TimeoutError(f"{deployment} of {app} did not come back to {count} replicas")


def cluster_processes() -> list[psutil.Process]:
    """This session's Ray processes: the raylet, everything it started, and the GCS.

    Scoped to our own raylet so that another Ray cluster on the same machine (another
    test run) is not counted.
    """
    node = ray._private.worker._global_node
    roots = []
    for kind in ("raylet", "gcs_server"):
        for info in node.all_processes.get(kind, []):
            roots.append(psutil.Process(info.process.pid))
    processes = []
    for root in roots:
        processes.append(root)
        processes.extend(root.children(recursive=True))
    return processes


def rss_by_process() -> dict[str, float]:
    """Resident memory of this Ray cluster's processes, MiB, summed by process name.

    A Ray worker's title names its actor and the method it is running
    (``ray::ServeReplica:app:Classifier.handle_request``); the method is dropped.
    """
    totals: dict[str, float] = {}
    for process in cluster_processes():
        try:
            name = process.name()
            if name.startswith("ray::"):
                name = name.split(".", 1)[0]
            rss = process.memory_info().rss
        except psutil.Error:
            continue
        totals[name] = totals.get(name, 0.0) + rss / 2**20
    return totals


def ray_rss_mb() -> float:
    """Total resident memory of this Ray cluster's processes, MiB."""
    return sum(rss_by_process().values())


def broker_rss_mb() -> float:
    """Resident memory of the RabbitMQ node (beam.smp), MiB; 0 if not found."""
    total = 0
    for process in psutil.process_iter(["name"]):
        if (process.info["name"] or "").startswith("beam"):
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
    return total / 2**20


def proxy_latencies(route: str, since: float = 0.0) -> dict[int, list[float]]:
    """Latencies (seconds) that Serve's HTTP proxy logged for ``POST <route>/v1/classify``
    at or after wall-clock time ``since``, by status: the server's view of a request,
    without the client's own delays."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    pattern = re.compile(
        r"^\S+ (\S+ \S+) proxy .* POST " + re.escape(route) + r"/v1/classify (\d{3}) ([\d.]+)ms"
    )
    found: dict[int, list[float]] = {}
    for path in logs.glob("proxy_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            match = pattern.match(line)
            if not match:
                continue
            stamp = time.mktime(time.strptime(match[1].split(",")[0], "%Y-%m-%d %H:%M:%S"))
            if stamp >= since:
                found.setdefault(int(match[2]), []).append(float(match[3]) / 1000)
    return found


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
    return result.stdout


def broker_running() -> bool:
    try:
        return rabbitmqctl("eval", "rabbit:is_running().", timeout=30).strip() == "true"
    except (RuntimeError, subprocess.TimeoutExpired):
        return False


def ensure_broker_running() -> None:
    """The broker is shared by everything on this machine: never leave it stopped."""
    if not broker_running():
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def _table(*args: str) -> list[list[str]]:
    out = rabbitmqctl(*args, "-q", "--no-table-headers")
    return [line.split() for line in out.splitlines() if line.strip()]


def unacked_held_by(pids: list[int], amqp_port: int = 5672) -> dict[int, int]:
    """Per process in ``pids``: messages delivered to, and not yet acked by, its broker
    connections (matched by the client's local TCP port)."""
    owner = {}
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == amqp_port:
                owner[conn.laddr.port] = pid
    connections = {
        row[0]: owner[int(row[1])]
        for row in _table("list_connections", "pid", "peer_port")
        if int(row[1]) in owner
    }
    held = dict.fromkeys(pids, 0)
    for row in _table("list_channels", "connection", "messages_unacknowledged"):
        if row[0] in connections:
            held[connections[row[0]]] += int(row[1])
    return held


def unacked(queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of ``queue`` as the broker sees them."""
    out = rabbitmqctl("list_queues", "-q", "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return 0, 0


def drain(app: App, timeout: float = 60.0) -> float:
    """Seconds until ``app``'s request queue holds 0 ready messages."""
    started = time.monotonic()
    while True:
        depth = queue_depth(app.settings, app.settings.request_queue)
        if depth == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{app.name}: {depth} messages still ready after {timeout}s")
        time.sleep(0.5)


def quorum_queue_stuck(settings: Settings, queue: str) -> str | None:
    """The broker's refusal, if it will not declare ``queue`` at all any more.

    RabbitMQ 3.10.8 (CI's broker) was seen, after the request queue was deleted and
    declared again many times a second, to refuse that name for good: "Cannot declare
    quorum queue ... cluster_not_formed", for every client, long after the test (its
    Ra cluster for the old queue never went away). That is the broker's fault, not a
    recovery this service failed; any other refusal is ``None`` here.
    """

    async def declare() -> None:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(
                queue, durable=True, arguments=request_queue_arguments(settings)
            )

    try:
        asyncio.run(declare())
    except aio_pika.exceptions.AMQPError as exc:
        if "cluster_not_formed" in str(exc):
            return str(exc)
    return None
