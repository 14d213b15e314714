"""The full pipeline over HTTP: ingress -> RabbitMQ -> consumer -> classifier -> back."""

import base64

import pytest

from tests.images import CAT_CLASSES, ESPRESSO, sample

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_chelsea_is_a_cat(main_url, client):
    response = await client.post(
        f"{main_url}/v1/classify", json={"image": b64(sample("chelsea.jpg")), "top_k": 5}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "efficientnet-lite0" and len(body["id"]) == 32
    predictions = body["predictions"]
    assert predictions[0]["class_id"] in CAT_CLASSES
    assert len(predictions) == 5
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert body["batch_size"] >= 1
    assert {"queue", "batch_wait", "inference", "total"} <= set(body["timings_ms"])


async def test_coffee_upload_is_espresso(main_url, client):
    response = await client.post(
        f"{main_url}/v1/classify",
        files={"file": ("coffee.jpg", sample("coffee.jpg"), "image/jpeg")},
        data={"top_k": "2"},
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions[0] == {
        "class_id": ESPRESSO,
        "label": "espresso",
        "score": pytest.approx(0.95, abs=0.05),
    }
    assert len(predictions) == 2


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
async def test_the_file_itself_as_the_body(main_url, client, content_type):
    response = await client.post(
        f"{main_url}/v1/classify",
        params={"top_k": 2},
        content=sample("coffee.jpg"),
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions[0]["class_id"] == ESPRESSO and len(predictions) == 2


@pytest.mark.parametrize(
    "body,params,status,fragment",
    [
        (b"not an image", {}, 422, "not an image"),
        (b"", {}, 422, "empty"),
        (None, {"top_k": "many"}, 422, "top_k"),
        (None, {"callback_url": "ftp://x"}, 422, "callback_url"),
    ],
)
async def test_bad_raw_bodies_are_4xx(main_url, client, body, params, status, fragment):
    response = await client.post(
        f"{main_url}/v1/classify",
        params=params,
        content=sample("coffee.jpg") if body is None else body,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


async def test_several_images_in_one_request_keep_their_order(main_url, client):
    truncated = sample("chelsea.jpg")[:6000]
    images = [sample("coffee.jpg"), sample("chelsea.png"), truncated]
    response = await client.post(
        f"{main_url}/v1/classify", json={"images": [b64(i) for i in images], "top_k": 1}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert results[0]["predictions"][0]["class_id"] == ESPRESSO
    assert results[1]["predictions"][0]["class_id"] in CAT_CLASSES
    # A file that only fails at full decode is a per-image 422, not a failed request.
    assert results[2]["error"]["status"] == 422
    assert "decoded" in results[2]["error"]["message"]


async def test_healthz_and_model_info(main_url, client):
    health = await client.get(f"{main_url}/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "broker": True, "classifier": True}
    model = (await client.get(f"{main_url}/v1/model")).json()
    assert model["name"] == "efficientnet-lite0"
    assert model["provider"] == "CPUExecutionProvider"
    assert model["input_shape"][1:] == [3, 224, 224] and model["num_classes"] == 1000
    assert len(model["node_id"]) > 0 and model["gpu_ids"] == []


async def test_openapi_documents_both_body_kinds(main_url, client):
    schema = (await client.get(f"{main_url}/openapi.json")).json()
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/*"} <= set(body)
