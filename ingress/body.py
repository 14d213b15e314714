"""Read a classify request's body within the limits and parse it by its content type.

JSON bodies of :data:`OFFLOAD_BYTES` or more are parsed on a worker thread. Measured on
the development machine (2 cores, idle, CPython 3.11, GIL switch interval 5 ms;
``parse_json`` of one JPEG in base64; loop stall = the longest gap of a 0.5 ms ticker
on the same loop, median of 7-20 runs):

    body       parse_json   loop stall inline   loop stall via to_thread
    64 KiB       0.6 ms          1.8 ms               1.3 ms
    256 KiB      1.5 ms          2.6 ms               1.7 ms
    1 MiB        3.5 ms          4.7 ms               5.2 ms
    2 MiB        7.7 ms          8.9 ms               6.6 ms
    4 MiB         17 ms           18 ms               7.1 ms
    8 MiB         35 ms           35 ms                10 ms
    16 MiB        88 ms           88 ms                20 ms

``asyncio.to_thread`` costs 30 µs of the loop's CPU (61 µs in all) and 86 µs of
latency (median) per hand-off. The worker holds the GIL while orjson and binascii run,
so until a parse outlasts the switch interval the loop waits for it about as long as if
it had parsed inline, and the hand-off is pure cost (1 MiB: no better). From about
1.5 MiB the loop gets the GIL back every switch interval (base64 is decoded in slices
for that, see ``ingress.parsing``) and its stall stops growing with the body: what
remains is one ``orjson.loads`` (~13 ms at 16 MiB). So 2 MiB, the first size where the
worker wins. A raw or multipart image is only header-checked (~25-40 µs whatever its
size) and stays on the loop; a typical 35-70 KB photo in JSON stays inline, at no
extra CPU.

With a :class:`~ingress.limits.Hold` the body is also charged to the replica's byte
budget: its ``Content-Length`` before a byte is read (a 503 then reads none), or, for a
body that declares none, what has arrived so far, chunk by chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from fastapi import Request
from starlette.types import Message

from ingress.limits import Hold, Refused
from ingress.parsing import ParsedRequest, parse_json, parse_upload
from rabbit_serve.errors import ClientError
from rabbit_serve.settings import Settings

OFFLOAD_BYTES = 2 * 1024 * 1024
MAX_MULTIPART_FILES = 1024
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")

T = TypeVar("T")
V = TypeVar("V")


def single(values: Sequence[V], name: str) -> V | None:
    """The one value of an option, ``None`` if absent; given twice it is ambiguous (which
    one would win differs between clients and frameworks), so it is a 422."""
    if len(values) > 1:
        raise ClientError(422, f"'{name}' is given {len(values)} times; give it once")
    return values[0] if values else None


def _too_large(limit: int) -> ClientError:
    return ClientError(413, f"request body is larger than the limit of {limit} bytes")


def limit_body(request: Request, limit: int, hold: Hold | None = None) -> Request:
    """The same request, whose body raises a 413 ``ClientError`` once past ``limit`` bytes,
    and a 503 ``Refused`` once what arrived is more than ``hold`` can cover.

    A chunked body declares no length: this counts what actually arrives, for JSON and
    multipart alike, so neither memory nor the upload spool grows past the limit.
    """
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
            if hold is not None:
                hold.cover(received)
        return message

    return Request(request.scope, receive)


async def off_loop_above(size: int, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, on a worker thread when ``size`` is at least :data:`OFFLOAD_BYTES`."""
    if size >= OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def read_classify_request(
    request: Request, settings: Settings, hold: Hold | None = None
) -> ParsedRequest:
    """The validated images and options of a classify request, or a ``ClientError``;
    ``hold``: the request's share of the byte budget (a 503 ``Refused`` if it runs out)."""
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise _too_large(limit)
        if hold is not None:
            hold.cover(int(declared))
    content_type = request.headers.get("content-type", "").lower()
    request = limit_body(request, limit, hold)
    if content_type.startswith("multipart/form-data"):
        return await _read_multipart(request, settings)
    if content_type.startswith(RAW_IMAGE_TYPES):
        # The file itself as the body: no base64, no JSON, no multipart to parse.
        return parse_upload(
            [("request body", await request.body())],
            single(request.query_params.getlist("top_k"), "top_k"),
            single(request.query_params.getlist("callback_url"), "callback_url"),
            settings,
        )
    if content_type and "json" not in content_type:
        raise ClientError(
            415,
            f"unsupported content type {content_type!r}; send application/json, "
            "multipart/form-data, or the image file itself as image/* or "
            "application/octet-stream",
        )
    body = await request.body()
    return await off_loop_above(len(body), parse_json, body, settings)


async def _read_multipart(request: Request, settings: Settings) -> ParsedRequest:
    try:
        form = await request.form(max_files=MAX_MULTIPART_FILES, max_fields=16)
    except (ClientError, Refused):
        raise
    except Exception as exc:
        raise ClientError(400, f"malformed multipart body: {exc}") from None
    try:
        files = []
        for upload in form.getlist("file"):
            if isinstance(upload, str):
                raise ClientError(422, "'file' must be a file part, not a text field")
            files.append((upload.filename or "file", await upload.read()))
        top_k = single(form.getlist("top_k"), "top_k")
        callback_url = single(form.getlist("callback_url"), "callback_url")
        if not isinstance(top_k, (str, type(None))) or not isinstance(
            callback_url, (str, type(None))
        ):
            raise ClientError(422, "'top_k' and 'callback_url' must be text fields")
        return parse_upload(files, top_k, callback_url, settings)
    finally:
        await form.close()
