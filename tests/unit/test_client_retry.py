"""Retry timing of both clients, on a scripted transport (httpx.MockTransport): what they
wait after a 503 or 429, that the cap holds, and which answers end at once. Everything
else about the clients is tested against the running service
(tests/integration/test_client_cli.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from rabbit_serve import render
from rabbit_serve.client import (
    AsyncClient,
    Client,
    RequestRejected,
    RetryPolicy,
    TimedOut,
    Unavailable,
)
from rabbit_serve.messages import ClassifyResult

OK = render.classified(
    "r",
    "m",
    [ClassifyResult("r-0", "r", 0, predictions=[{"class_id": 1, "label": "x", "score": 0.5}])],
    multi=False,
    timeout=10,
    total_ms=1.0,
).body
NO_JITTER = RetryPolicy(max_attempts=4, base_delay=0.25, max_delay=5.0, jitter=0.0)


def script(*answers):
    """A transport answering each request with the next of ``answers``: ``(status,
    headers)``, or an exception to raise."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        status, headers = answer
        body = OK if status == 200 else render.error(f"status {status}")
        return httpx.Response(status, content=body, headers=headers)

    return handler, calls


@pytest.fixture
def sleeps(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    return waited


def test_retry_after_is_honoured_then_the_answer_returned(sleeps):
    handler, calls = script((503, {"Retry-After": "1"}), (429, {"Retry-After": "2"}), (200, {}))
    with Client("http://x", retry=NO_JITTER, transport=httpx.MockTransport(handler)) as client:
        result = client.classify(b"img", top_k=1)
    assert result.predictions[0].label == "x"
    assert sleeps == [1.0, 2.0] and len(calls) == 3
    assert calls[0].url.params["top_k"] == "1" and calls[0].content == b"img"


def test_backoff_without_a_hint_grows_and_is_capped(sleeps):
    policy = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=3.0, jitter=0.0)
    handler, calls = script((503, {}))
    with Client("http://x", retry=policy, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(Unavailable) as caught:
            client.classify(b"img")
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0] and len(calls) == 6
    assert caught.value.status == 503 and "status 503" in caught.value.message


def test_an_absurd_retry_after_is_capped(sleeps):
    handler, _ = script((503, {"Retry-After": "86400"}), (200, {}))
    with Client("http://x", retry=NO_JITTER, transport=httpx.MockTransport(handler)) as client:
        client.classify(b"img")
    assert sleeps == [5.0]


@pytest.mark.parametrize("status,kind", [(422, RequestRejected), (504, TimedOut)])
def test_final_answers_raise_at_once(sleeps, status, kind):
    handler, calls = script((status, {"Retry-After": "1"}))
    with Client("http://x", retry=NO_JITTER, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(kind):
            client.classify(b"img")
    assert sleeps == [] and len(calls) == 1


def test_a_refused_connection_is_retried_then_reported(sleeps):
    handler, calls = script(httpx.ConnectError("refused"))
    with Client("http://x", retry=NO_JITTER, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(Unavailable, match="cannot reach http://x") as caught:
            client.classify(b"img")
    assert caught.value.status is None and len(calls) == 4 and sleeps == [0.25, 0.5, 1.0]


async def test_the_async_client_waits_the_same(monkeypatch):
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    handler, calls = script((503, {"Retry-After": "1"}), httpx.ConnectError("x"), (200, {}))
    async with AsyncClient(
        "http://x", retry=NO_JITTER, transport=httpx.MockTransport(handler)
    ) as client:
        result = await client.classify(b"img")
    assert result.predictions[0].class_id == 1
    assert waited == [1.0, 0.5] and len(calls) == 3
