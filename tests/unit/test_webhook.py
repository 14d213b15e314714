import time

import httpx
import pytest

from consumer.webhook import BACKOFF_MAX_S, WebhookPolicy, backoff_delay, deliver
from rabbit_serve.webhook_security import ID_HEADER, SIGNATURE_HEADER, verify
from tests.webhook_receiver import webhook_receiver

# The receivers below listen on loopback, which the default policy refuses.
LOCAL = WebhookPolicy(allow_private=True, attempts=3, timeout=2)


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(50) == BACKOFF_MAX_S


async def test_delivers_on_first_success_with_id_header():
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert await deliver(client, hook.url, b'{"a":1}', policy=LOCAL, task_id="t-1")
        (hit,) = hook.hits
        assert hit.body == b'{"a":1}' and hit.headers[ID_HEADER.lower()] == "t-1"
        assert SIGNATURE_HEADER.lower() not in hit.headers  # no secret, no signature


async def test_posts_are_signed_when_a_secret_is_set():
    policy = WebhookPolicy(secret="s3cret", allow_private=True)
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert await deliver(client, hook.url, b'{"x":2}', policy=policy)
        (hit,) = hook.hits
        assert verify("s3cret", hit.headers[SIGNATURE_HEADER.lower()], hit.body)
        assert not verify("wrong", hit.headers[SIGNATURE_HEADER.lower()], hit.body)


async def test_retries_server_errors_then_succeeds():
    with webhook_receiver([503, 500, 204]) as hook:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            assert await deliver(client, hook.url, b"{}", policy=LOCAL)
        assert len(hook.hits) == 3
        assert time.monotonic() - started >= backoff_delay(1) + backoff_delay(2)


async def test_gives_up_after_the_attempt_bound():
    with webhook_receiver([500]) as hook:
        async with httpx.AsyncClient() as client:
            policy = WebhookPolicy(allow_private=True, attempts=2, timeout=2)
            assert not await deliver(client, hook.url, b"{}", policy=policy)
        assert len(hook.hits) == 2


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_client_errors_are_not_retried(status):
    with webhook_receiver([status]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=LOCAL)
        assert len(hook.hits) == 1


async def test_redirects_are_not_followed():
    with webhook_receiver([302], location="http://169.254.169.254/latest") as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=LOCAL)
        assert len(hook.hits) == 1


async def test_loopback_is_refused_by_the_default_policy():
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=WebhookPolicy())
        assert hook.hits == []


async def test_unreachable_webhook_fails_within_the_bound():
    async with httpx.AsyncClient() as client:
        # Port 9 (discard) is closed on loopback: connection refused at once.
        policy = WebhookPolicy(allow_private=True, attempts=2, timeout=1)
        assert not await deliver(client, "http://127.0.0.1:9/x", b"{}", policy=policy)
