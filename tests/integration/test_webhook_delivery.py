"""callback_url: 202 at once, and the result is POSTed to the client's webhook."""

import base64

import orjson
import pytest

from tests.images import ESPRESSO, sample
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
        (body,) = hook.wait_for(1, timeout=20)
    result = orjson.loads(body)
    assert result["request_id"] == accepted["id"]
    assert result["id"] == accepted["task_ids"][0]
    assert result["predictions"][0]["class_id"] == ESPRESSO
    assert len(result["predictions"]) == 2
    assert hook.hits == 2  # the first attempt got a 503 and was retried
