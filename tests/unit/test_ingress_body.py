"""Reading a classify body: size limits (declared and counted), content-type dispatch,
multipart rules, and large bodies parsed off the event loop."""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import threading
import time

import orjson
import pytest
from starlette.requests import Request

from ingress import body as body_module
from ingress import parsing
from ingress.body import OFFLOAD_BYTES, off_loop_above, read_classify_request
from ingress.limits import ByteBudget, Refused
from rabbit_serve.errors import ClientError
from rabbit_serve.settings import Settings
from tests.images import sample

COFFEE = sample("coffee.jpg")
SETTINGS = Settings(max_request_bytes=1_000_000)
MiB = 1024 * 1024


class Body:
    """An ASGI body in chunks; counts how many were read."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.read = 0

    async def receive(self) -> dict:
        if self.read < len(self.chunks):
            chunk = self.chunks[self.read]
            self.read += 1
            return {
                "type": "http.request",
                "body": chunk,
                "more_body": self.read < len(self.chunks),
            }
        return {"type": "http.disconnect"}


def request(body: Body, headers: dict[str, str], query: str = "") -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/classify",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, body.receive)


async def read(body: Body, headers: dict[str, str], query: str = "", settings=SETTINGS):
    return await read_classify_request(request(body, headers, query), settings)


async def refused(body: Body, headers: dict[str, str], settings=SETTINGS) -> ClientError:
    with pytest.raises(ClientError) as info:
        await read(body, headers, settings=settings)
    return info.value


def json_of(**fields) -> bytes:
    return orjson.dumps(fields)


def multipart(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# -- limits ---------------------------------------------------------------------------------


async def test_a_declared_length_over_the_limit_is_refused_before_reading():
    body = Body(b"x" * 10)
    error = await refused(body, {"content-type": "application/json", "content-length": "1000001"})
    assert error.status == 413 and "limit of 1000000 bytes" in error.message
    assert body.read == 0


@pytest.mark.parametrize("content_type", ["application/json", "image/jpeg"])
async def test_a_chunked_body_is_counted_and_stopped_at_the_limit(content_type):
    chunk = b"A" * 100_000
    body = Body(*[chunk] * 30)  # 3 MB, no content-length
    error = await refused(body, {"content-type": content_type})
    assert error.status == 413 and "limit of 1000000 bytes" in error.message
    assert body.read == 11  # the first chunk past the limit, and no further


async def test_a_chunked_multipart_body_is_stopped_at_the_limit():
    data = multipart("b0", *[("file", f"{i}.jpg", COFFEE + bytes(300_000)) for i in range(5)])
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    body = Body(*chunks)
    error = await refused(body, {"content-type": "multipart/form-data; boundary=b0"})
    assert error.status == 413 and body.read < len(chunks)


# -- the byte budget -----------------------------------------------------------------------


async def test_a_declared_length_past_the_budget_is_503_before_a_byte_is_read():
    budget = ByteBudget(500_000)
    other = 500_000 - len(COFFEE) + 1  # another request's body: one byte too many
    budget.hold().cover(other)
    body = Body(COFFEE)
    hold = budget.hold()
    headers = {"content-type": "image/jpeg", "content-length": str(len(COFFEE))}
    with pytest.raises(Refused) as info:
        await read_classify_request(request(body, headers), SETTINGS, hold)
    assert info.value.status == 503 and "MAX_INFLIGHT_BYTES" in info.value.message
    assert body.read == 0 and hold.reserved == 0 and budget.used == other


async def test_a_declared_length_is_reserved_up_front():
    budget = ByteBudget(1_000_000)
    hold = budget.hold()
    headers = {"content-type": "image/jpeg", "content-length": str(len(COFFEE))}
    parsed = await read_classify_request(request(Body(COFFEE), headers), SETTINGS, hold)
    assert parsed.images == [COFFEE] and hold.reserved == len(COFFEE) == budget.used


async def test_a_body_past_the_size_limit_is_413_whatever_the_budget():
    hold = ByteBudget(10).hold()
    headers = {"content-type": "application/json", "content-length": "1000001"}
    with pytest.raises(ClientError) as info:
        await read_classify_request(request(Body(b"x"), headers), SETTINGS, hold)
    assert info.value.status == 413


@pytest.mark.parametrize("content_type", ["application/json", "image/jpeg", "multipart"])
async def test_a_body_without_a_length_is_counted_as_it_arrives_and_stopped_past_the_budget(
    content_type,
):
    data = b"A" * 500_000
    headers = {"content-type": content_type}
    if content_type == "multipart":
        headers = {"content-type": "multipart/form-data; boundary=b9"}
        data = multipart("b9", ("file", "a.jpg", COFFEE + bytes(500_000)))
    budget = ByteBudget(250_000)
    hold = budget.hold()
    body = Body(*[data[i : i + 100_000] for i in range(0, len(data), 100_000)])  # no length
    with pytest.raises(Refused) as info:
        await read_classify_request(request(body, headers), SETTINGS, hold)
    assert info.value.status == 503
    assert body.read == 3  # the chunk that would pass the budget, and no further
    assert hold.reserved == budget.used == 200_000


# -- dispatch by content type ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=utf-8"]
)
async def test_json_and_no_content_type_are_json(content_type):
    headers = {"content-type": content_type} if content_type else {}
    payload = json_of(image=base64.b64encode(COFFEE).decode(), top_k=2)
    parsed = await read(Body(payload), headers)
    assert parsed.images == [COFFEE] and parsed.top_k == 2 and not parsed.multi


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/octet-stream"])
async def test_the_file_itself_with_options_in_the_query(content_type):
    parsed = await read(
        Body(COFFEE[:20000], COFFEE[20000:]),
        {"content-type": content_type},
        "top_k=3&callback_url=https://hooks.example/x",
    )
    assert parsed.images == [COFFEE] and parsed.top_k == 3
    assert parsed.callback_url == "https://hooks.example/x"


async def test_an_option_given_twice_in_the_query_is_422():
    # Found by the schema fuzzer: "top_k=3&top_k=" silently meant the default.
    with pytest.raises(ClientError) as info:
        await read(Body(COFFEE), {"content-type": "image/jpeg"}, "top_k=3&top_k=")
    error = info.value
    assert error.status == 422 and "'top_k' is given 2 times" in error.message


async def test_an_option_given_twice_in_a_form_is_422():
    data = multipart("b3", ("file", "a.jpg", COFFEE), ("top_k", None, b"1"), ("top_k", None, b"2"))
    error = await refused(Body(data), {"content-type": "multipart/form-data; boundary=b3"})
    assert error.status == 422 and "'top_k' is given 2 times" in error.message


async def test_a_multipart_upload_with_several_files_and_fields():
    data = multipart(
        "b1", ("file", "a.jpg", COFFEE), ("file", "b.jpg", COFFEE), ("top_k", None, b"1")
    )
    parsed = await read(Body(data), {"content-type": "multipart/form-data; boundary=b1"})
    assert parsed.images == [COFFEE, COFFEE] and parsed.top_k == 1 and parsed.multi


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_other_content_types_are_415(content_type):
    error = await refused(Body(b"{}"), {"content-type": content_type})
    assert error.status == 415 and "unsupported content type" in error.message


async def test_multipart_without_a_boundary_is_400():
    error = await refused(Body(b"--x\r\n\r\n"), {"content-type": "multipart/form-data"})
    assert error.status == 400 and "multipart" in error.message


async def test_a_file_part_sent_as_text_is_422():
    data = multipart("b2", ("file", None, base64.b64encode(COFFEE)))
    error = await refused(Body(data), {"content-type": "multipart/form-data; boundary=b2"})
    assert error.status == 422 and "file part" in error.message


# -- off the event loop ---------------------------------------------------------------------


async def test_small_work_stays_on_the_loop_and_large_work_goes_to_a_thread():
    loop_thread = threading.get_ident()
    assert await off_loop_above(OFFLOAD_BYTES - 1, threading.get_ident) == loop_thread
    assert await off_loop_above(OFFLOAD_BYTES, threading.get_ident) != loop_thread


def padded_jpeg(size: int) -> bytes:
    # Decoders stop at the JPEG's end marker; the header check reads only the header.
    return COFFEE + bytes(size - len(COFFEE))


async def test_a_16_mib_json_body_does_not_block_the_loop():
    settings = Settings(max_request_bytes=17 * MiB, max_image_bytes=12 * MiB)
    image = padded_jpeg(12 * MiB)
    payload = json_of(image=base64.b64encode(image).decode())
    assert 16 * MiB <= len(payload) <= 17 * MiB

    started = time.perf_counter()
    assert parsing.parse_json(payload, settings).images == [image]
    blocking_s = time.perf_counter() - started

    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    before = len(ticks)
    parsed = await read(Body(payload), {"content-type": "application/json"}, settings=settings)
    during = ticks[before:]
    stop.set()
    await task
    assert parsed.images == [image]
    # On the loop the parse would allow no tick at all for its whole duration.
    assert len(during) >= 3, (len(during), blocking_s)
    longest_gap = max(b - a for a, b in zip(ticks[before - 1 :], ticks[before:], strict=False))
    assert longest_gap < blocking_s, (longest_gap, blocking_s)


async def test_large_bodies_are_parsed_on_a_worker_thread(monkeypatch):
    threads: list[int] = []
    real = body_module.parse_json

    def spy(body: bytes, settings: Settings):
        threads.append(threading.get_ident())
        return real(body, settings)

    monkeypatch.setattr(body_module, "parse_json", spy)
    small = json_of(image=base64.b64encode(COFFEE).decode())  # 96 KB
    large = json_of(image=base64.b64encode(padded_jpeg(OFFLOAD_BYTES)).decode())
    assert len(small) < OFFLOAD_BYTES <= len(large)
    headers = {"content-type": "application/json"}
    settings = Settings(max_request_bytes=4 * MiB)
    await read(Body(small), headers, settings=settings)
    await read(Body(large), headers, settings=settings)
    assert threads[0] == threading.get_ident() != threads[1]


# -- base64 in slices -----------------------------------------------------------------------


def _whole(value: str) -> bytes | type[Exception]:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return ValueError


def _sliced(value: str) -> bytes | type[Exception]:
    try:
        return parsing._b64decode(value)
    except (binascii.Error, ValueError):
        return ValueError


def test_sliced_base64_decodes_exactly_like_one_call(monkeypatch):
    monkeypatch.setattr(parsing, "_B64_SLICE", 8)
    rng = random.Random(8)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    cases = ["", "=", "QQ==", "QUJD=", "QUJD====", "QUJDQUJD====", "QUJDQUJ=QUJD", "QQ==QUJD"]
    for _ in range(3000):
        n = rng.randrange(0, 40)
        text = "".join(rng.choice(alphabet) for _ in range(n))
        if rng.random() < 0.5:
            text = base64.b64encode(rng.randbytes(n)).decode()
        if rng.random() < 0.3 and text:
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice("=$ -_\n") + text[at + 1 :]
        cases.append(text)
    for case in cases:
        assert _sliced(case) == _whole(case), case
