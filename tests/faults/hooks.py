"""A webhook receiver that misbehaves on purpose: a real HTTP/1.1 server on 127.0.0.1.

Paths pick the behaviour, so one server serves every mode at once:

  /ok     answers 200 at once
  /fail   answers 500 at once
  /slow   reads the request, sleeps ``slow_s`` (longer than WEBHOOK_TIMEOUT), then 200
  /hang   reads the request and never answers; holds the connection until the client
          gives up (or the server stops)

Every request is recorded as an :class:`Attempt` with the task id from its JSON body
and the state of its signature (``X-Rabbit-Serve-Signature: t=<unix>,v2=<hex>``,
HMAC-SHA256 of ``f"{t}.".encode() + url + b"." + body`` with the shared secret, ``url``
the one the request was sent to): ``valid``,
``invalid`` or ``absent``. It runs an asyncio server on a thread of its own, so it
never shares an event loop with the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson

SIGNATURE_HEADER = "x-rabbit-serve-signature"
SIGNATURE_MAX_SKEW_S = 300
MODES = ("ok", "fail", "slow", "hang")


@dataclass(frozen=True)
class Attempt:
    mode: str
    task_id: str
    at: float  # time.monotonic() when the whole request had arrived
    signature: str  # "valid", "invalid" or "absent"
    error: int | None = None  # the body's error.status when it POSTs an error, not a result


def verify_signature(secret: str, header: str | None, body: bytes, url: str, now: float) -> str:
    if header is None:
        return "absent"
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        stamp = fields["t"]
        expected = hmac.new(
            secret.encode(), f"{stamp}.".encode() + url.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        fresh = abs(now - int(stamp)) <= SIGNATURE_MAX_SKEW_S
    except (KeyError, ValueError):
        return "invalid"
    return "valid" if fresh and hmac.compare_digest(expected, fields.get("v2", "")) else "invalid"


class HookServer:
    def __init__(self, secret: str, slow_s: float) -> None:
        self.secret = secret
        self.slow_s = slow_s
        self.attempts: list[Attempt] = []
        self.connections = 0
        self.base = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hook-server", daemon=True)

    def url(self, mode: str) -> str:
        assert mode in MODES, mode
        return f"{self.base}/{mode}"

    # -- what was received --------------------------------------------------------------

    def by_task(self, mode: str | None = None) -> dict[str, list[Attempt]]:
        grouped: dict[str, list[Attempt]] = defaultdict(list)
        with self._lock:
            for attempt in self.attempts:
                if mode is None or attempt.mode == mode:
                    grouped[attempt.task_id].append(attempt)
        return dict(grouped)

    def errors(self) -> Counter[int]:
        """POSTs that carried an error instead of a result, by its status."""
        with self._lock:
            return Counter(a.error for a in self.attempts if a.error is not None)

    def signatures(self) -> Counter[str]:
        with self._lock:
            return Counter(a.signature for a in self.attempts)

    def wait_attempts(self, expected: dict[str, int], timeout: float) -> bool:
        """Wait until every task id in ``expected`` has at least that many attempts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.by_task()
            if all(len(seen.get(task, ())) >= n for task, n in expected.items()):
                return True
            time.sleep(0.1)
        return False

    # -- the server ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hook server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self._ready.set()
        async with self._server:
            await self._stopping.wait()
            self._server.close()
            # Wake the handlers that hang on purpose.
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            while True:  # keep-alive: several requests may share one connection
                request = await _read_request(reader)
                if request is None:
                    return
                path, headers, body = request
                mode = path.strip("/").split("?")[0]
                error = None
                try:
                    parsed = orjson.loads(body)
                    task_id = str(parsed.get("id"))
                    if isinstance(parsed.get("error"), dict):
                        error = int(parsed["error"].get("status") or 0)
                except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    task_id = "?"
                signature = verify_signature(
                    self.secret, headers.get(SIGNATURE_HEADER), body, self.base + path, time.time()
                )
                with self._lock:
                    self.attempts.append(Attempt(mode, task_id, time.monotonic(), signature, error))
                if mode == "hang":
                    # Never answer; return when the client closes the connection.
                    await reader.read()
                    return
                if mode == "slow":
                    await asyncio.sleep(self.slow_s)
                status = b"500 Internal Server Error" if mode == "fail" else b"200 OK"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    path = parts[1] if len(parts) > 1 else "/"
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return path, headers, body


@contextmanager
def hook_server(secret: str, slow_s: float) -> Iterator[HookServer]:
    server = HookServer(secret, slow_s)
    server.start()
    try:
        yield server
    finally:
        server.stop()
