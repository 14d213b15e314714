"""The ingress's door on a real Serve replica: keys from a file that rotates, per-key limits,
and the byte budget that bounds a replica's memory under concurrent 16 MiB bodies.

The app has no consumers, so an accepted request waits its whole TIMEOUT (then 504) and
holds its share of the limits meanwhile: what is let in and what is refused is decided
by the limits alone, not by how fast the machine classifies.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from deployments.app import is_loopback, proxy_host
from ingress.keys import RELOAD_PERIOD_S
from rabbit_serve.local_cluster import App, delete_app_queues, deploy, wait_healthy
from tests.images import sample
from tests.integration.conftest import SLOW_SPELL_S

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
COFFEE = sample("coffee.jpg")
# Decoders stop at the JPEG's end marker and the header check reads only the header:
# a valid image body of exactly 16 MiB.
BODY = COFFEE + bytes(16 * MiB - len(COFFEE))
BUDGET = 4 * len(BODY)
TIMEOUT_S = 4.0
BURST = 24
RSS_KEYS = [f"rss-{i}" for i in range(BURST + 5)]
LIMIT_KEYS = ["busy", "idle", "rate", "old-key"]


def write_keys(path: Path, keys: list[str]) -> None:
    # Write then rename, as the README says: a reader never sees half a file.
    staged = path.with_suffix(".staged")
    staged.write_text("".join(f"{k}\n" for k in keys))
    staged.replace(path)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("door") / "api-keys"
    write_keys(path, RSS_KEYS + LIMIT_KEYS)
    return path


@pytest.fixture(scope="module")
def door(serve_base_url: str, key_file: Path) -> Iterator[App]:
    app = deploy(
        "door",
        "/door",
        serve_base_url,
        ingress_replicas=1,
        NUM_CONSUMERS=0,
        TIMEOUT=TIMEOUT_S,
        MAX_REQUEST_BYTES=17 * MiB,
        MAX_IMAGE_BYTES=17 * MiB,
        MAX_INFLIGHT_BYTES=BUDGET,
        API_KEYS_FILE=str(key_file),
        KEY_RATE_LIMIT=0.2,
        KEY_RATE_BURST=4,
        KEY_MAX_CONCURRENT=2,
    )
    wait_healthy(app.url)
    yield app
    serve.delete(app.name)
    delete_app_queues(app)


def replica_pid(app_name: str) -> int:
    """The Ingress replica's process: Ray titles it ``ray::ServeReplica:<app>:Ingress``."""
    wanted = f"ServeReplica:{app_name}:Ingress".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if wanted in cmdline:
                found.append(int(entry))
    assert len(found) == 1, found
    return found[0]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The process's resident memory, sampled every 2 ms on a thread, and its peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def post_body(url: str, key: str, *, wait_s: float = 0.0) -> tuple[int, float, str]:
    """POST :data:`BODY`; (status, seconds, Retry-After). It reads the answer while it
    sends and stops sending once answered. ``wait_s``: first wait that long for an early
    answer before sending the body, as a client with ``Expect: 100-continue`` does
    (curl: 1 s). Status 0: the connection was reset while the body was still going out,
    after the server answered early and closed (a client that sends on regardless can
    lose the answer that way; the refusal is the same)."""
    parsed = httpx.URL(url)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    head = (
        f"POST {parsed.path.rstrip('/')}/v1/classify HTTP/1.1\r\nhost: {parsed.host}\r\n"
        f"content-type: image/jpeg\r\nx-api-key: {key}\r\n"
        f"content-length: {len(BODY)}\r\nconnection: close\r\n\r\n"
    )
    writer.write(head.encode())

    async def send() -> None:
        if wait_s:
            await asyncio.sleep(wait_s)
        view = memoryview(BODY)
        for at in range(0, len(BODY), MiB):
            writer.write(view[at : at + MiB])
            await writer.drain()

    sending = asyncio.create_task(send())
    try:
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
    except ConnectionResetError:
        return 0, time.monotonic() - started, ""
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
    status = int(status_line.split()[1])
    return status, time.monotonic() - started, headers.get("retry-after", "")


async def burst(
    url: str, keys: list[str], pid: int, wait_s: float = 0.0
) -> tuple[list[tuple[int, float, str]], int]:
    """POST :data:`BODY` once per key, all at once; (results, peak RSS meanwhile)."""
    with PeakRss(pid) as rss_peak:
        results = await asyncio.gather(*[post_body(url, key, wait_s=wait_s) for key in keys])
    return list(results), rss_peak.peak


# Past the budget's own peak: body chunks of refused requests that Serve's receive proxy
# had already fetched when the 503 went out, and the allocator's noise (observed:
# 24 at once peaked 27-34 MiB above the budget-full peak on a fresh replica).
SLACK = 96 * MiB


