import pytest
from hypothesis import given
from hypothesis import strategies as st

from rabbit_serve.messages import (
    H_DEADLINE,
    H_PIXELS_LIST,
    H_SIZES,
    H_TOP_K,
    ClassifyResult,
    ErrorInfo,
    MalformedMessage,
    decode_reply,
    decode_task,
    decode_tasks,
    encode_bundle,
    encode_reply,
    encode_task,
)
from tests.factories import make_task


def roundtrip(task):
    msg = encode_task(task)
    return decode_task(msg.body, msg.headers, msg.message_id, msg.reply_to)


def test_body_is_the_raw_image_not_base64():
    task = make_task()
    assert encode_task(task).body == task.image


def test_roundtrip_keeps_every_field_and_millisecond_times():
    task = make_task(callback_url="https://example.org/hook", reply_to=None)
    back = roundtrip(task)
    assert back.id == task.id and back.request_id == task.request_id
    assert back.image == task.image and back.top_k == task.top_k
    assert back.callback_url == task.callback_url and back.reply_to is None
    assert back.sent_at == pytest.approx(task.sent_at, abs=0.001)
    assert back.deadline == pytest.approx(task.deadline, abs=0.001)


def test_expiration_is_the_time_left_until_the_deadline():
    task = make_task()
    assert encode_task(task).expiration == pytest.approx(10.0)


def test_headers_carry_integers_for_times():
    # Floats in AMQP tables may be narrowed to 32 bits; epoch ms as int are exact.
    msg = encode_task(make_task())
    assert isinstance(msg.headers[H_DEADLINE], int)


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda h: h.pop(H_TOP_K), "missing header"),
        (lambda h: h.update({H_TOP_K: "five"}), "should be int"),
        (lambda h: h.update({H_TOP_K: 0}), "top_k must be positive"),
        (lambda h: h.update({H_DEADLINE: True}), "should be int"),
    ],
)
def test_bad_headers_are_malformed(mutate, reason):
    msg = encode_task(make_task())
    headers = dict(msg.headers)
    mutate(headers)
    with pytest.raises(MalformedMessage, match=reason):
        decode_task(msg.body, headers, msg.message_id, msg.reply_to)


def test_message_without_a_way_back_is_malformed():
    msg = encode_task(make_task(reply_to=None))
    with pytest.raises(MalformedMessage, match="neither reply_to"):
        decode_task(msg.body, msg.headers, msg.message_id, None)


def test_empty_body_and_missing_id_are_malformed():
    msg = encode_task(make_task())
    with pytest.raises(MalformedMessage):
        decode_task(b"", msg.headers, msg.message_id, msg.reply_to)
    with pytest.raises(MalformedMessage):
        decode_task(msg.body, msg.headers, None, msg.reply_to)


@given(
    body=st.binary(max_size=64),
    headers=st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.integers(),
            st.text(max_size=10),
            st.floats(),
            st.binary(max_size=8),
            st.booleans(),
            st.none(),
        ),
        max_size=8,
    ),
    message_id=st.one_of(st.none(), st.text(max_size=10)),
    reply_to=st.one_of(st.none(), st.text(max_size=10)),
)
def test_decoder_only_ever_raises_malformed(body, headers, message_id, reply_to):
    try:
        decode_task(body, headers, message_id, reply_to)
    except MalformedMessage:
        pass


def test_result_json_roundtrip_success_and_error():
    ok = ClassifyResult(
        id="a",
        request_id="r",
        index=1,
        predictions=[{"class_id": 967, "label": "espresso", "score": 0.9}],
        batch_size=4,
        timings_ms={"inference": 3.5},
    )
    assert ClassifyResult.from_json(ok.to_json()) == ok
    bad = ClassifyResult(id="b", request_id="r", index=2, error=ErrorInfo(422, "truncated"))
    back = ClassifyResult.from_json(bad.to_json())
    assert back.error == ErrorInfo(422, "truncated") and back.predictions is None


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"id": 1}', b'{"error": 5}'])
def test_undecodable_results_are_malformed(data):
    with pytest.raises(MalformedMessage):
        ClassifyResult.from_json(data)


