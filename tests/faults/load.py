"""A small closed-loop load generator and the bookkeeping that reconciles its outcome.

Each of ``clients`` coroutines posts real images (distinct encodings of a cat and an
espresso photo, so a swapped answer would show) one after another, for ``duration``
seconds or until ``count`` requests were sent, and records one :class:`Record` per
request: when it was sent, what came back, and how long it took. Nothing is retried.

:mod:`tests.faults.reconcile` turns the records into a summary and checks the
invariant of every fault scenario.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tests.images import CAT_CLASSES, ESPRESSO, variants

# How far past TIMEOUT an answer may come and still count as prompt: Serve's proxy,
# JSON encoding and a busy 2-core machine all add to the ingress's own deadline.
DEFAULT_MARGIN_S = 5.0
# The client waits this much longer still before it calls a request lost.
LOST_AFTER_EXTRA_S = 10.0


@dataclass(frozen=True)
class Payload:
    body: bytes  # the JSON request body, encoded once
    expected: str  # "espresso" or "cat"


def payloads(per_class: int = 12, top_k: int = 1, **extra: Any) -> list[Payload]:
    """``per_class`` distinct cat and espresso images, as ready-to-send JSON bodies."""
    out = []
    for name, expected in (("coffee.jpg", "espresso"), ("chelsea.jpg", "cat")):
        for image in variants(name, per_class):
            body = {"image": base64.b64encode(image).decode(), "top_k": top_k, **extra}
            out.append(Payload(orjson.dumps(body), expected))
    random.Random(7).shuffle(out)
    return out


def is_correct(expected: str, top_class: int | None) -> bool:
    if top_class is None:
        return False
    return top_class == ESPRESSO if expected == "espresso" else top_class in CAT_CLASSES


@dataclass
class Record:
    client: int
    key: str  # the client-side identity of this request (also sent as X-Request-Id)
    sent: float  # seconds since the load started (the load's own monotonic clock)
    expected: str
    elapsed: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    top_class: int | None = None
    response_id: str | None = None
    task_ids: tuple[str, ...] = ()  # for 202s (webhook requests)
    server_s: float | None = None  # the ingress's own time on it (Server-Timing)
    publish_s: float | None = None  # of that, its refused publish (Server-Timing), for 503s
    retry_after: str | None = None
    detail: str | None = None
    error: str | None = None  # the client-side exception when there was no answer

    @property
    def done(self) -> float:
        return self.sent + self.elapsed

    @property
    def correct(self) -> bool:
        return self.status == 200 and is_correct(self.expected, self.top_class)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task ids this request was answered for: a 200's id, a 202's task ids."""
        if self.status == 200 and self.response_id:
            return (self.response_id,)
        return self.task_ids if self.status == 202 else ()


