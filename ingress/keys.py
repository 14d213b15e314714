"""The valid API keys: ``API_KEYS`` plus ``API_KEYS_FILE``, re-read when the file changes.

Rotation needs no restart: add the new key to the file, move the clients to it, remove
the old one. Each ingress replica looks at the file at most every :data:`RELOAD_PERIOD_S`
seconds, on a worker thread, so a slow disk never stalls the event loop. It reads the
file each time rather than trusting its modification time: some filesystems keep it to
the second, and a rewrite of the same length within that second would go unseen. The
file is small; the cost is one read per replica per period. A file that is missing or
unreadable counts as holding no keys (fail closed: deleting it revokes its keys) and is
logged; ``API_KEYS`` keep working meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger("rabbit_serve.ingress")

RELOAD_PERIOD_S = 2.0


def parse_keys(text: str) -> tuple[str, ...]:
    """One key per line; blank lines and ``#`` comments are skipped, duplicates dropped."""
    keys: dict[str, None] = {}
    for line in text.splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            keys[key] = None
    return tuple(keys)


class KeyRing:
    """The keys a request may present. ``enabled`` once either source is configured,
    even if the file is empty for now: then every ``/v1`` request is refused, never
    served anonymously."""

    def __init__(
        self,
        static: tuple[str, ...],
        path: str = "",
        *,
        period: float = RELOAD_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = static
        self._path = path
        self._period = period
        self._clock = clock
        self._file_keys: tuple[str, ...] = ()
        self._problem: str | None = None
        self._next_check = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._static or self._path)

    async def current(self) -> tuple[str, ...]:
        """The keys now; looks at the file first when the last look is over a period old."""
        if self._path and self._clock() >= self._next_check:
            async with self._lock:
                # Requests that queued on the lock find the look already done.
                if self._clock() >= self._next_check:
                    await asyncio.to_thread(self._reload)
                    self._next_check = self._clock() + self._period
        return self._static + self._file_keys

    def _reload(self) -> None:
        try:
            with open(self._path, encoding="utf-8") as f:
                keys = parse_keys(f.read())
        except (OSError, UnicodeDecodeError) as exc:
            self._file_keys = ()
            problem = f"API_KEYS_FILE {self._path!r} cannot be read ({exc}); its keys are off"
            if problem != self._problem:
                logger.warning("%s", problem)
            self._problem = problem
            return
        self._problem = None
        if keys != self._file_keys:
            # The count only: keys never go to a log.
            logger.info("API_KEYS_FILE %r read: %d keys", self._path, len(keys))
        self._file_keys = keys
