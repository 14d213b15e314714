"""A real HTTP server on loopback that records webhook POSTs (stdlib, own thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, statuses: list[int] | None = None) -> None:
        # Status codes to answer in turn; the last one repeats.
        self.statuses = statuses or [200]
        self.bodies: list[bytes] = []
        self.hits = 0
        self.url = ""
        self._lock = threading.Lock()

    def next_status(self, body: bytes) -> int:
        with self._lock:
            status = self.statuses[min(self.hits, len(self.statuses) - 1)]
            self.hits += 1
            if 200 <= status < 300:
                self.bodies.append(body)
            return status

    def wait_for(self, count: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.bodies) >= count:
                    return list(self.bodies)
            time.sleep(0.02)
        raise TimeoutError(f"got {len(self.bodies)} webhook bodies, wanted {count}")


@contextmanager
def webhook_receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(statuses)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(receiver.next_status(body))
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