async def test_concurrent_16_mib_bodies_keep_the_replica_within_its_byte_budget(door: App):
    pid = replica_pid(door.name)
    baseline = rss(pid)
    per_budget = BUDGET // len(BODY)
    keys = RSS_KEYS[:BURST]

    # Copies: what this replica costs with the budget exactly full (four 16 MiB bodies
    # held at once, from a fresh replica: first-use allocations count too).
    full, full_peak = await burst(door.url, keys[:per_budget], pid)
    assert [status for status, _, _ in full] == [504] * per_budget
    copies = (full_peak - baseline) / BUDGET
    bound = baseline + BUDGET * copies + SLACK

    # The attack: 24 clients send their whole 16 MiB at once, whatever the answer.
    results, peak = await burst(door.url, keys, pid)
    statuses = sorted(status for status, _, _ in results)
    # The budget holds four bodies: four waited their TIMEOUT, the rest were refused
    # (503, or a reset if the 503 came while their body was still going out).
    assert statuses.count(504) == per_budget, statuses
    assert statuses.count(503) + statuses.count(0) == BURST - per_budget, statuses

    # The same with clients that wait for an early answer: every refusal is a 503, fast.
    polite, _ = await burst(door.url, keys, pid, wait_s=1.0)
    refused = [r for r in polite if r[0] == 503]
    assert sorted(r[0] for r in polite).count(504) == per_budget
    assert len(refused) == BURST - per_budget and all(r[2] == "1" for r in refused)
    slowest_refusal = max(elapsed for _, elapsed, _ in refused)
    # "At once": before the wait for an early answer was over, so no body byte was sent.
    assert slowest_refusal < 1.0, slowest_refusal
    print(
        f"\nbyte budget {BUDGET / MiB:.0f} MiB ({per_budget} bodies of "
        f"{len(BODY) / MiB:.0f} MiB): fresh replica RSS {baseline / MiB:.0f} MiB; budget "
        f"full: peak {full_peak / MiB:.0f} MiB ({copies:.2f} copies of each body); "
        f"{BURST} at once: peak {peak / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"(without the budget ~{(baseline + BURST * len(BODY) * copies) / MiB:.0f} MiB); "
        f"answers {statuses.count(504)} x 504 (admitted), {statuses.count(503)} x 503, "
        f"{statuses.count(0)} resets; waiting clients: {len(refused)} x 503, slowest "
        f"{slowest_refusal * 1000:.0f} ms"
    )
    assert peak < bound, (peak / MiB, bound / MiB)
    # The bytes came back: a request fits again.
    assert (await post_body(door.url, RSS_KEYS[-1]))[0] == 504


async def test_one_key_at_its_limits_gets_429_and_another_key_is_served(
    door: App, client: httpx.AsyncClient
):
    url = f"{door.url}/v1/classify"

    async def post(key: str, images: int = 1) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        payload = {"images": [base64.b64encode(COFFEE).decode()] * images}
        response = await client.post(url, json=payload, headers={"x-api-key": key})
        return response, time.monotonic() - started

    # "busy" opens KEY_MAX_CONCURRENT (2) requests; they wait out TIMEOUT.
    held = [asyncio.create_task(post("busy")) for _ in range(2)]
    await asyncio.sleep(1.0)
    third, third_s = await post("busy")
    assert third.status_code == 429 and third.headers["retry-after"] == "1", third.text
    assert "KEY_MAX_CONCURRENT" in third.json()["detail"] and third_s < TIMEOUT_S
    # "rate" spends its whole burst (4 images) in one request; the next is over the rate
    # (0.2 images/s: the one image it asks for is 5 s away).
    burst = asyncio.create_task(post("rate", images=4))
    await asyncio.sleep(1.0)
    over, over_s = await post("rate")
    assert over.status_code == 429 and "KEY_RATE_LIMIT" in over.json()["detail"], over.text
    assert 1 <= int(over.headers["retry-after"]) <= 5 and over_s < TIMEOUT_S
    # Another key meanwhile: let in (it waits its TIMEOUT like the others: no consumers).
    other, _ = await post("idle")
    assert other.status_code == 504, other.text
    answers = [(await task)[0].status_code for task in [*held, burst]]
    assert answers == [504, 504, 504]
    # Finished requests free the key: it is let in again.
    again, _ = await post("busy")
    assert again.status_code == 504


async def test_a_key_rotated_in_the_file_works_and_the_old_one_stops_without_restart(
    door: App, client: httpx.AsyncClient, key_file: Path
):
    url = f"{door.url}/v1/stats"

    async def status(key: str) -> int:
        return (await client.get(url, headers={"authorization": f"Bearer {key}"})).status_code

    assert await status("old-key") == 200 and await status("new-key") == 401
    write_keys(key_file, [*RSS_KEYS, "busy", "idle", "rate", "new-key"])
    changed = time.monotonic()
    while await status("old-key") != 401:
        assert time.monotonic() - changed < RELOAD_PERIOD_S + SLOW_SPELL_S
        await asyncio.sleep(0.1)
    revoked_s = time.monotonic() - changed
    assert await status("new-key") == 200
    print(f"\nold key refused {revoked_s:.2f} s after the key file changed")


def test_the_proxy_host_is_read_from_serves_controller(serve_base_url: str):
    # As the build task of `serve run/deploy config.yaml` does, on the cluster.
    assert proxy_host() == "127.0.0.1"
    # num_cpus=0: every CPU of the test cluster may be held by replicas.
    assert ray.get(ray.remote(num_cpus=0)(proxy_host).remote(), timeout=60) == "127.0.0.1"
    assert is_loopback(proxy_host())
