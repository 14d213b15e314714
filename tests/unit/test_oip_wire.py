"""The Open Inference Protocol v2: the wire format (pure), and the routes on the real
FastAPI app with a fake broker side. Requests are built by ``tritonclient`` itself where
it can build them (``generate_request_body``) and its answers read by its own parser."""

from __future__ import annotations

import base64
import struct
import time

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from ingress import oip
from ingress.auth import UNAUTHORIZED
from rabbit_serve import oip_wire
from rabbit_serve.errors import ClientError
from rabbit_serve.settings import Settings
from tests.images import sample
from tests.ingress_fakes import client_for, failing, make_service

COFFEE = sample("coffee.jpg")
CHELSEA = sample("chelsea.jpg")
MODEL = "efficientnet-lite0"
INFER = f"/v2/models/{MODEL}/infer"
PREDICTIONS = [
    {"class_id": 967, "label": "espresso", "score": 0.9},
    {"class_id": 968, "label": "cup", "score": 0.05},
]


def triton_body(
    images: list[bytes], *, binary: bool = True, class_count: int = 0, out_binary: bool = True
) -> tuple[bytes, int | None]:
    """What tritonclient sends for ``images`` (base64 text elements in JSON mode)."""
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor = triton.InferInput(oip_wire.INPUT_NAME, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    output = triton.InferRequestedOutput(
        oip_wire.OUTPUT_NAME, binary_data=out_binary, class_count=class_count
    )
    return triton.InferenceServerClient.generate_request_body([tensor], outputs=[output])


def as_json(request: dict) -> bytes:
    return orjson.dumps(request)


def json_request(**input_fields: object) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1]}
    tensor.update(input_fields)
    return {"inputs": [tensor]}


# -- parsing --------------------------------------------------------------------------------


def test_a_binary_request_from_tritonclient_carries_the_image_bytes():
    body, length = triton_body([COFFEE, CHELSEA], class_count=3)
    request = oip_wire.parse_infer(body, length)
    assert request.elements == [COFFEE, CHELSEA]
    assert (request.class_count, request.binary, request.timeout_us) == (3, True, None)


def test_a_json_request_carries_base64_text():
    body, length = triton_body([COFFEE], binary=False, out_binary=False)
    assert length is None
    request = oip_wire.parse_infer(body, None)
    assert request.elements == [base64.b64encode(COFFEE).decode()]
    assert (request.class_count, request.binary) == (0, False)


def test_id_timeout_and_default_binary_output():
    raw = json_request(data=["aGk="])
    raw.update(id="req-7", parameters={"timeout": 250_000, "binary_data_output": True})
    request = oip_wire.parse_infer(as_json(raw), None)
    assert (request.id, request.timeout_us, request.class_count, request.binary) == (
        "req-7",
        250_000,
        0,
        True,
    )


def test_nested_json_data_is_flattened():
    raw = json_request(shape=[2], data=[["YQ=="], ["Yg=="]])
    assert oip_wire.parse_infer(as_json(raw), None).elements == ["YQ==", "Yg=="]


def binary_request(payload: bytes, size: int | None = None, shape: int = 1) -> tuple[bytes, int]:
    params = {"binary_data_size": len(payload) if size is None else size}
    head = as_json(json_request(shape=[shape], parameters=params))
    return head + payload, len(head)


def element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


