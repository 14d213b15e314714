"""Read a classify request's body within the limits and parse it by its content type."""

from __future__ import annotations

from fastapi import Request
from starlette.types import Message

from ingress.parsing import ParsedRequest, parse_json, parse_upload
from rabbit_serve.errors import ClientError
from rabbit_serve.settings import Settings

MAX_MULTIPART_FILES = 1024
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


def _too_large(limit: int) -> ClientError:
    return ClientError(413, f"request body is larger than the limit of {limit} bytes")


def limit_body(request: Request, limit: int) -> Request:
    """The same request, whose body raises a 413 ``ClientError`` once past ``limit`` bytes.

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
        return message

    return Request(request.scope, receive)


async def read_classify_request(request: Request, settings: Settings) -> ParsedRequest:
    """The validated images and options of a classify request, or a ``ClientError``."""
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    content_type = request.headers.get("content-type", "").lower()
    request = limit_body(request, limit)
    if content_type.startswith("multipart/form-data"):
        return await _read_multipart(request, settings)
    if content_type.startswith(RAW_IMAGE_TYPES):
        # The file itself as the body: no base64, no JSON, no multipart to parse.
        return parse_upload(
            [("request body", await request.body())],
            request.query_params.get("top_k"),
            request.query_params.get("callback_url"),
            settings,
        )
    if content_type and "json" not in content_type:
        raise ClientError(
            415,
            f"unsupported content type {content_type!r}; send application/json, "
            "multipart/form-data, or the image file itself as image/* or "
            "application/octet-stream",
        )
    return parse_json(await request.body(), settings)


async def _read_multipart(request: Request, settings: Settings) -> ParsedRequest:
    try:
        form = await request.form(max_files=MAX_MULTIPART_FILES, max_fields=16)
    except ClientError:
        raise
    except Exception as exc:
        raise ClientError(400, f"malformed multipart body: {exc}") from None
    try:
        files = []
        for upload in form.getlist("file"):
            if isinstance(upload, str):
                raise ClientError(422, "'file' must be a file part, not a text field")
            files.append((upload.filename or "file", await upload.read()))
        top_k = form.get("top_k")
        callback_url = form.get("callback_url")
        if not isinstance(top_k, (str, type(None))) or not isinstance(
            callback_url, (str, type(None))
        ):
            raise ClientError(422, "'top_k' and 'callback_url' must be text fields")
        return parse_upload(files, top_k, callback_url, settings)
    finally:
        await form.close()
