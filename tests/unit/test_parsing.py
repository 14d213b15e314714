import base64

import orjson
import pytest

from ingress.parsing import (
    decode_base64_image,
    parse_json,
    parse_upload,
    request_start,
    resolve_top_k,
    validate_callback_url,
)
from rabbit_serve.errors import ClientError
from rabbit_serve.settings import Settings
from tests.images import bomb_png, sample

SETTINGS = Settings(max_image_bytes=200_000, max_images_per_request=4, max_top_k=10)
COFFEE = sample("coffee.jpg")
B64 = base64.b64encode(COFFEE).decode()


def body(**fields) -> bytes:
    return orjson.dumps(fields)


def status_of(fn, *args) -> tuple[int, str]:
    with pytest.raises(ClientError) as err:
        fn(*args)
    return err.value.status, err.value.message


def test_single_image_with_defaults():
    parsed = parse_json(body(image=B64), SETTINGS)
    assert parsed.images == [COFFEE] and not parsed.multi
    assert parsed.top_k == SETTINGS.default_top_k and parsed.callback_url is None


def test_several_images_and_options():
    parsed = parse_json(
        body(images=[B64, B64], top_k=2, callback_url="https://hooks.example/x"), SETTINGS
    )
    assert parsed.multi and len(parsed.images) == 2
    assert parsed.top_k == 2 and parsed.callback_url == "https://hooks.example/x"


@pytest.mark.parametrize(
    "prefix", ["data:image/jpeg;base64,", "DATA:image/png;base64,", "data:;base64,"]
)
def test_data_uri_prefix_is_accepted(prefix):
    assert parse_json(body(image=prefix + B64), SETTINGS).images == [COFFEE]


def test_urlsafe_unpadded_and_wrapped_base64_are_accepted():
    urlsafe = base64.urlsafe_b64encode(COFFEE).decode().rstrip("=")
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    assert decode_base64_image(urlsafe, 10**6) == COFFEE
    assert decode_base64_image(wrapped, 10**6) == COFFEE


def test_canonical_base64_is_held_to_the_exact_size_limit():
    assert decode_base64_image(B64, len(COFFEE)) == COFFEE
    with pytest.raises(ClientError) as info:
        decode_base64_image(B64, len(COFFEE) - 1)
    assert info.value.status == 413


@pytest.mark.parametrize("bad", ["abc$", "QUJD\x00", "=QUJD", "QU JD*"])
def test_invalid_base64_is_a_400_whichever_path_reads_it(bad):
    with pytest.raises(ClientError) as info:
        decode_base64_image(bad, 10**6)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "raw,status,fragment",
    [
        (b"", 400, "empty"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (body(), 422, "exactly one of"),
        (body(image=B64, images=[B64]), 422, "exactly one of"),
        (body(images=[]), 422, "no image"),
        (body(images=[B64] * 5), 413, "limit is 4"),
        (body(image=5), 422, "image"),
        (body(image=B64, top_k="many"), 422, "top_k"),
        (body(image=B64, top_k=0), 422, "between 1 and 10"),
        (body(image=B64, top_k=11), 422, "between 1 and 10"),
        (body(image=B64, top_k=True), 422, "top_k"),
        (body(image=B64, extra=1), 422, "extra"),
        (body(image="!!!not base64!!!"), 400, "not valid base64"),
        (body(image=""), 422, "empty"),
        (body(image=base64.b64encode(b"hello world").decode()), 422, "not an image"),
        (body(image="A" * 400_000), 413, "larger than the limit"),
        (body(image=base64.b64encode(bomb_png()).decode()), 413, "pixels"),
        (body(image=B64, callback_url="ftp://x/y"), 422, "callback_url"),
        (body(image=B64, callback_url="/relative"), 422, "callback_url"),
    ],
)
def test_bad_json_requests_get_a_clear_4xx(raw, status, fragment):
    got_status, message = status_of(parse_json, raw, SETTINGS)
    assert got_status == status
    assert fragment in message


