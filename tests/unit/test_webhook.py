import time

import httpx
import pytest

from consumer.webhook import BACKOFF_MAX_S, backoff_delay, deliver
from tests.webhook_receiver import webhook_receiver


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(50) == BACKOFF_MAX_S


async def test_delivers_on_first_success():
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert await deliver(client, hook.url, b'{"a":1}', attempts=3, timeout=2)
        assert hook.bodies == [b'{"a":1}'] and hook.hits == 1


async def test_retries_server_errors_then_succeeds():
    with webhook_receiver([503, 500, 204]) as hook:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            assert await deliver(client, hook.url, b"{}", attempts=3, timeout=2)
        assert hook.hits == 3
        assert time.monotonic() - started >= backoff_delay(1) + backoff_delay(2)


async def test_gives_up_after_the_attempt_bound():
    with webhook_receiver([500]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", attempts=2, timeout=2)
        assert hook.hits == 2


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_client_errors_are_not_retried(status):
    with webhook_receiver([status]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", attempts=5, timeout=2)
        assert hook.hits == 1


async def test_unreachable_webhook_fails_within_the_bound():
    async with httpx.AsyncClient() as client:
        # Port 9 (discard) is closed on loopback: connection refused at once.
        assert not await deliver(client, "http://127.0.0.1:9/x", b"{}", attempts=2, timeout=1)
