"""Hostile and odd input over HTTP, one explicit case at a time.

Every case gets the exact status and a message that says what is wrong, never a 500,
and none of them may take a replica down: the last test checks that the same Serve
replicas (and ingress reply queues) are there after all of them, and that a good image
is still classified correctly.

Complements ``test_failures.py`` (which covers bad base64, empty ``image``, fake GIF,
plain text, the PNG bomb, ``image`` as a number, ``images`` as a string, ``top_k`` of
10**9 / -1 / "5", ``{}``, a truncated JPEG, ``{oops``, ``text/plain``, multipart without
``file`` and a 17 MiB body with a content-length); none of those are repeated here.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import ray
from PIL import Image

from tests.images import ESPRESSO, IMAGES_DIR, bomb_png, encode, sample

pytestmark = pytest.mark.integration

# The defaults of rabbit_serve.settings, which the `main` test app does not override.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_IMAGES_PER_REQUEST = 32
MAX_IMAGE_PIXELS = 40_000_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def coffee(fmt: str) -> bytes:
    return encode(Image.open(IMAGES_DIR / "coffee.jpg").convert("RGB"), fmt)


def noisy_png(size: int = 256) -> bytes:
    """A PNG that does not compress to almost nothing, so a cut lands inside pixel data."""
    image = Image.frombytes("RGB", (size, size), random.Random(0).randbytes(size * size * 3))
    return encode(image, "PNG")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 100, 50)), "JPEG"))
    sof = data.index(b"\xff\xc0")  # marker, length(2), precision(1), height(2), width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A 16x16 GIF whose logical screen descriptor claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def zero_size_png() -> bytes:
    """A structurally complete PNG whose IHDR says 0x0: an image with no pixels."""
    return bomb_png(0, 0)


def test_crafted_headers_claim_what_they_say():
    # Guards the crafted files themselves, so that a failure below is the service's.
    assert Image.open(io.BytesIO(jpeg_claiming(8000, 6000))).size == (8000, 6000)
    with pytest.raises(Image.DecompressionBombError, match="900000000 pixels"):
        Image.open(io.BytesIO(jpeg_claiming(30000, 30000)))
    with pytest.raises(Image.DecompressionBombError, match="4294836225 pixels"):
        Image.open(io.BytesIO(gif_claiming(65535, 65535)))


TINY_PNG = encode(Image.new("RGB", (8, 8), (30, 60, 90)), "PNG")


# -- a snapshot of the serving replicas, taken before any case of this module runs ---------


def _replica_actors() -> set[str]:
    """Names of the `main` app's live Serve replica actors (ingress, consumer, classifier).
    A replica that crashed is replaced by one with a new name."""
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA::main#")
    }


def _reply_queues(url: str, calls: int = 24) -> set[str]:
    """The reply queues of the ingress replicas that answer ``/v1/stats``: each name holds
    the replica's id, so a restarted ingress replica shows up under a new name."""
    with httpx.Client(timeout=30) as c:
        return {c.get(f"{url}/v1/stats").json()["reply_queue"] for _ in range(calls)}


@pytest.fixture(scope="module", autouse=True)
def replicas_before(main_url: str) -> Iterator[tuple[set[str], set[str]]]:
    yield _replica_actors(), _reply_queues(main_url)


def classify_url(main_url: str) -> str:
    return f"{main_url}/v1/classify"


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail, response.text
    assert fragment in detail, detail


# -- multipart uploads ----------------------------------------------------------------------

UPLOADS = [
    pytest.param(b"", 422, "empty", id="zero-byte-file"),
    pytest.param(bomb_png(), 413, "pixels", id="png-bomb-30000x30000"),
    pytest.param(zero_size_png(), 422, "not an image", id="png-0x0"),
    pytest.param(noisy_png()[:100_000], 422, "could not be decoded", id="truncated-png"),
    pytest.param(sample("chelsea.jpg")[:5000], 422, "could not be decoded", id="truncated-jpeg"),
    pytest.param(
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n", 422, "not an image", id="pdf"
    ),
    pytest.param(b"PK\x03\x04" + bytes(60), 422, "not an image", id="zip"),
    pytest.param(b"\x7fELF\x02\x01\x01" + bytes(57), 422, "not an image", id="elf"),
    pytest.param(jpeg_claiming(30000, 30000), 413, "pixels", id="jpeg-bomb-30000x30000"),
    pytest.param(gif_claiming(65535, 65535), 413, "pixels", id="gif-bomb-65535x65535"),
    pytest.param(
        jpeg_claiming(8000, 6000), 413, f"the limit is {MAX_IMAGE_PIXELS}", id="jpeg-48mp"
    ),
]