class Load:
    """``clients`` closed-loop clients against ``url``/v1/classify.

    ``await load.run()`` returns the records; while it runs, :meth:`now` is the
    load's clock, so a test can note when it injected a fault on the same scale.
    """

    def __init__(
        self,
        url: str,
        bodies: Sequence[Payload],
        *,
        clients: int,
        duration: float | None = None,
        count: int | None = None,
        request_timeout: float,
        pause_after_error: float = 0.0,
        max_pause_s: float = 1.0,
        think_s: float = 0.0,
        label: str = "load",
    ) -> None:
        if (duration is None) == (count is None):
            raise ValueError("give exactly one of duration and count")
        self.url = url.rstrip("/") + "/v1/classify"
        self.bodies = list(bodies)
        self.clients = clients
        self.duration = duration
        self.count = count
        self.request_timeout = request_timeout
        self.pause_after_error = pause_after_error
        self.max_pause_s = max_pause_s
        self.think_s = think_s
        self.label = label
        self.records: list[Record] = []
        self.lags: list[float] = []  # how late this process's event loop woke up, seconds
        self.in_flight = 0
        self._next = 0
        self._t0 = time.monotonic()
        self._stop = False

    def now(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        """Send no new requests; those in flight still finish."""
        self._stop = True

    def _take(self) -> int | None:
        if self._stop:
            return None
        if self.count is not None and self._next >= self.count:
            return None
        if self.duration is not None and self.now() >= self.duration:
            return None
        self._next += 1
        return self._next - 1

    async def run(self) -> list[Record]:
        limits = httpx.Limits(
            max_connections=self.clients + 8, max_keepalive_connections=self.clients + 8
        )
        timeout = httpx.Timeout(self.request_timeout, connect=10.0)
        self._t0 = time.monotonic()
        monitor = asyncio.create_task(self._watch_lag())
        try:
            async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
                await asyncio.gather(*(self._client(client, i) for i in range(self.clients)))
        finally:
            monitor.cancel()
        return self.records

    async def _watch_lag(self, every_s: float = 0.05) -> None:
        """A busy client inflates the latencies it measures: record by how much."""
        while True:  # cancelled by run()
            started = time.monotonic()
            await asyncio.sleep(every_s)
            self.lags.append(time.monotonic() - started - every_s)

    def lag(self) -> list[float]:
        """p99 and max of the load generator's own event-loop lag, seconds."""
        return [round(percentile(self.lags, 99), 3), round(max(self.lags, default=0.0), 3)]

    async def _client(self, client: httpx.AsyncClient, number: int) -> None:
        while (seq := self._take()) is not None:
            payload = self.bodies[seq % len(self.bodies)]
            key = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label) + f"#{seq}"
            record = Record(number, key, sent=self.now(), expected=payload.expected)
            self.records.append(record)
            self.in_flight += 1
            try:
                await self._send(client, payload, record)
            finally:
                self.in_flight -= 1
            pause = self.think_s
            if record.status != 200 and record.status != 202:
                pause = max(pause, self.pause_after_error)
                if record.retry_after and record.retry_after.isdigit():
                    # A polite client honours Retry-After; capped to keep the pressure on.
                    pause = max(pause, min(float(record.retry_after), self.max_pause_s))
            if pause:
                await asyncio.sleep(pause)

    async def _send(self, client: httpx.AsyncClient, payload: Payload, record: Record) -> None:
        started = time.monotonic()
        try:
            response = await client.post(
                self.url,
                content=payload.body,
                # As a front proxy would: TIMEOUT then also counts the wait before the
                # ingress (on 2 saturated cores, seconds in Serve's proxy).
                headers={
                    "content-type": "application/json",
                    "x-request-start": f"t={time.time():.3f}",
                    # Serve logs it as the request id: a record can be found in the logs.
                    "x-request-id": record.key,
                },
            )
        except Exception as exc:  # no HTTP answer: the one outcome that must never happen
            record.elapsed = time.monotonic() - started
            record.error = f"{type(exc).__name__}: {exc}"[:300]
            return
        record.elapsed = time.monotonic() - started
        record.status = response.status_code
        record.retry_after = response.headers.get("retry-after")
        record.server_s = server_timing(response.headers.get("server-timing"))
        record.publish_s = server_timing(response.headers.get("server-timing"), "publish")
        try:
            body = response.json()
        except ValueError:
            record.detail = response.text[:200]
            return
        if not isinstance(body, dict):
            return
        if response.status_code == 200:
            record.response_id = body.get("id")
            predictions = body.get("predictions") or []
            if predictions:
                record.top_class = predictions[0].get("class_id")
        elif response.status_code == 202:
            record.response_id = body.get("id")
            record.task_ids = tuple(body.get("task_ids") or ())
        else:
            record.detail = str(body.get("detail"))[:200]


def server_timing(header: str | None, metric: str = "ingress") -> float | None:
    """Seconds of ``metric`` in a ``Server-Timing`` header (``name;dur=ms, ...``)."""
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name != metric:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key == "dur":
                try:
                    return float(value) / 1000
                except ValueError:
                    return None
    return None


def in_flight_at(records: Iterable[Record], t: float) -> list[Record]:
    """The requests that had been sent but not yet answered at time ``t``."""
    return [r for r in records if r.sent <= t < r.done]


def statuses(records: Iterable[Record]) -> dict[str, int]:
    """Outcome counts, ``"lost"`` for no HTTP answer."""
    counts = Counter("lost" if r.status is None else str(r.status) for r in records)
    return dict(sorted(counts.items()))


def slowest(records: Iterable[Record], n: int = 3) -> list[tuple[str, float, float]]:
    """The ``n`` slowest requests as (outcome, latency, sent at), for the report."""
    ordered = sorted(records, key=lambda r: r.elapsed, reverse=True)[:n]
    return [
        ("lost" if r.status is None else str(r.status), round(r.elapsed, 2), round(r.sent, 2))
        for r in ordered
    ]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def stats(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """``GET /v1/stats`` of the (single) ingress replica behind ``url``."""
    response = await client.get(f"{url}/v1/stats", timeout=10)
    response.raise_for_status()
    return response.json()
