"""callback_url: 202 at once, and the result is POSTed to the client's webhook, signed
for that URL; destinations the policy refuses get a 422 at the ingress."""

import base64

import httpx
import orjson
import pytest

from rabbit_serve.webhook_security import ID_HEADER, SIGNATURE_HEADER, verify
from tests.images import ESPRESSO, sample
from tests.integration.conftest import WEBHOOK_SECRET
from tests.unit.test_webhook import readme_verify
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.integration


async def test_webhook_gets_the_result(main_url, client):
    with webhook_receiver([503, 200]) as hook:
        response = await client.post(
            f"{main_url}/v1/classify",
            json={
                "image": base64.b64encode(sample("coffee.jpg")).decode(),
                "callback_url": hook.url,
                "top_k": 2,
            },
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status"] == "accepted" and accepted["callback_url"] == hook.url
        (hit,) = hook.wait_for(1, timeout=20)
    result = orjson.loads(hit.body)
    assert result["request_id"] == accepted["id"]
    assert result["id"] == accepted["task_ids"][0]
    assert result["predictions"][0]["class_id"] == ESPRESSO
    assert len(result["predictions"]) == 2
    assert len(hook.hits) == 2  # the first attempt got a 503 and was retried
    signature = hit.headers[SIGNATURE_HEADER.lower()]
    assert verify(WEBHOOK_SECRET, signature, hit.body, hook.url)
    assert hit.headers[ID_HEADER.lower()] == result["id"]


async def test_readme_verify_accepts_the_delivery_and_refuses_it_replayed_elsewhere(
    main_url, client
):
    """The real pipeline (ingress, queue, consumer, outbox) delivers a signed result; a
    receiver that captured it replays body and header to another receiver with the same
    secret. The README's verify() accepts the first and refuses the replay."""
    readme_check = readme_verify()
    # A query string, as a multi-tenant receiver might use: it is signed as written.
    with webhook_receiver([200]) as hook, webhook_receiver([200]) as victim:
        url = hook.url + "?tenant=a"
        response = await client.post(
            f"{main_url}/v1/classify",
            json={"image": base64.b64encode(sample("coffee.jpg")).decode(), "callback_url": url},
        )
        assert response.status_code == 202, response.text
        assert response.json()["callback_url"] == url
        (hit,) = hook.wait_for(1, timeout=20)
        header = hit.headers[SIGNATURE_HEADER.lower()]
        async with httpx.AsyncClient() as replayer:
            replayed = await replayer.post(
                victim.url, content=hit.body, headers={SIGNATURE_HEADER: header}
            )
        assert replayed.status_code == 200
        (copy,) = victim.hits
    assert readme_check(WEBHOOK_SECRET, header, hit.body, url)
    assert not readme_check(WEBHOOK_SECRET, header, copy.body, victim.url)
    assert not readme_check(WEBHOOK_SECRET, header, hit.body, hook.url)  # tenant dropped


async def test_private_webhook_destination_is_refused_by_default(orphan_app, client):
    # The orphan app runs the default policy: no loopback or private webhooks.
    with webhook_receiver([200]) as hook:
        response = await client.post(
            f"{orphan_app.url}/v1/classify",
            json={
                "image": base64.b64encode(sample("coffee.jpg")).decode(),
                "callback_url": hook.url,
            },
        )
        assert response.status_code == 422
        assert "non-public" in response.json()["detail"]
        assert hook.hits == []


@pytest.mark.parametrize(
    "url,reason",
    [
        ("https://hooks.example.com:8443/x", "WEBHOOK_ALLOWED_PORTS"),
        ("http://hooks.example.com:6379/x", "WEBHOOK_ALLOWED_PORTS"),
        ("http://[64:ff9b::a9fe:a9fe]/latest", "non-public"),  # NAT64 of the metadata IP
        ("http://[::127.0.0.1]/x", "non-public"),
        ("http://[2002:7f00:1::1]/x", "non-public"),
        ("http://[fec0::1]/x", "non-public"),
        ("http://2130706433/x", "number"),
        ("http://0x7f.1/x", "number"),
    ],
)
async def test_refused_destinations_get_a_422_at_the_ingress(orphan_app, client, url, reason):
    # The orphan app runs the default policy: ports 80 and 443, public addresses only.
    response = await client.post(
        f"{orphan_app.url}/v1/classify",
        json={"image": base64.b64encode(sample("coffee.jpg")).decode(), "callback_url": url},
    )
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