@pytest.mark.parametrize("data,status,fragment", UPLOADS)
async def test_bad_upload(main_url, client, data, status, fragment):
    response = await client.post(classify_url(main_url), files={"file": ("upload.bin", data)})
    assert_error(response, status, fragment)


# An empty 'image' string and the PNG bomb in JSON are covered by test_failures.py.
IN_TEST_FAILURES = {"zero-byte-file", "png-bomb-30000x30000"}


@pytest.mark.parametrize(
    "data,status,fragment", [p for p in UPLOADS if p.id not in IN_TEST_FAILURES]
)
async def test_bad_image_in_json(main_url, client, data, status, fragment):
    response = await client.post(classify_url(main_url), json={"image": b64(data)})
    assert_error(response, status, fragment)


async def test_postscript_is_refused_before_the_queue(main_url, client):
    """Pillow opens EPS from its text header, then hands the file to Ghostscript to
    load it. The API documents JPEG, PNG, WebP, GIF, BMP and TIFF only. An EPS must stop
    at the ingress's header check, as an unsupported format. It must not reach a
    classifier that might have Ghostscript installed."""
    eps = encode(Image.new("RGB", (20, 20)), "EPS")
    assert eps.startswith(b"%!PS-Adobe")
    response = await client.post(classify_url(main_url), files={"file": ("x.eps", eps)})
    assert_error(response, 422, "not an image in a supported format")


async def test_file_field_given_as_text(main_url, client):
    # A part without a filename is a text field, even if its value is base64 of an image.
    response = await client.post(
        classify_url(main_url), files={"file": (None, b64(sample("coffee.jpg")))}
    )
    assert_error(response, 422, "file part")


@pytest.mark.parametrize(
    "top_k,fragment",
    [("99999999999999999999999999999999", "between 1 and"), ("2.5", "integer"), ("0", "between")],
)
async def test_bad_top_k_in_multipart(main_url, client, top_k, fragment):
    response = await client.post(
        classify_url(main_url), files={"file": ("c.png", TINY_PNG)}, data={"top_k": top_k}
    )
    assert_error(response, 422, fragment)


async def test_too_many_files_in_multipart(main_url, client):
    files = [("file", (f"{i}.png", TINY_PNG)) for i in range(MAX_IMAGES_PER_REQUEST + 1)]
    response = await client.post(classify_url(main_url), files=files)
    assert_error(response, 413, f"the limit is {MAX_IMAGES_PER_REQUEST}")


