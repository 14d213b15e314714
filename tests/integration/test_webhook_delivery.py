"""callback_url: 202 at once, and the result is POSTed to the client's webhook."""

import base64

import orjson
import pytest

from rabbit_serve.webhook_security import ID_HEADER, SIGNATURE_HEADER, verify
from tests.images import ESPRESSO, sample
from tests.integration.conftest import WEBHOOK_SECRET
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
    assert verify(WEBHOOK_SECRET, signature, hit.body)
    assert hit.headers[ID_HEADER.lower()] == result["id"]


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