def test_errors_name_the_offending_image():
    status, message = status_of(parse_json, body(images=[B64, "aGVsbG8="]), SETTINGS)
    assert status == 422 and message.startswith("images[1]")


def test_upload_of_raw_files():
    parsed = parse_upload([("coffee.jpg", COFFEE)], "3", None, SETTINGS)
    assert parsed.images == [COFFEE] and parsed.top_k == 3 and not parsed.multi
    status, message = status_of(parse_upload, [("notes.txt", b"plain text")], None, None, SETTINGS)
    assert status == 422 and "notes.txt" in message
    assert status_of(parse_upload, [], None, None, SETTINGS)[0] == 422


def test_top_k_and_callback_helpers():
    assert resolve_top_k(None, SETTINGS) == SETTINGS.default_top_k
    assert resolve_top_k("", SETTINGS) == SETTINGS.default_top_k
    assert resolve_top_k("7", SETTINGS) == 7
    assert validate_callback_url(None, SETTINGS) is None
    assert validate_callback_url("https://hooks.example/x", SETTINGS) == "https://hooks.example/x"
    assert status_of(validate_callback_url, "https://" + "a" * 3000, SETTINGS)[0] == 422


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("http://127.0.0.1:9/x", "non-public"),
        ("http://10.1.2.3/x", "non-public"),
        ("http://[::1]/x", "non-public"),
        ("http://169.254.169.254/latest/meta-data", "non-public"),
        ("http://localhost:8000/x", "localhost"),
        ("https://user:pw@hooks.example/x", "credentials"),
    ],
)
def test_private_webhook_destinations_are_refused_by_default(url, fragment):
    status, message = status_of(validate_callback_url, url, SETTINGS)
    assert status == 422 and fragment in message


def test_private_webhooks_when_explicitly_allowed_and_allowlist():
    allowing = Settings(webhook_allow_private=True, webhook_allowed_ports="*")
    assert validate_callback_url("http://127.0.0.1:9/x", allowing)
    listed = Settings(webhook_allowed_hosts=("*.example.com",))
    assert validate_callback_url("https://a.example.com/h", listed)
    status, message = status_of(validate_callback_url, "https://evil.test/h", listed)
    assert status == 422 and "WEBHOOK_ALLOWED_HOSTS" in message


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, 1000.0),
        ("", 1000.0),
        ("t=990.5", 990.5),
        ("990.5", 990.5),
        ("garbage", 1000.0),
        ("t=nan", 1000.0),
        ("t=-5", 1000.0),
        ("t=5000", 1000.0),  # in the future: never lengthens the deadline
    ],
)
def test_request_start_in_seconds(header, expected):
    assert request_start(header, now=1000.0) == pytest.approx(expected)


def test_request_start_in_milliseconds_and_microseconds():
    now = 1_700_000_000.0
    assert request_start("t=1699999998500", now) == pytest.approx(now - 1.5)
    assert request_start("t=1699999998500000", now) == pytest.approx(now - 1.5)


def test_each_image_carries_its_pixel_count_from_its_header():
    from PIL import Image

    from tests.images import encode

    small, wide = encode(Image.new("RGB", (4, 3))), encode(Image.new("RGB", (20, 2)))
    request = {"images": [base64.b64encode(i).decode() for i in (small, wide)]}
    assert parse_json(orjson.dumps(request), Settings()).pixels == [12, 40]
    assert parse_upload([("a", small)], None, None, Settings()).pixels == [12]


def test_webhook_ports_off_the_list_are_a_422():
    # WEBHOOK_ALLOWED_PORTS defaults to 80 and 443.
    assert validate_callback_url("https://hooks.example/x", SETTINGS)
    assert validate_callback_url("http://hooks.example:443/x", SETTINGS)
    status, message = status_of(validate_callback_url, "https://hooks.example:8443/x", SETTINGS)
    assert status == 422 and "port 8443 is not in WEBHOOK_ALLOWED_PORTS" in message
    anywhere = Settings(webhook_allowed_ports="*")
    assert validate_callback_url("https://hooks.example:8443/x", anywhere)
