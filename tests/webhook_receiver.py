"""A real HTTP server on loopback that records webhook POSTs (stdlib, own thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Hit:
    status: int
    body: bytes
    headers: dict[str, str]


class Receiver:
    def __init__(self, statuses: list[int] | None = None, location: str = "") -> None:
        # Status codes to answer in turn; the last one repeats.
        self.statuses = statuses or [200]
        self.location = location
        self.hits: list[Hit] = []
        self.url = ""
        self._lock = threading.Lock()

    @property
    def bodies(self) -> list[bytes]:
        with self._lock:
            return [h.body for h in self.hits if 200 <= h.status < 300]

    def record(self, body: bytes, headers: dict[str, str]) -> int:
        with self._lock:
            status = self.statuses[min(len(self.hits), len(self.statuses) - 1)]
            self.hits.append(Hit(status, body, headers))
            return status

    def wait_for(self, count: int, timeout: float) -> list[Hit]:
        """The first ``count`` successful hits, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                ok = [h for h in self.hits if 200 <= h.status < 300]
            if len(ok) >= count:
                return ok
            time.sleep(0.02)
        raise TimeoutError(f"got {len(self.bodies)} webhook bodies, wanted {count}")


@contextmanager
def webhook_receiver(statuses: list[int] | None = None, location: str = "") -> Iterator[Receiver]:
    receiver = Receiver(statuses, location)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status = receiver.record(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            if receiver.location:
                self.send_header("location", receiver.location)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