# -- valid but unusual images: 200 ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
async def test_other_formats_are_classified(main_url, client, fmt):
    response = await client.post(
        classify_url(main_url), files={"file": (f"coffee.{fmt.lower()}", coffee(fmt))}
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class_id"] == ESPRESSO


async def test_one_pixel_png_is_classified(main_url, client):
    one = encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")
    response = await client.post(classify_url(main_url), json={"image": b64(one), "top_k": 3})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3


async def test_large_image_under_the_pixel_cap_is_classified(main_url, client):
    # 12 Mpx of one colour: cheap to send, decoded in full (every pixel) by default.
    big = encode(Image.new("RGB", (4000, 3000), (120, 80, 40)), "JPEG")
    response = await client.post(classify_url(main_url), files={"file": ("big.jpg", big)})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 5


# -- JSON bodies ----------------------------------------------------------------------------

GOOD = b64(TINY_PNG)

BAD_FIELDS = [
    pytest.param({"images": {"0": GOOD}}, 422, "images", id="images-dict"),
    pytest.param({"images": [GOOD, 7]}, 422, "images.1", id="images-item-int"),
    pytest.param({"images": []}, 422, "no image given", id="images-empty"),
    pytest.param({"images": [GOOD, ""]}, 422, "images[1] is empty", id="images-item-empty"),
    pytest.param({"image": [GOOD]}, 422, "image", id="image-list"),
    pytest.param({"image": {"data": GOOD}}, 422, "image", id="image-dict"),
    pytest.param({"image": GOOD, "images": [GOOD]}, 422, "exactly one of", id="image-and-images"),
    pytest.param({"image": None}, 422, "exactly one of", id="image-null"),
    pytest.param({"image": GOOD, "top_k": 2.5}, 422, "top_k", id="top_k-float"),
    pytest.param({"image": GOOD, "top_k": 3.0}, 422, "top_k", id="top_k-integral-float"),
    pytest.param({"image": GOOD, "top_k": True}, 422, "top_k", id="top_k-bool"),
    pytest.param({"image": GOOD, "top_k": 10**30}, 422, "top_k", id="top_k-1e30"),
    pytest.param({"image": GOOD, "top_k": 2**64 - 1}, 422, "top_k", id="top_k-u64-max"),
    pytest.param({"image": GOOD, "top_k": -(2**63)}, 422, "top_k", id="top_k-i64-min"),
    pytest.param({"image": GOOD, "top_k": 0}, 422, "top_k", id="top_k-zero"),
    pytest.param({"image": GOOD, "top_k": 101}, 422, "between 1 and 100", id="top_k-over-max"),
    pytest.param({"image": GOOD, "top_k": [1]}, 422, "top_k", id="top_k-list"),
    pytest.param({"image": GOOD, "callback_url": 123}, 422, "callback_url", id="callback-int"),
    pytest.param({"image": GOOD, "callback_url": "ftp://x/y"}, 422, "callback_url", id="cb-ftp"),
    pytest.param(
        {"image": GOOD, "callback_url": "javascript:alert(1)"}, 422, "callback_url", id="cb-js"
    ),
    pytest.param({"image": GOOD, "colour": "blue"}, 422, "colour", id="extra-field"),
    pytest.param(
        {"images": [GOOD] * (MAX_IMAGES_PER_REQUEST + 1)},
        413,
        f"the limit is {MAX_IMAGES_PER_REQUEST}",
        id="too-many-images",
    ),
]


@pytest.mark.parametrize("payload,status,fragment", BAD_FIELDS)
async def test_wrong_json_fields(main_url, client, payload, status, fragment):
    response = await client.post(classify_url(main_url), json=payload)
    assert_error(response, status, fragment)


def _nested(depth: int) -> bytes:
    return b'{"image": ' + b"[" * depth + b"]" * depth + b"}"


RAW_BODIES = [
    pytest.param(b"null", 422, "JSON object", id="null"),
    pytest.param(b"[]", 422, "JSON object", id="array"),
    pytest.param(b'"aGVsbG8="', 422, "JSON object", id="string"),
    pytest.param(b"42", 422, "JSON object", id="number"),
    pytest.param(b"", 400, "empty", id="empty-body"),
    pytest.param(b"   ", 400, "not valid JSON", id="whitespace-body"),
    pytest.param(_nested(100_000), 400, "not valid JSON", id="nested-100000"),
    pytest.param(_nested(200), 422, "image", id="nested-200"),
    pytest.param(b'{"image": "\xff\xfe\xfd"}', 400, "not valid JSON", id="non-utf8"),
    pytest.param(b"\xef\xbb\xbf{}", 400, "not valid JSON", id="utf8-bom"),
    pytest.param(b'{"image": "A", "top_k": 1e400}', 400, "not valid JSON", id="top_k-inf"),
    pytest.param(b'{"image": "A", "top_k": NaN}', 400, "not valid JSON", id="top_k-nan"),
]


@pytest.mark.parametrize("body,status,fragment", RAW_BODIES)
async def test_raw_json_bodies(main_url, client, body, status, fragment):
    response = await client.post(
        classify_url(main_url), content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, status, fragment)


async def test_duplicate_keys_follow_one_rule(main_url, client):
    """RFC 8259 leaves duplicate names open. Whatever the rule (last wins, first wins, or
    refuse), both orders must follow the same one, and never be a 5xx."""
    good, bad = b64(sample("coffee.jpg")), "!!!"

    async def post(first: str, second: str) -> httpx.Response:
        body = f'{{"image": "{first}", "image": "{second}"}}'.encode()
        return await client.post(
            classify_url(main_url), content=body, headers={"content-type": "application/json"}
        )

    bad_then_good, good_then_bad = await post(bad, good), await post(good, bad)
    outcomes = (bad_then_good.status_code, good_then_bad.status_code)
    assert outcomes in {(200, 400), (400, 200)} or (
        outcomes[0] in (400, 422) and outcomes[0] == outcomes[1]
    ), outcomes
    for response in (bad_then_good, good_then_bad):
        if response.status_code == 200:
            assert response.json()["predictions"][0]["class_id"] == ESPRESSO
        else:
            assert response.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "application/xml", "text/html; charset=utf-8"],
)
async def test_json_body_with_the_wrong_content_type_is_415(main_url, client, content_type):
    response = await client.post(
        classify_url(main_url),
        content=f'{{"image": "{GOOD}"}}'.encode(),
        headers={"content-type": content_type},
    )
    assert_error(response, 415, "unsupported content type")


