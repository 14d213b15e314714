"""The Open Inference Protocol v2 on the running service, spoken by the real ``tritonclient``
(sync and ``aio``, binary and JSON): the same queue, batching and model as ``/v1``.

The ``oip`` app has API keys on (so every call carries one, as a Triton client would in
production) and ``MAX_TOP_K=1000``, which lets the ``probabilities`` output carry all
1000 scores; bad input goes to the ``orphan`` app, which has no consumers, so anything
it published would stay in its request queue, where the test looks.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from rabbit_serve.local_cluster import App, deploy, queue_depth, remove_app, wait_healthy
from tests.images import CAT_CLASSES, ESPRESSO, sample
from tests.integration.conftest import CLOCK_SLACK_S, SLOW_SPELL_S

pytestmark = pytest.mark.integration

MODEL = "efficientnet-lite0"
KEY = "oip-key"


def auth() -> dict[str, str]:
    # A new dict each call: tritonclient's infer() writes Inference-Header-Content-Length
    # into the headers it is given, which would leak into the next request.
    return {"x-api-key": KEY}


CHELSEA, COFFEE = sample("chelsea.jpg"), sample("coffee.jpg")


@pytest.fixture(scope="module")
def oip_app(serve_base_url: str) -> Iterator[App]:
    app = deploy(
        "oip", "/oip", serve_base_url, NUM_CONSUMERS=1, TIMEOUT=30, MAX_TOP_K=1000, API_KEYS=KEY
    )
    try:
        wait_healthy(app.url)
        yield app
    finally:
        depth = remove_app(app)
    assert depth == 0, f"{depth} messages were left unacknowledged in the request queue"


def host(app: App) -> str:
    """tritonclient's form of a URL: no scheme, the app's route prefix kept."""
    return app.url.removeprefix("http://")


def images_input(images: list[bytes], binary: bool) -> triton.InferInput:
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def top_of(strings: np.ndarray) -> list[int]:
    """The class index of each row's best ``"score:index:label"``."""
    rows = strings.reshape(strings.shape[0], -1)
    return [int((s.decode() if isinstance(s, bytes) else s).split(":")[1]) for s in rows[:, 0]]


def test_sync_client_reads_metadata_and_config(oip_app):
    client = triton.InferenceServerClient(host(oip_app))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=auth())
    metadata = client.get_model_metadata(MODEL, headers=auth())
    assert metadata["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
    assert metadata["outputs"][0]["shape"] == [-1, 1000]
    assert client.get_model_config(MODEL, headers=auth())["input"][0]["data_type"] == "TYPE_STRING"
    assert "classification" in client.get_server_metadata(headers=auth())["extensions"]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata(MODEL)
    assert caught.value.status() == "401"


@pytest.mark.parametrize("binary", [True, False])
def test_sync_client_classifies_chelsea_and_coffee(oip_app, binary):
    client = triton.InferenceServerClient(host(oip_app))
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    result = client.infer(
        MODEL, [images_input([CHELSEA, COFFEE], binary)], outputs=[output], headers=auth()
    )
    strings = result.as_numpy("probabilities")
    assert strings.shape == (2, 3)
    chelsea, coffee = top_of(strings)
    assert chelsea in CAT_CLASSES and coffee == ESPRESSO
    label = strings[1, 0].decode() if isinstance(strings[1, 0], bytes) else strings[1, 0]
    assert label.endswith(":967:espresso") and float(label.split(":")[0]) > 0.5


@pytest.mark.parametrize("binary", [True, False])
def test_sync_client_gets_all_the_probabilities(oip_app, binary):
    client = triton.InferenceServerClient(host(oip_app))
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [images_input([COFFEE], binary)], outputs=[output], headers=auth())
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert int(probabilities.argmax()) == ESPRESSO
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-3)


def test_no_outputs_named_means_all_of_them_in_binary(oip_app):
    client = triton.InferenceServerClient(host(oip_app))
    result = client.infer(MODEL, [images_input([CHELSEA], True)], headers=auth())
    assert int(result.as_numpy("probabilities").argmax()) in CAT_CLASSES


async def test_aio_client_binary_and_json_together(oip_app):
    client = triton_aio.InferenceServerClient(host(oip_app))

    async def classify(image: bytes, binary: bool) -> int:
        output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=1)
        tensor = images_input([image], binary)
        result = await client.infer(MODEL, [tensor], outputs=[output], headers=auth())
        return top_of(result.as_numpy("probabilities"))[0]

    try:
        assert await client.is_model_ready(MODEL, headers=auth())
        # Concurrent requests: they share the consumer's batches as /v1 requests do.
        answers = await asyncio.gather(
            *(classify(img, i % 4 < 2) for i, img in enumerate([CHELSEA, COFFEE] * 4))
        )
    finally:
        await client.close()
    assert [a in CAT_CLASSES for a in answers[::2]] == [True] * 4
    assert answers[1::2] == [ESPRESSO] * 4


# -- bad input: a 4xx {"error"}, and nothing reaches the queue -------------------------------


def json_body(**fields: object) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1]}
    tensor.update(fields)
    return {
        "inputs": [tensor],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }


def binary_body(image: bytes, cut: int) -> tuple[bytes, dict[str, str]]:
    """A tritonclient-built binary request with its last ``cut`` bytes missing."""
    body, length = triton.InferenceServerClient.generate_request_body(
        [images_input([image], True)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=1)],
    )
    return body[:-cut], {"Inference-Header-Content-Length": str(length)}


COFFEE_B64 = base64.b64encode(COFFEE).decode()
BAD = {
    "wrong datatype": (json_body(datatype="FP32", data=[1.0]), 400, "BYTES"),
    "shape mismatch": (json_body(shape=[2], data=[COFFEE_B64]), 400, "shape says 2"),
    "bad base64": (json_body(data=["not*base64!"]), 400, "not valid base64"),
    "not an image": (json_body(data=[base64.b64encode(b"plain text").decode()]), 422, "image[0]"),
    "empty image": (json_body(data=[""]), 422, "image[0] is empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_nothing_is_queued(orphan_app, case):
    body, status, fragment = BAD[case]
    before = queue_depth(orphan_app.settings, orphan_app.settings.request_queue)
    response = httpx.post(f"{orphan_app.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert queue_depth(orphan_app.settings, orphan_app.settings.request_queue) == before


def test_truncated_binary_and_a_wrong_model_are_refused_and_nothing_is_queued(orphan_app):
    depth = lambda: queue_depth(orphan_app.settings, orphan_app.settings.request_queue)  # noqa: E731
    before = depth()
    body, headers = binary_body(COFFEE, cut=100)
    cut = httpx.post(
        f"{orphan_app.url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30
    )
    assert cut.status_code == 400 and "truncated" in cut.json()["error"]
    client = triton.InferenceServerClient(host(orphan_app))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("resnet50", [images_input([COFFEE], True)])
    assert caught.value.status() == "404" and "resnet50" in caught.value.message()
    assert depth() == before


def test_the_timeout_parameter_is_the_deadline(orphan_app):
    # No consumers: only the deadline ends the wait, 0.5 s here against TIMEOUT=3 s.
    client = triton.InferenceServerClient(host(orphan_app))
    output = triton.InferRequestedOutput("probabilities", class_count=1)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [images_input([COFFEE], True)], outputs=[output], timeout=500_000)
    elapsed = time.monotonic() - started
    assert caught.value.status() == "504" and "500000 us" in caught.value.message()
    assert 0.5 - CLOCK_SLACK_S <= elapsed <= 0.5 + SLOW_SPELL_S, elapsed
    assert elapsed < orphan_app.settings.timeout
