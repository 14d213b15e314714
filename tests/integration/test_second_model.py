"""A second, generated model served by the whole pipeline through its spec alone:
MODEL_PATH and MODEL_NAME are the only settings that change, and no code does."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

from rabbit_serve.local_cluster import App, deploy, remove_app, wait_healthy
from tests import generated_model as tiny
from tests.images import encode

pytestmark = pytest.mark.integration

RED_ON_GREEN = tiny.framed((500, 500), (200, 60, 60), (60, 160, 60))
BLUE_ON_GREY = tiny.framed((640, 480), (60, 60, 200), (128, 128, 128))
# One-pass resampling of the crop region: rounding only.
MAX_SCORE_DIFF = 1e-3


@pytest.fixture(scope="module")
def second_app(serve_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    model_path = tiny.write_model(tmp_path_factory.mktemp("second-model"))
    app = deploy(
        "second",
        "/second",
        serve_base_url,
        MODEL_PATH=str(model_path),
        MODEL_NAME=tiny.NAME,
        NUM_CONSUMERS=1,
        TIMEOUT=30,
    )
    try:
        wait_healthy(app.url)
        yield app
    finally:
        depth = remove_app(app)
    assert depth == 0, f"{depth} messages were left unacknowledged in the request queue"


def scores_of(predictions: list[dict]) -> np.ndarray:
    scores = np.zeros(len(tiny.LABELS))
    for prediction in predictions:
        scores[prediction["class_id"]] = prediction["score"]
    return scores


async def test_classify_answers_what_numpy_computes_from_the_spec(second_app, client):
    response = await client.post(
        f"{second_app.url}/v1/classify",
        params={"top_k": 10},
        content=encode(RED_ON_GREEN, "PNG"),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == tiny.NAME
    predictions = body["predictions"]
    assert len(predictions) == 10 and predictions[0]["label"] == "red"
    expected = tiny.expected_scores(RED_ON_GREEN)
    assert np.abs(scores_of(predictions) - expected).max() <= MAX_SCORE_DIFF


async def test_several_images_get_their_own_labels(second_app, client):
    images = [RED_ON_GREEN, BLUE_ON_GREY]
    response = await client.post(
        f"{second_app.url}/v1/classify",
        json={"images": [base64.b64encode(encode(i, "JPEG", quality=95)).decode() for i in images]},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["predictions"][0]["label"] for r in results] == ["red", "blue"]


async def test_model_reports_the_second_models_spec(second_app, client):
    response = await client.get(f"{second_app.url}/v1/model")
    assert response.status_code == 200, response.text
    model = response.json()
    assert model["name"] == tiny.NAME and model["path"] == str(second_app.settings.model_path)
    assert model["input_shape"] == ["batch", 3, 160, 160] and model["num_classes"] == 10
    assert model["spec"] == {**tiny.SPEC, "mean": list(tiny.MEAN), "std": list(tiny.STD)}
    assert model["fast_jpeg_decode"] is False