async def test_multipart_without_a_boundary_is_400(main_url, client):
    response = await client.post(
        classify_url(main_url),
        content=b"--x\r\n\r\n",
        headers={"content-type": "multipart/form-data"},
    )
    assert_error(response, 400, "multipart")


# -- bodies over MAX_REQUEST_BYTES without a content-length ---------------------------------

CHUNK = 1024 * 1024


async def _chunked(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        for start in range(0, len(part), CHUNK):
            yield part[start : start + CHUNK]


async def test_chunked_json_body_over_the_limit_is_413(main_url, client):
    payload = b'{"image": "' + b"A" * (MAX_REQUEST_BYTES + CHUNK) + b'"}'
    response = await client.post(
        classify_url(main_url),
        content=_chunked([payload]),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, f"limit of {MAX_REQUEST_BYTES} bytes")


async def test_multipart_body_over_the_limit_with_a_content_length_is_413(main_url, client):
    big = bytes(MAX_REQUEST_BYTES + CHUNK)
    response = await client.post(classify_url(main_url), files={"file": ("big.jpg", big)})
    assert int(response.request.headers["content-length"]) > MAX_REQUEST_BYTES
    assert_error(response, 413, f"limit of {MAX_REQUEST_BYTES} bytes")


async def test_chunked_multipart_body_over_the_limit_is_413(main_url, client):
    """Three 6 MiB files: each under MAX_IMAGE_BYTES (10 MiB), 18 MiB together. Without a
    content-length only the bytes actually read can enforce MAX_REQUEST_BYTES."""
    image = encode(Image.new("RGB", (32, 32), (9, 9, 9)), "JPEG")
    padded = image + bytes(6 * CHUNK - len(image))  # decoders stop at the JPEG's EOI
    boundary = uuid.uuid4().hex
    parts = []
    for i in range(3):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        )
        parts.append(padded + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    assert sum(map(len, parts)) > MAX_REQUEST_BYTES
    response = await client.post(
        classify_url(main_url),
        content=_chunked(parts),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, f"limit of {MAX_REQUEST_BYTES} bytes")


# -- afterwards: nothing crashed, and the service answers normally --------------------------


async def test_zz_service_is_unharmed_after_all_cases(main_url, client, replicas_before):
    actors_before, queues_before = replicas_before
    for _ in range(3):
        response = await client.post(
            classify_url(main_url), json={"image": b64(sample("coffee.jpg")), "top_k": 1}
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["class_id"] == ESPRESSO
    health = await client.get(f"{main_url}/healthz")
    assert health.status_code == 200, health.text
    assert _replica_actors() == actors_before
    assert _reply_queues(main_url) <= queues_before
    stats = (await client.get(f"{main_url}/v1/stats")).json()
    assert stats["pending"] == 0 and stats["malformed_results"] == 0
