"""The Open Inference Protocol v2 routes (KServe v2 / Triton's HTTP protocol) on the ingress.

No bypass: an infer request becomes the same :class:`~ingress.parsing.ParsedRequest` a
``/v1`` upload does (the same image checks), passes the same API key check, per-key
limits and byte budget, and goes through :meth:`IngressService.classify`: the queue,
batching and delivery guarantees of ``/v1/classify``. Its answer, as
:mod:`rabbit_serve.render` wrote it, is read back and put in the protocol's shape by
:mod:`rabbit_serve.oip_wire`. Errors are the protocol's ``{"error": "..."}`` with the
statuses of ``/v1``; the health routes stay open like ``/healthz``.

The routes are left out of the OpenAPI schema: the protocol has a specification of its
own, and ``/openapi.json`` documents (and the fuzz suite holds to) ``/v1``'s shapes.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ingress import idempotency
from ingress.admission import admitted
from ingress.auth import presented_key, require_api_key
from ingress.body import limit_body, off_loop_above
from ingress.limits import Hold, Refused
from ingress.parsing import ParsedRequest, decode_base64_image, parse_upload, request_start
from ingress.service import IngressService, Service
from rabbit_serve import oip_wire
from rabbit_serve.errors import ClientError
from rabbit_serve.messages import Prediction
from rabbit_serve.render import Rendered
from rabbit_serve.settings import Settings

JSON = "application/json"
SERVER_VERSION = "0.1.0"


def _response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=JSON, headers=dict(headers or {}))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _response(status, oip_wire.error(message), headers)


class OipRoute(APIRoute):
    """A route whose every refusal, its dependencies' included (the API key check's 401),
    is the protocol's ``{"error": ...}`` rather than ``/v1``'s ``{"detail": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ClientError as exc:
                return _error(exc.status, exc.message)
            except Refused as exc:
                return _error(exc.status, exc.message, {"Retry-After": str(exc.retry_after)})
            except HTTPException as exc:
                return _error(exc.status_code, str(exc.detail), exc.headers)
            except RequestValidationError as exc:
                return _error(422, str(exc))

        return route


health_router = APIRouter(prefix="/v2/health", route_class=OipRoute, include_in_schema=False)
router = APIRouter(
    route_class=OipRoute, include_in_schema=False, dependencies=[Depends(require_api_key)]
)

# The model's class count, per replica's service: asked of the classifier once (the model
# of a replica never changes), not on every metadata or probabilities request.
_classes: weakref.WeakKeyDictionary[IngressService, int] = weakref.WeakKeyDictionary()


def _detail(rendered: Rendered) -> str:
    return str(orjson.loads(rendered.body).get("detail", "unavailable"))


async def num_classes(service: IngressService) -> int:
    """The model's class count; a 503 (retry) while the classifier is not ready."""
    if (known := _classes.get(service)) is not None:
        return known
    rendered = await service.model()
    if rendered.status != 200:
        raise Refused(503, _detail(rendered))
    _classes[service] = count = int(orjson.loads(rendered.body)["num_classes"])
    return count


def check_model(settings: Settings, name: str, version: str | None) -> None:
    """404 for a model or a version this server does not serve."""
    if name != settings.model_name:
        raise ClientError(
            404, f"unknown model {name!r}; this server serves {settings.model_name!r}"
        )
    if version is not None and version != oip_wire.VERSION:
        raise ClientError(404, f"model {name!r} has no version {version!r}; it has version 1")


def top_k_for(request: oip_wire.InferRequest, classes: int, settings: Settings) -> int:
    """The predictions per image to ask the pipeline for: the classification's ``k``, or
    every class for the probabilities (the pipeline carries scores as top-k lists)."""
    wanted = request.class_count or classes
    if wanted <= settings.max_top_k:
        return wanted
    if request.class_count:
        raise ClientError(
            422, f"classification {wanted} is more than MAX_TOP_K={settings.max_top_k}"
        )
    raise ClientError(
        400,
        f"the {oip_wire.OUTPUT_NAME!r} output needs all {classes} scores and this server's "
        f"MAX_TOP_K is {settings.max_top_k}; ask for the classification extension instead "
        f"(output parameter 'classification' <= {settings.max_top_k})",
    )


def to_parsed(request: oip_wire.InferRequest, top_k: int, settings: Settings) -> ParsedRequest:
    """The images as ``/v1`` checks them: base64 decoded (JSON), size, format, pixels."""
    files = []
    for i, element in enumerate(request.elements):
        what = f"{oip_wire.INPUT_NAME}[{i}]"
        if isinstance(element, str):
            element = decode_base64_image(element, settings.max_image_bytes, what)
        files.append((what, element))
    return parse_upload(files, str(top_k), None, settings)


def start_stamp(
    header: str | None, now: float, timeout_us: int | None, timeout: float
) -> str | None:
    """An ``X-Request-Start`` that makes the service's deadline (start + ``TIMEOUT``) the
    request's ``timeout`` from ``now``, or the proxy's own stamp, whichever is earlier:
    a request can shorten its deadline, never lengthen it past ``TIMEOUT``."""
    if timeout_us is None or timeout_us / 1e6 >= timeout:
        return header
    start = min(request_start(header, now), now + timeout_us / 1e6 - timeout)
    return f"t={start:.6f}"


def rows_of(rendered: Rendered) -> list[list[Prediction]]:
    """Each image's predictions from a 200 of :func:`rabbit_serve.render.classified`; an
    image that failed fails the request (the protocol has no per-element errors)."""
    body = orjson.loads(rendered.body)
    if "results" not in body:
        return [body["predictions"]]
    rows = []
    for entry in body["results"]:
        if "error" in entry:
            failure = entry["error"]
            raise ClientError(failure["status"], f"image[{entry['index']}]: {failure['message']}")
        rows.append(entry["predictions"])
    return rows


def answer(
    rendered: Rendered, request: oip_wire.InferRequest, model: str, classes: int
) -> Response:
    """The protocol's answer to what :meth:`IngressService.classify` rendered."""
    if rendered.status != 200:
        message = _detail(rendered)
        if rendered.status == 504 and request.timeout_us is not None:
            message = f"no answer within the request's timeout of {request.timeout_us} us"
        return _error(rendered.status, message, rendered.headers)
    try:
        rows = rows_of(rendered)
    except ClientError as exc:
        return _error(exc.status, exc.message)
    body, json_length = oip_wire.infer_response(model, request, rows, classes)
    # The service's own headers (an Idempotency-Key replay says so) go along.
    headers = dict(rendered.headers or {})
    if json_length is None:
        return _response(200, body, headers)
    headers[oip_wire.HEADER_LENGTH] = str(json_length)
    return Response(body, media_type="application/octet-stream", headers=headers)


async def read_body(request: Request, settings: Settings, hold: Hold) -> bytes:
    """The body within ``MAX_REQUEST_BYTES`` and the byte budget, as ``/v1`` reads it."""
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise ClientError(413, f"request body is larger than the limit of {limit} bytes")
        hold.cover(int(declared))
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        raise ClientError(415, f"Content-Encoding {encoding!r} is not supported; send it plain")
    return await limit_body(request, limit, hold).body()


@health_router.get("/live")
async def live() -> Response:
    return _response(200, b'{"live":true}')


@health_router.get("/ready")
async def ready(service: Service) -> Response:
    rendered = await service.health()
    if rendered.status != 200:
        reason = str(orjson.loads(rendered.body).get("reason", "not ready"))
        return _error(rendered.status, reason, {"Retry-After": "1"})
    return _response(200, b'{"ready":true}')


@router.get("/v2")
async def server_metadata() -> Response:
    return _response(200, oip_wire.server_metadata(SERVER_VERSION))


def _model_route(suffix: str, methods: list[str]) -> Callable[[Callable], Callable]:
    """Registers a model route as ``/v2/models/{name}...`` and under ``/versions/{v}``."""

    def register(endpoint: Callable) -> Callable:
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            router.add_api_route(base + suffix, endpoint, methods=methods)
        return endpoint

    return register


@_model_route("", ["GET"])
async def model_metadata(request: Request, service: Service, name: str) -> Response:
    check_model(service.settings, name, request.path_params.get("version"))
    return _response(200, oip_wire.model_metadata(name, await num_classes(service)))


@_model_route("/ready", ["GET"])
async def model_ready(request: Request, service: Service, name: str) -> Response:
    check_model(service.settings, name, request.path_params.get("version"))
    rendered = await service.model()
    if rendered.status != 200:
        return _error(503, _detail(rendered), {"Retry-After": "1"})
    return _response(200, orjson.dumps({"name": name, "ready": True}))


@_model_route("/config", ["GET"])
async def model_config(request: Request, service: Service, name: str) -> Response:
    check_model(service.settings, name, request.path_params.get("version"))
    return _response(200, oip_wire.model_config(name, await num_classes(service)))


@_model_route("/infer", ["POST"])
async def infer(request: Request, service: Service, name: str) -> Response:
    started = time.perf_counter()
    settings = service.settings
    check_model(settings, name, request.path_params.get("version"))
    key = request.headers.get(idempotency.KEY_HEADER)
    if key is not None:
        key = idempotency.check_key(key)
    # request.state.api_key, set by the key check: None when keys are off.
    async with admitted(service.budget, service.limits, request.state.api_key) as admission:
        body = await read_body(request, settings, admission.hold)
        json_length = oip_wire.header_length(request.headers.get(oip_wire.HEADER_LENGTH), len(body))
        wire = await off_loop_above(len(body), oip_wire.parse_infer, body, json_length)
        classes = 0 if wire.class_count else await num_classes(service)
        top_k = top_k_for(wire, classes, settings)
        parsed = await off_loop_above(len(body), to_parsed, wire, top_k, settings)
        admission.charge(len(parsed.images))
        stamp = start_stamp(
            request.headers.get("x-request-start"), time.time(), wire.timeout_us, settings.timeout
        )
        rendered = await service.classify(
            parsed,
            stamp,
            started,
            idempotency_key=key,
            scope=presented_key(request.headers) or "",
        )
    return answer(rendered, wire, name, classes)
