"""The HTTP API: routes, their OpenAPI entries, and how answers become responses.

Each route reads the request, hands the work to the replica's
:class:`~ingress.service.IngressService` and returns what :mod:`rabbit_serve.render`
wrote. Routes on the ``/v1`` router require an API key (see :mod:`ingress.auth`).
A classify request also passes the replica's limits (:mod:`ingress.limits`) before its
body is read: its key's open requests and rate (429), the byte budget (503).
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException

from ingress import idempotency, oip, openapi, page
from ingress.admission import admitted
from ingress.auth import presented_key, v1_router
from ingress.body import read_classify_request
from ingress.limits import Refused
from ingress.service import Service
from rabbit_serve import render
from rabbit_serve.errors import ClientError
from rabbit_serve.render import Rendered
from rabbit_serve.schemas import (
    AcceptedResponse,
    ClassifyResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    MultiClassifyResponse,
    StatsResponse,
)

JSON = "application/json"


def respond(rendered: Rendered) -> Response:
    return Response(
        rendered.body, status_code=rendered.status, media_type=JSON, headers=rendered.headers
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return respond(Rendered(status, render.error(message), headers))


router = v1_router()


TOO_MANY = {
    429: {
        "model": ErrorResponse,
        "description": "This API key has KEY_MAX_CONCURRENT requests open at this replica, "
        "or is over KEY_RATE_LIMIT images/s; retry after Retry-After",
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse | MultiClassifyResponse,
    responses={
        202: {"model": AcceptedResponse},
        **openapi.ERRORS,
        **openapi.CLASSIFY_ERRORS,
        **TOO_MANY,
    },
    openapi_extra=openapi.CLASSIFY_BODY,
    summary="Classify one image, several images, or an uploaded file",
)
async def classify(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    key = request.headers.get(idempotency.KEY_HEADER)
    if key is not None:
        # Checked before the body is read: a bad key is a 422 whatever the body.
        key = idempotency.check_key(key)
    try:
        # request.state.api_key, set by the key check: None when keys are off.
        async with admitted(service.budget, service.limits, request.state.api_key) as admission:
            parsed = await read_classify_request(request, service.settings, admission.hold)
            admission.charge(len(parsed.images))
            rendered = await service.classify(
                parsed,
                request.headers.get("x-request-start"),
                started,
                idempotency_key=key,
                scope=presented_key(request.headers) or "",
            )
    except Refused as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        rendered = Rendered(exc.status, render.error(exc.message), headers)
    return respond(with_server_timing(rendered, started))


def with_server_timing(rendered: Rendered, started: float) -> Rendered:
    """Adds a W3C ``Server-Timing`` header: the time this replica spent on the request
    (read, publish, wait), apart from any queueing in front of it (Serve's proxy)."""
    return render.timed(rendered, "ingress", started)


@router.get(
    "/model", response_model=ModelInfo, responses=openapi.errors(401, 503), summary="The model"
)
async def model(service: Service) -> Response:
    return respond(await service.model())


@router.get(
    "/stats",
    response_model=StatsResponse,
    responses=openapi.errors(401),
    summary="This replica's counters",
)
async def stats(service: Service) -> Response:
    return respond(service.stats())


async def healthz(service: Service) -> Response:
    return respond(await service.health())


async def _client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    return error_response(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    # FastAPI's own answers (401 from the auth dependency, 404, 405) in the same shape.
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


def create_app() -> FastAPI:
    app = FastAPI(
        title="rabbit-serve",
        version="0.1.0",
        description="Image classification through a RabbitMQ queue and ONNX Runtime on Ray Serve.",
    )
    app.include_router(router)
    # The Open Inference Protocol v2 (KServe v2 / Triton HTTP): the same classify path.
    app.include_router(oip.health_router)
    app.include_router(oip.router)
    # The web page at / and its files: static, open, and not in the schema.
    app.include_router(page.router)
    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "Not ready, and why"}},
        summary="200 only when the broker and the classifier are ready",
    )
    app.add_exception_handler(ClientError, _client_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app
