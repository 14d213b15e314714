"""A replica that outgrows ``CLASSIFIER_MAX_MEMORY_MB`` exits, so Serve replaces it.

An image that blows up in decoding (a highly compressible 40-megapixel PNG is a few
hundred kilobytes on the wire and over 100 MB decoded), or a slow leak, would otherwise
grow the replica until the kernel's or Ray's OOM killer takes it, or a neighbour. A
daemon thread samples this process's resident memory every ``interval`` seconds and,
past the limit, logs why and ends the process with ``os._exit(1)``: no clean-up that
could itself allocate, and Serve starts a fresh replica. The consumer sees the call
fail and isolates the image that did it (:mod:`consumer.classify`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger("rabbit_serve.classifier")

MIB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.05
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """This process's resident memory, from ``/proc`` (Linux); ``None`` where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class MemoryGuard:
    """Exits the process once resident memory passes ``limit_bytes``.

    ``read_rss`` and ``exit`` are injectable so the decision is tested without exiting.
    """

    def __init__(
        self,
        limit_bytes: int,
        *,
        read_rss: Callable[[], int | None] = rss_bytes,
        exit: Callable[[int], object] = os._exit,
        interval: float = SAMPLE_INTERVAL_S,
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError("limit_bytes must be > 0")
        self.limit_bytes = limit_bytes
        self._read_rss = read_rss
        self._exit = exit
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One sample: ``True`` if past the limit (and ``exit`` was called)."""
        rss = self._read_rss()
        if rss is None or rss <= self.limit_bytes:
            return False
        message = (
            f"classifier replica resident memory {rss / MIB:.0f} MiB is past "
            f"CLASSIFIER_MAX_MEMORY_MB ({self.limit_bytes / MIB:.0f} MiB): exiting so Serve "
            "replaces it"
        )
        logger.error(message)
        # os._exit skips logging's shutdown: make sure the reason reaches the log first.
        for handler in logging.getLogger().handlers + logger.handlers:
            handler.flush()
        print(message, file=sys.stderr, flush=True)
        self._exit(1)
        return True

    def start(self) -> MemoryGuard:
        self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            if self.check():
                return


def start_memory_guard(limit_mb: int) -> MemoryGuard | None:
    """Start a guard for ``limit_mb`` MiB (0: none). Off, with a warning, where this
    platform does not report resident memory."""
    if limit_mb <= 0:
        return None
    rss = rss_bytes()
    if rss is None:
        logger.warning("CLASSIFIER_MAX_MEMORY_MB is set but /proc/self/statm is unreadable: off")
        return None
    logger.info("memory guard: exit past %d MiB resident (now %.0f MiB)", limit_mb, rss / MIB)
    return MemoryGuard(limit_mb * MIB).start()
