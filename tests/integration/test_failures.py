"""Bad input, no consumers, no broker: every case gets a clear, prompt answer."""

import base64
import time

import pytest

from tests.images import ESPRESSO, bomb_png, sample
from tests.integration.conftest import CLOCK_SLACK_S, NOBROKER_API_KEYS, SLOW_SPELL_S

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_JSON = [
    ({"image": "!!!"}, 400, "not valid base64"),
    ({"image": ""}, 422, "empty"),
    ({"image": b64(b"GIF89a but not really")}, 422, "image"),
    ({"image": b64(b"plain text")}, 422, "not an image"),
    ({"image": b64(bomb_png())}, 413, "pixels"),
    ({"image": 42}, 422, "valid string"),
    ({"images": "not a list"}, 422, "images"),
    ({"image": b64(sample("coffee.jpg")), "top_k": 10**9}, 422, "top_k"),
    ({"image": b64(sample("coffee.jpg")), "top_k": -1}, 422, "top_k"),
    ({"image": b64(sample("coffee.jpg")), "top_k": "5"}, 422, "top_k"),
    ({}, 422, "exactly one of"),
]


@pytest.mark.parametrize("payload,status,fragment", BAD_JSON)
async def test_bad_json_gets_a_4xx_with_a_message(main_url, client, payload, status, fragment):
    response = await client.post(f"{main_url}/v1/classify", json=payload)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


async def test_truncated_jpeg_is_422_from_the_decoder(main_url, client):
    response = await client.post(
        f"{main_url}/v1/classify", json={"image": b64(sample("chelsea.jpg")[:8000])}
    )
    assert response.status_code == 422
    assert "decoded" in response.json()["detail"]


async def test_malformed_bodies_and_content_types(main_url, client):
    url = f"{main_url}/v1/classify"
    not_json = await client.post(
        url, content=b"{oops", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "JSON" in not_json.json()["detail"]
    text = await client.post(url, content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    no_file = await client.post(url, files={"other": ("x.jpg", b"1")})
    assert no_file.status_code == 422


async def test_body_over_the_size_limit_is_413(main_url, client):
    limit = 16 * 1024 * 1024
    response = await client.post(
        f"{main_url}/v1/classify",
        content=b'{"image": "' + b"A" * (limit + 10) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


async def test_service_answers_normally_after_bad_input(main_url, client):
    for payload, _, _ in BAD_JSON:
        await client.post(f"{main_url}/v1/classify", json=payload)
    response = await client.post(
        f"{main_url}/v1/classify", json={"image": b64(sample("coffee.jpg"))}
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["class_id"] == ESPRESSO


async def test_no_consumers_means_504_after_timeout(orphan_app, client):
    started = time.monotonic()
    response = await client.post(
        f"{orphan_app.url}/v1/classify", json={"image": b64(sample("coffee.jpg"))}
    )
    elapsed = time.monotonic() - started
    timeout = orphan_app.settings.timeout
    assert response.status_code == 504
    assert f"TIMEOUT={timeout:g}s" in response.json()["detail"]
    # After TIMEOUT, not before, and not long after.
    assert timeout - CLOCK_SLACK_S <= elapsed <= timeout + SLOW_SPELL_S, elapsed
    stats = (await client.get(f"{orphan_app.url}/v1/stats")).json()
    assert stats["pending"] == 0  # the waiter was removed, not leaked


async def test_api_keys_are_required_when_configured(nobroker_app, client):
    url = f"{nobroker_app.url}/v1/classify"
    body = {"image": b64(sample("coffee.jpg"))}
    missing = await client.post(url, json=body)
    assert missing.status_code == 401 and "API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = await client.post(url, json=body, headers={"authorization": "Bearer key-three"})
    assert wrong.status_code == 401
    assert (await client.get(f"{nobroker_app.url}/v1/stats")).status_code == 401
    # A valid key gets past authentication (and then meets the missing broker).
    ok = await client.post(url, json=body, headers={"x-api-key": NOBROKER_API_KEYS[1]})
    assert ok.status_code == 503
    # Health stays open for load balancers.
    assert (await client.get(f"{nobroker_app.url}/healthz")).status_code == 503


async def test_front_proxy_request_start_counts_toward_timeout(orphan_app, client):
    url = f"{orphan_app.url}/v1/classify"
    body = {"image": b64(sample("coffee.jpg"))}
    timeout = orphan_app.settings.timeout
    # Already waited longer than TIMEOUT in front of the ingress: 504 without waiting here.
    started = time.monotonic()
    stale = await client.post(
        url, json=body, headers={"x-request-start": f"t={time.time() - timeout - 3}"}
    )
    assert stale.status_code == 504 and time.monotonic() - started < timeout - CLOCK_SLACK_S
    # Waited all but 0.5 s already: only what remains is spent here, not a whole TIMEOUT
    # (closer to the remaining 0.5 s than to TIMEOUT).
    remaining = 0.5
    waited_ms = (time.time() - (timeout - remaining)) * 1000
    started = time.monotonic()
    late = await client.post(url, json=body, headers={"x-request-start": f"t={waited_ms:.0f}"})
    elapsed = time.monotonic() - started
    assert late.status_code == 504, late.text
    assert remaining - CLOCK_SLACK_S <= elapsed < (remaining + timeout) / 2, elapsed


async def test_unreachable_broker_means_fast_503(nobroker_app, client):
    started = time.monotonic()
    response = await client.post(
        f"{nobroker_app.url}/v1/classify",
        json={"image": b64(sample("coffee.jpg"))},
        headers={"authorization": f"Bearer {NOBROKER_API_KEYS[0]}"},
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "broker" in response.json()["detail"]
    # Without waiting for a connection attempt, a publisher confirm or TIMEOUT.
    settings = nobroker_app.settings
    waits = (settings.broker_connect_timeout, settings.publish_timeout, settings.timeout)
    assert time.monotonic() - started < min(waits)
    health = await client.get(f"{nobroker_app.url}/healthz")
    assert health.status_code == 503 and health.json()["broker"] is False