@pytest.mark.parametrize(
    "body,length,fragment",
    [
        (b"", None, "empty"),
        (b"{oops", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (as_json({"inputs": []}), None, "one input"),
        (as_json(json_request(name="pixels", data=["YQ=="])), None, "unknown input 'pixels'"),
        (as_json(json_request(datatype="FP32", data=[1.0])), None, "BYTES"),
        (as_json(json_request(shape=[1, 3], data=["YQ=="])), None, "shape [N]"),
        (as_json(json_request(shape=[0], data=[])), None, "shape[0] must be"),
        (as_json(json_request(shape=[True], data=["YQ=="])), None, "shape[0] must be"),
        (as_json(json_request(shape=[2], data=["YQ=="])), None, "shape says 2"),
        (as_json(json_request(data=[7])), None, "base64 string"),
        (as_json(json_request(data="YQ==")), None, "must be a list"),
        (as_json(json_request(data=["YQ=="], parameters={"content_type": "str"})), None, "base64"),
        (
            as_json(json_request(parameters={"shared_memory_region": "r"})),
            None,
            "shared memory",
        ),
        (*binary_request(element(b"abc")[:-1]), "truncated"),
        (*binary_request(element(b"abc"), size=99), "truncated"),
        (*binary_request(b"\x03\x00"), "truncated"),
        (*binary_request(element(b"a") + element(b"b")), "shape says 1"),
        (binary_request(element(b"abc"))[0] + b"xx", binary_request(element(b"abc"))[1], "2 bytes"),
        (as_json({**json_request(data=["YQ=="]), "id": 5}), None, "id must be"),
        (as_json({**json_request(data=["YQ=="]), "parameters": {"timeout": 0}}), None, "timeout"),
        (
            as_json({**json_request(data=["YQ=="]), "parameters": {"timeout": True}}),
            None,
            "timeout",
        ),
        (
            as_json({**json_request(data=["YQ=="]), "outputs": [{"name": "x"}]}),
            None,
            "unknown output",
        ),
        (
            as_json(
                {
                    **json_request(data=["YQ=="]),
                    "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}],
                }
            ),
            None,
            "classification",
        ),
    ],
)
def test_malformed_requests_are_400_saying_what(body, length, fragment):
    with pytest.raises(ClientError) as caught:
        oip_wire.parse_infer(body, length)
    assert caught.value.status == 400
    assert fragment in caught.value.message


@pytest.mark.parametrize("value", ["x", "-1", "99999"])
def test_a_bad_header_length_is_a_400(value):
    with pytest.raises(ClientError, match="Inference-Header-Content-Length"):
        oip_wire.header_length(value, 100)


def test_split_elements_reads_what_tritonclient_serializes():
    from tritonclient.utils import serialize_byte_tensor

    values = [b"", b"a", COFFEE[:1000]]
    raw = serialize_byte_tensor(np.array(values, dtype=np.object_)).item()
    assert oip_wire.split_elements(raw, "x") == values


# -- responses, read back by tritonclient's own parser --------------------------------------


def parsed_by_triton(body: bytes, length: int | None) -> triton.InferResult:
    return triton.InferenceServerClient.parse_response_body(body, header_length=length)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_output_is_bytes_of_score_index_label(binary):
    request = oip_wire.InferRequest("r1", ["x", "y"], 2, binary, None)
    body, length = oip_wire.infer_response(MODEL, request, [PREDICTIONS, PREDICTIONS[::-1]], 0)
    assert (length is not None) == binary
    result = parsed_by_triton(body, length)
    strings = result.as_numpy("probabilities")
    assert strings.shape == (2, 2)
    decoded = [s.decode() if isinstance(s, bytes) else s for s in strings.ravel()]
    espresso, cup = "0.900000:967:espresso", "0.050000:968:cup"
    assert decoded == [espresso, cup, cup, espresso]
    response = result.get_response()
    assert response["model_name"] == MODEL and response["id"] == "r1"


@pytest.mark.parametrize("binary", [True, False])
def test_probabilities_output_is_fp32_n_by_c(binary):
    request = oip_wire.InferRequest(None, ["x"], 0, binary, None)
    body, length = oip_wire.infer_response(MODEL, request, [PREDICTIONS], 1000)
    result = parsed_by_triton(body, length)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert probabilities[0, 967] == pytest.approx(0.9) and probabilities[0, 968] == pytest.approx(
        0.05
    )
    assert probabilities.sum() == pytest.approx(0.95)
    assert "id" not in result.get_response()


def test_metadata_and_config_name_the_one_input_and_output():
    metadata = orjson.loads(oip_wire.model_metadata(MODEL, 1000))
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    config = orjson.loads(oip_wire.model_config(MODEL, 1000))
    assert config["input"][0]["data_type"] == "TYPE_STRING" and config["max_batch_size"] == 0
    assert "classification" in orjson.loads(oip_wire.server_metadata("0.1.0"))["extensions"]


def test_a_timeout_shortens_the_deadline_and_never_lengthens_it():
    now = 1_700_000_000.0
    assert oip.start_stamp(None, now, None, 30) is None
    assert oip.start_stamp("t=5", now, 60_000_000, 30) == "t=5"  # past TIMEOUT: unchanged
    stamp = oip.start_stamp(None, now, 500_000, 30)
    assert float(stamp.removeprefix("t=")) + 30 == pytest.approx(now + 0.5)
    # A proxy's earlier stamp wins when it leaves less time than the timeout.
    assert oip.start_stamp(f"t={now - 29.9}", now, 500_000, 30) == f"t={now - 29.9:.6f}"


# -- the routes, with a fake broker side ----------------------------------------------------


async def test_tritonclient_binary_request_goes_through_the_classify_path():
    service, producer = make_service()
    body, length = triton_body([COFFEE, CHELSEA], class_count=1)
    async with client_for(service) as client:
        response = await client.post(
            INFER, content=body, headers={oip_wire.HEADER_LENGTH: str(length)}
        )
    assert response.status_code == 200, response.text
    header = int(response.headers[oip_wire.HEADER_LENGTH])
    strings = parsed_by_triton(response.content, header).as_numpy("probabilities")
    assert [s.decode() for s in strings.ravel()] == ["0.900000:967:espresso"] * 2
    # One bundle message, as /v1 publishes several images.
    assert len(producer.published) == 1 and [t.image for t in producer.tasks] == [COFFEE, CHELSEA]
    assert {t.top_k for t in producer.tasks} == {1}


async def test_probabilities_need_max_top_k_to_cover_every_class():
    service, producer = make_service()
    body, _ = triton_body([COFFEE], binary=False, out_binary=False)
    async with client_for(service) as client:
        refused = await client.post(INFER, content=body)
    assert refused.status_code == 400 and "MAX_TOP_K" in refused.json()["error"]
    assert producer.published == []
    service, producer = make_service(Settings(max_top_k=1000))
    async with client_for(service) as client:
        response = await client.post(INFER, content=body)
    assert response.status_code == 200, response.text
    assert producer.tasks[0].top_k == 1000
    output = response.json()["outputs"][0]
    assert output["shape"] == [1, 1000] and output["data"][967] == pytest.approx(0.9)


BAD_BODIES = {
    "wrong datatype": as_json(json_request(datatype="FP32", data=[1.0])),
    "shape mismatch": as_json(json_request(shape=[2], data=["YQ=="])),
    "bad base64": as_json(json_request(data=["%%% not base64"])),
    "not an image": as_json(json_request(data=[base64.b64encode(b"hello").decode()])),
    "class count over MAX_TOP_K": as_json(
        {
            **json_request(data=[base64.b64encode(COFFEE).decode()]),
            "outputs": [{"name": "probabilities", "parameters": {"classification": 101}}],
        }
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_input_is_a_4xx_error_and_nothing_is_queued(case):
    service, producer = make_service()
    async with client_for(service) as client:
        response = await client.post(INFER, content=BAD_BODIES[case])
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]
    assert producer.published == []


async def test_truncated_binary_and_wrong_model_are_4xx_and_nothing_is_queued():
    service, producer = make_service()
    body, length = triton_body([COFFEE])
    async with client_for(service) as client:
        cut = await client.post(
            INFER, content=body[:-10], headers={oip_wire.HEADER_LENGTH: str(length)}
        )
        wrong = await client.post("/v2/models/resnet50/infer", content=body)
        version = await client.get(f"/v2/models/{MODEL}/versions/2")
    assert cut.status_code == 400 and "truncated" in cut.json()["error"]
    assert wrong.status_code == 404 and "resnet50" in wrong.json()["error"]
    assert version.status_code == 404 and "version" in version.json()["error"]
    assert producer.published == []


async def test_metadata_ready_config_and_versions():
    service, _ = make_service()
    async with client_for(service) as client:
        server = await client.get("/v2")
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        metadata = await client.get(f"/v2/models/{MODEL}/versions/1")
        model_ready = await client.get(f"/v2/models/{MODEL}/ready")
        config = await client.get(f"/v2/models/{MODEL}/config")
    assert server.json()["name"] == "rabbit-serve"
    assert live.status_code == ready.status_code == model_ready.status_code == 200
    assert metadata.json()["outputs"][0]["shape"] == [-1, 1000]
    assert config.json()["name"] == MODEL


async def test_keys_guard_v2_like_v1_and_health_stays_open():
    service, producer = make_service(Settings(api_keys=("key-one",)))
    body, length = triton_body([COFFEE], class_count=1)
    headers = {oip_wire.HEADER_LENGTH: str(length)}
    async with client_for(service) as client:
        for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/config"):
            response = await client.get(path)
            assert response.status_code == 401 and response.json() == {"error": UNAUTHORIZED}
        refused = await client.post(INFER, content=body, headers=headers)
        assert refused.status_code == 401 and producer.published == []
        assert (await client.get("/v2/health/live")).status_code == 200
        allowed = await client.post(
            INFER, content=body, headers={**headers, "x-api-key": "key-one"}
        )
    assert allowed.status_code == 200, allowed.text


async def test_the_timeout_parameter_becomes_the_deadline():
    service, producer = make_service(answer=lambda task: None)
    raw = {
        **json_request(data=[base64.b64encode(COFFEE).decode()]),
        "parameters": {"timeout": 200_000},
    }
    raw["outputs"] = [{"name": "probabilities", "parameters": {"classification": 1}}]
    started = time.monotonic()
    async with client_for(service) as client:
        response = await client.post(INFER, content=as_json(raw))
    assert time.monotonic() - started < 5
    assert response.status_code == 504 and "200000 us" in response.json()["error"]
    task = producer.tasks[0]
    assert task.deadline - task.sent_at == pytest.approx(0.2, abs=0.05)


async def test_a_failed_image_fails_the_request_with_its_status():
    service, _ = make_service(answer=failing(422, "poison: the classifier failed on it"))
    body, length = triton_body([COFFEE, CHELSEA], class_count=1)
    async with client_for(service) as client:
        response = await client.post(
            INFER, content=body, headers={oip_wire.HEADER_LENGTH: str(length)}
        )
    assert response.status_code == 422
    assert response.json() == {"error": "image[0]: poison: the classifier failed on it"}


async def test_a_broker_refusal_is_a_503_error_with_retry_after():
    service, _ = make_service(fail="the message broker is blocking publishes")
    body, length = triton_body([COFFEE], class_count=1)
    async with client_for(service) as client:
        response = await client.post(
            INFER, content=body, headers={oip_wire.HEADER_LENGTH: str(length)}
        )
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "blocking publishes" in response.json()["error"]


def test_v2_routes_stay_out_of_the_openapi_schema():
    from ingress.api import create_app

    assert not [path for path in create_app().openapi()["paths"] if path.startswith("/v2")]


async def test_an_idempotency_key_retry_is_replayed_not_queued_again():
    from tests.fakes import FakeLedger

    service, producer = make_service(idempotency=FakeLedger())
    body, length = triton_body([COFFEE], class_count=1)
    headers = {oip_wire.HEADER_LENGTH: str(length), "Idempotency-Key": "oip-1"}
    async with client_for(service) as client:
        first = await client.post(INFER, content=body, headers=headers)
        again = await client.post(INFER, content=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert len(producer.published) == 1