def test_a_reply_carries_a_batch_of_results_or_a_single_one():
    results = [
        ClassifyResult(f"t{i}", "r", i, predictions=[], batch_size=3, timings_ms={"x": 1.0})
        for i in range(3)
    ]
    assert decode_reply(encode_reply(results)) == results
    assert decode_reply(results[0].to_json()) == results[:1]


@pytest.mark.parametrize("data", [b"", b"[", b"[]", b"[1]", b'[{"id": "a"}]', b"5"])
def test_undecodable_replies_are_malformed(data):
    with pytest.raises(MalformedMessage):
        decode_reply(data)


# -- bundles: the images of one request as one message -------------------------------


def bundle_tasks(count: int = 3, **overrides):
    return [
        make_task(
            id=f"rq-{i}",
            request_id="rq",
            index=i,
            image=bytes([i + 1]) * (i + 2),
            pixels=100 * (i + 1),
            sent_at=1000.25,
            deadline=1030.5,
            **overrides,
        )
        for i in range(count)
    ]


def decode_message(msg, **changes):
    fields = {
        "body": msg.body,
        "headers": dict(msg.headers),
        "message_id": msg.message_id,
        "reply_to": msg.reply_to,
    }
    fields.update(changes)
    return decode_tasks(**fields)


@pytest.mark.parametrize("callback", [None, "https://example.org/hook"])
def test_a_bundle_roundtrips_to_the_same_tasks(callback):
    reply_to = None if callback else "rabbit-serve.replies.test"
    tasks = bundle_tasks(callback_url=callback, reply_to=reply_to)
    msg = encode_bundle(tasks)
    assert msg.message_id == "rq" and msg.body == b"".join(t.image for t in tasks)
    assert msg.headers[H_SIZES] == [2, 3, 4] and msg.headers[H_PIXELS_LIST] == [100, 200, 300]
    assert msg.expiration == pytest.approx(30.25)
    assert decode_message(msg) == tasks


def test_decode_tasks_reads_a_one_image_message_too():
    task = make_task(sent_at=1.5, deadline=9.5, pixels=7)
    assert decode_message(encode_task(task)) == [task]


@pytest.mark.parametrize(
    "change",
    [
        {"body": b""},
        {"body": b"\x01\x01\x02\x02\x02\x03\x03\x03\x03!"},  # one byte more than the sizes
        {"message_id": "rq-0"},
        {"message_id": None},
        {"reply_to": None},
        {"headers": {H_SIZES: [2, 3, 4]}},
    ],
)
def test_an_inconsistent_bundle_is_malformed(change):
    with pytest.raises(MalformedMessage):
        decode_message(encode_bundle(bundle_tasks()), **change)


@pytest.mark.parametrize(
    "header, value",
    [
        (H_SIZES, [2, 3]),
        (H_SIZES, [2, 0, 3, 4]),
        (H_SIZES, [5, 0, 4]),
        (H_SIZES, []),
        (H_SIZES, [2, -1, 8]),
        (H_SIZES, "2,3,4"),
        (H_SIZES, [2, True, 5]),
        (H_PIXELS_LIST, [1, 2]),
        (H_PIXELS_LIST, [1, -2, 3]),
        (H_PIXELS_LIST, None),
    ],
)
def test_bad_bundle_headers_are_malformed(header, value):
    msg = encode_bundle(bundle_tasks())
    with pytest.raises(MalformedMessage):
        decode_message(msg, headers={**msg.headers, header: value})


def test_a_bundle_without_pixel_counts_has_them_unknown():
    msg = encode_bundle(bundle_tasks())
    headers = {k: v for k, v in msg.headers.items() if k != H_PIXELS_LIST}
    assert [t.pixels for t in decode_message(msg, headers=headers)] == [0, 0, 0]


@given(
    sizes=st.one_of(st.lists(st.integers(-3, 6), max_size=5), st.text(max_size=4), st.none()),
    body=st.binary(max_size=24),
)
def test_the_bundle_decoder_only_ever_raises_malformed(sizes, body):
    msg = encode_bundle(bundle_tasks())
    try:
        tasks = decode_message(msg, body=body, headers={**msg.headers, H_SIZES: sizes})
    except MalformedMessage:
        return
    assert b"".join(t.image for t in tasks) == body and all(t.image for t in tasks)
