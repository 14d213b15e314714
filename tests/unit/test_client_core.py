"""The client's pure half: the retry policy, errors from answers, inputs to bytes, and
answers (as the service's own renderer writes them) to typed results."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from rabbit_serve import client_core as core
from rabbit_serve import render
from rabbit_serve.client_core import (
    RequestRejected,
    RetryPolicy,
    ServerError,
    TimedOut,
    Unauthorized,
    Unavailable,
)
from rabbit_serve.messages import ClassifyResult

PREDICTIONS = [
    {"class_id": 967, "label": "espresso", "score": 0.954},
    {"class_id": 968, "label": "cup", "score": 0.012},
]


def test_a_rendered_answer_becomes_typed_predictions():
    result = ClassifyResult("r-0", "r", 0, predictions=PREDICTIONS, batch_size=4, timings_ms={})
    rendered = render.classified("r", "m", [result], multi=False, timeout=10, total_ms=3.0)
    parsed = core.classification(rendered.body)
    assert parsed.model == "m" and parsed.batch_size == 4
    top = parsed.predictions[0]
    assert (top.class_id, top.label, top.score) == (967, "espresso", 0.954)


def test_health_answers_parse_both_ways():
    ok = core.health(render.health(True, True, None).body)
    down = core.health(render.health(False, True, "broker down").body)
    assert ok.status == "ok" and down.status == "unavailable" and down.reason == "broker down"


@pytest.mark.parametrize(
    "status,kind",
    [
        (400, RequestRejected),
        (401, Unauthorized),
        (413, RequestRejected),
        (422, RequestRejected),
        (408, TimedOut),
        (504, TimedOut),
        (503, Unavailable),
        (429, Unavailable),
        (409, Unavailable),
        (500, ServerError),
        (502, ServerError),
    ],
)
def test_each_status_has_its_exception(status, kind):
    exc = core.error_for(status, render.error("what went wrong"))
    assert type(exc) is kind
    assert exc.status == status and exc.message == "what went wrong"
    assert str(exc) == f"{status}: what went wrong"


def test_unauthorized_is_a_rejection_and_every_error_is_one_base():
    assert issubclass(Unauthorized, RequestRejected)
    for kind in (RequestRejected, TimedOut, Unavailable, ServerError):
        assert issubclass(kind, core.RabbitServeError)


@pytest.mark.parametrize(
    "body,message",
    [
        (b'{"detail": "not an image"}', "not an image"),
        (b'{"error": "unknown model"}', "unknown model"),  # the /v2 shape
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "no message"),
        (b'{"detail": 3}', '{"detail": 3}'),
    ],
)
def test_error_message_reads_either_shape_and_falls_back_to_text(body, message):
    assert core.error_message(body) == message


@pytest.mark.parametrize(
    "value,seconds",
    [
        ("1", 1.0),
        (" 7 ", 7.0),
        ("0.5", 0.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-1", None),
        ("nan", None),
    ],
)
def test_retry_after(value, seconds):
    assert core.parse_retry_after(value) == seconds


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(base_delay=0.25, max_delay=3.0, jitter=0.0)
    assert [policy.delay(n, None) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_after_is_a_floor_and_the_cap_still_holds():
    policy = RetryPolicy(base_delay=0.25, max_delay=10.0, jitter=0.0)
    assert policy.delay(0, "2") == 2.0  # the server's hint wins over a short backoff
    assert policy.delay(4, "1") == 4.0  # a long backoff wins over a short hint
    assert policy.delay(0, "3600") == 10.0  # never longer than max_delay


def test_jitter_spreads_the_wait_both_ways_within_its_fraction():
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter=0.2)
    assert policy.delay(0, None, random=0.0) == pytest.approx(0.8)
    assert policy.delay(0, None, random=0.5) == pytest.approx(1.0)
    assert policy.delay(0, None, random=0.999999) == pytest.approx(1.2, abs=1e-5)


@pytest.mark.parametrize("status", [None, 409, 429, 503])
def test_retryable_answers_are_retried_until_the_tries_are_spent(status):
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(0, status) and policy.should_retry(1, status)
    assert not policy.should_retry(2, status)


@pytest.mark.parametrize("status", [400, 401, 413, 422, 500, 504])
def test_final_answers_are_not_retried(status):
    assert not RetryPolicy().should_retry(0, status)


def test_bytes_pass_through_and_a_path_is_read(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8 jpeg")
    assert core.image_bytes(b"abc") == b"abc"
    assert core.image_bytes(bytearray(b"abc")) == b"abc"
    assert core.image_bytes(memoryview(b"abc")) == b"abc"
    assert core.image_bytes(path) == core.image_bytes(str(path)) == b"\xff\xd8 jpeg"


def test_a_missing_file_and_a_wrong_type_raise():
    with pytest.raises(FileNotFoundError):
        core.image_bytes("/nonexistent/image.jpg")
    with pytest.raises(TypeError, match="int"):
        core.image_bytes(3)


@pytest.mark.parametrize(
    "mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("RGBA", "PNG"), ("P", "PNG")]
)
def test_pil_images_are_encoded_keeping_alpha_and_palettes(mode, fmt):
    data = core.image_bytes(Image.new(mode, (32, 24)))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == fmt and decoded.size == (32, 24)


def test_request_parts():
    assert core.classify_params(None) == {}
    assert core.classify_params(3) == {"top_k": "3"}
    assert core.headers(None) == {"content-type": "application/octet-stream"}
    assert core.headers("k")["authorization"] == "Bearer k"
