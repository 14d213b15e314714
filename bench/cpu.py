"""CPU seconds and memory per role, read from /proc, to say where a request's CPU goes.

A snapshot sums user+system time of every live process by role (ingress, consumer,
classifier, broker, HTTP proxy, Ray's daemons, load generator); the difference of two
snapshots, divided by the requests served between them, is CPU per request. A
process that starts or dies between snapshots is counted from zero or dropped, so
take both around a steady load point.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# First match wins; matched against the process title (Ray workers set theirs to the
# deployment's name) and then the command name.
ROLES: list[tuple[str, tuple[str, ...]]] = [
    ("classifier", ("Classifier",)),
    ("consumer", ("BatchingConsumer",)),
    ("ingress", ("Ingress",)),
    ("http_proxy", ("ProxyActor", "haproxy")),
    ("broker", ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")),
    ("load_generator", ("wrk",)),
    ("ray_daemons", ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor", "ray/")),
]


def role_of(title: str) -> str | None:
    for role, needles in ROLES:
        if any(n in title for n in needles):
            return role
    return None


@dataclass
class Snapshot:
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)


def _title(pid: str) -> str:
    proc = Path("/proc") / pid
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        if cmdline:
            return cmdline.decode("utf-8", "replace")
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def snapshot(app: str | None = None) -> Snapshot:
    """CPU seconds and RSS by role; with ``app``, other Serve apps' replicas are left out."""
    cpu: dict[str, float] = defaultdict(float)
    rss: dict[str, float] = defaultdict(float)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        title = _title(pid)
        if app is not None and "ServeReplica:" in title and f"ServeReplica:{app}:" not in title:
            continue
        role = role_of(title)
        if role is None:
            continue
        try:
            stat = (Path("/proc") / pid / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name; utime, stime are 14 and 15, rss 24.
        fields = stat.rsplit(")", 1)[1].split()
        cpu[role] += (int(fields[11]) + int(fields[12])) / TICKS
        rss[role] += int(fields[21]) * PAGE / 2**20
    return Snapshot(dict(cpu), dict(rss))


def cpu_per_request_ms(before: Snapshot, after: Snapshot, requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request, by role, between two snapshots."""
    if requests <= 0:
        return {}
    roles = set(before.cpu_s) | set(after.cpu_s)
    return {
        role: max(after.cpu_s.get(role, 0.0) - before.cpu_s.get(role, 0.0), 0.0) * 1000 / requests
        for role in sorted(roles)
    }
