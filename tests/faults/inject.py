"""Faults that must be undone: stopped processes, broker alarms, loopback partitions.

Each is a context manager that restores the state it found in ``finally`` (SIGCONT,
the broker's previous memory watermark and disk limit, exactly the iptables rules it
added), because the broker and the machine are shared with everything else here.
Only loopback and this suite's own processes are touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tests.faults.chaos import rabbitmqctl

# isort: split
import psutil  # vendored by Ray, importable once tests.faults.chaos imported ray

AMQP_PORT = 5672


@contextmanager
def stopped(pids: Iterable[int]) -> Iterator[list[int]]:
    """SIGSTOP ``pids`` for the duration of the block; SIGCONT them afterwards."""
    pids = list(pids)
    done = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            done.append(pid)
        yield pids
    finally:
        for pid in done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# -- broker alarms ------------------------------------------------------------------------


def memory_watermark() -> str:
    """The broker's vm_memory_high_watermark as ``rabbitmqctl`` accepts it back."""
    out = rabbitmqctl("environment")
    match = re.search(r"\{vm_memory_high_watermark,\s*([^}\s]+)\}", out)
    if not match or not re.fullmatch(r"[0-9.]+", match[1]):
        # An absolute {absolute, N} setting: not what this suite knows how to restore.
        raise RuntimeError(f"cannot read vm_memory_high_watermark: {match and match[0]}")
    return match[1]


def disk_free_limit() -> str:
    out = rabbitmqctl("environment")
    match = re.search(r"\{disk_free_limit,\s*([0-9]+)\}", out)
    if not match:
        raise RuntimeError("cannot read disk_free_limit as a byte count")
    return match[1]


def alarms() -> str:
    """The broker's alarm section, as ``rabbitmqctl status`` words it."""
    out = rabbitmqctl("status")
    section = out.split("Alarms", 1)[-1].split("\n\n", 2)
    return " ".join(section[1].split()) if len(section) > 1 else "?"


@contextmanager
def memory_alarm(watermark: str = "0.0001") -> Iterator[str]:
    """Raise the broker's memory alarm; the previous watermark is restored afterwards."""
    before = memory_watermark()
    try:
        rabbitmqctl("set_vm_memory_high_watermark", watermark)
        yield before
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", before)


@contextmanager
def disk_alarm(limit: str = "1000000000000000") -> Iterator[str]:
    """Raise the broker's disk alarm (a free-space limit no disk has); restored after."""
    before = disk_free_limit()
    try:
        rabbitmqctl("set_disk_free_limit", limit)
        yield before
    finally:
        rabbitmqctl("set_disk_free_limit", before)


# -- loopback partitions ------------------------------------------------------------------


def iptables_usable() -> str | None:
    """Why a partition cannot be injected here, or None if it can."""
    if shutil.which("iptables") is None:
        return "iptables is not installed"
    if os.geteuid() != 0:
        return "iptables needs root"
    result = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, check=False)
    return None if result.returncode == 0 else result.stderr.decode()[:200]


def amqp_ports(pid: int, amqp_port: int = AMQP_PORT) -> set[int]:
    """Local ports of ``pid``'s TCP connections to the broker."""
    return {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == amqp_port
    }


def _rules(port: int, amqp_port: int) -> list[list[str]]:
    # On loopback both directions leave through OUTPUT: client -> broker, broker -> client.
    return [
        ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(port), "--dport", str(amqp_port)],
        ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(amqp_port), "--dport", str(port)],
    ]


class Partition:
    """DROP, both ways, every AMQP connection of ``pids``; connections they open while it
    lasts are found (every ``every_s``) and dropped too, so a reconnect does not slip by."""

    def __init__(self, pids: Iterable[int], amqp_port: int = AMQP_PORT, every_s: float = 0.1):
        self.pids = list(pids)
        self.amqp_port = amqp_port
        self.every_s = every_s
        self.added: list[list[str]] = []
        self.ports: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="partition", daemon=True)

    def _block_new(self) -> None:
        for pid in self.pids:
            try:
                ports = amqp_ports(pid, self.amqp_port)
            except psutil.Error:
                continue
            for port in ports - self.ports:
                for rule in _rules(port, self.amqp_port):
                    with self._lock:
                        subprocess.run(["iptables", "-I", *rule, "-j", "DROP"], check=True)
                        self.added.append(rule)
                self.ports.add(port)

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):
                self._block_new()

    def __enter__(self) -> Partition:
        try:
            self._block_new()
            self._thread.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            for rule in reversed(self.added):
                subprocess.run(["iptables", "-D", *rule, "-j", "DROP"], check=False)
            self.added.clear()


def leftover_rules(amqp_port: int = AMQP_PORT) -> list[str]:
    """DROP rules on the AMQP port still in OUTPUT (there must be none after a test)."""
    out = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"port {amqp_port}" in line and "DROP" in line]
