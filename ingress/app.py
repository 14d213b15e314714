"""The HTTP producer: a Ray Serve deployment with a FastAPI app.

It validates images, publishes one message per image to RabbitMQ with publisher
confirms, and holds the HTTP request open on a future until the result comes
back on this replica's reply queue, or ``TIMEOUT`` passes (504).
"""

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import Message

from ingress.auth import key_matches, presented_key
from ingress.parsing import ParsedRequest, parse_json, parse_upload, request_start
from ingress.pending import PendingResults
from ingress.producer import Producer
from rabbit_serve.errors import ClientError, ServiceUnavailable
from rabbit_serve.messages import ClassifyResult, ClassifyTask, encode_task
from rabbit_serve.schemas import (
    AcceptedResponse,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    ModelInfo,
    MultiClassifyResponse,
)
from rabbit_serve.settings import Settings
from rabbit_serve.webhook_security import WebhookRefused, resolve

logger = logging.getLogger("rabbit_serve.ingress")

HEALTH_PROBE_TIMEOUT_S = 2.0
MAX_MULTIPART_FILES = 1024
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")

app = FastAPI(
    title="rabbit-serve",
    version="0.1.0",
    description="Image classification through a RabbitMQ queue and ONNX Runtime on Ray Serve.",
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or base64",
        401: "API_KEYS is set and the request has no valid key",
        413: "Image, request or pixel count over the limit",
        415: "Unsupported content type",
        422: "Not a decodable image, or invalid fields",
        503: "Broker unreachable or request queue full; retry after Retry-After",
        504: "No answer within TIMEOUT seconds",
    }.items()
}

_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "top_k": {"type": "integer"},
                        "callback_url": {"type": "string"},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
        "description": "JSON with base64 images, a multipart upload, or the image file itself "
        "(then top_k and callback_url go in the query string).",
    },
    "parameters": [
        {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "callback_url", "in": "query", "required": False, "schema": {"type": "string"}},
    ],
}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(payload),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"detail": message}, headers)


def _limit_body(request: Request, limit: int) -> Request:
    """The same request, whose body raises a 413 ``ClientError`` once past ``limit`` bytes."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ClientError(413, f"request body is larger than the limit of {limit} bytes")
        return message

    return Request(request.scope, receive)


def _result_timings(result: ClassifyResult, started: float) -> dict[str, float]:
    timings = {k: round(v, 3) for k, v in result.timings_ms.items()}
    timings["total"] = round((time.perf_counter() - started) * 1000, 3)
    return timings


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=512,
    # Past this many waiting in Serve's own queue, the proxy answers 503 at once
    # instead of holding more requests in memory.
    max_queued_requests=1024,
    health_check_period_s=5,
)
@serve.ingress(app)
class Ingress:
    async def __init__(
        self,
        settings: Settings,
        classifier: DeploymentHandle,
        consumers: DeploymentHandle | None = None,
    ) -> None:
        self._settings = settings
        self._classifier = classifier
        # Held so that Serve deploys the consumer pool with this application.
        self._consumers = consumers
        self._pending = PendingResults()
        context = serve.get_replica_context()
        owner = f"{context.app_name}.{context.replica_id.unique_id}"
        self._producer = Producer(settings, owner, self._pending.resolve)
        await self._producer.start()
        self._model_info: dict[str, Any] | None = None
        logger.info("ingress ready; replies on %s", self._producer.reply_queue)

    async def __del__(self) -> None:
        await self._producer.close()

    # -- endpoints ---------------------------------------------------------------------------

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse | MultiClassifyResponse,
        responses={202: {"model": AcceptedResponse}, **_ERRORS},
        openapi_extra=_CLASSIFY_BODY,
        summary="Classify one image, several images, or an uploaded file",
    )
    async def classify(self, request: Request) -> Response:
        started = time.perf_counter()
        if denied := self._deny(request):
            return denied
        try:
            parsed = await self._parse(request)
            if parsed.callback_url:
                await self._check_webhook(parsed.callback_url)
        except ClientError as exc:
            return error_response(exc.status, exc.message)
        request_id = uuid.uuid4().hex
        sent_at = time.time()
        deadline = request_start(request.headers.get("x-request-start"), sent_at) + (
            self._settings.timeout
        )
        if deadline <= sent_at:
            # It already waited TIMEOUT in front of us: nobody is waiting for the answer.
            return error_response(504, self._timeout_message())
        tasks = [
            ClassifyTask(
                id=f"{request_id}-{i}",
                request_id=request_id,
                index=i,
                image=image,
                top_k=parsed.top_k,
                sent_at=sent_at,
                deadline=deadline,
                reply_to=None if parsed.callback_url else self._producer.reply_queue,
                callback_url=parsed.callback_url,
            )
            for i, image in enumerate(parsed.images)
        ]
        if parsed.callback_url:
            return await self._accept_for_webhook(request_id, parsed, tasks)
        return await self._wait_for_results(request_id, parsed, tasks, started)

    @app.get("/healthz", summary="200 only when the broker and the classifier are ready")
    async def healthz(self) -> Response:
        classifier_ready = await self._probe_classifier()
        ready = self._producer.ready and classifier_ready
        return json_response(
            200 if ready else 503,
            {
                "status": "ok" if ready else "unavailable",
                "broker": self._producer.ready,
                "classifier": classifier_ready,
            },
        )

    @app.get("/v1/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}})
    async def model(self, request: Request) -> Response:
        if denied := self._deny(request):
            return denied
        if not await self._probe_classifier():
            return error_response(503, "classifier is not ready")
        return json_response(200, self._model_info)

    @app.get("/v1/stats", summary="This replica's counters")
    async def stats(self, request: Request) -> Response:
        if denied := self._deny(request):
            return denied
        return json_response(
            200,
            {
                "pending": len(self._pending),
                "delivered": self._pending.delivered,
                "late_results": self._pending.late,
                "malformed_results": self._producer.malformed_results,
                "broker": self._producer.ready,
                "reply_queue": self._producer.reply_queue,
            },
        )

    # -- helpers -----------------------------------------------------------------------------

    def _timeout_message(self) -> str:
        return f"no answer within TIMEOUT={self._settings.timeout:g}s"

    def _deny(self, request: Request) -> Response | None:
        """401 unless API keys are off or the request carries one of them."""
        keys = self._settings.api_keys
        if not keys or key_matches(presented_key(request.headers), keys):
            return None
        return error_response(
            401, "missing or invalid API key", {"WWW-Authenticate": 'Bearer realm="rabbit-serve"'}
        )

    async def _check_webhook(self, url: str) -> None:
        """Resolve the webhook host now, so a refused destination is a 422, not a silent
        drop later (the consumer checks again when it delivers)."""
        try:
            await resolve(
                url, self._settings.webhook_allowed_hosts, self._settings.webhook_allow_private
            )
        except WebhookRefused as exc:
            raise ClientError(422, str(exc)) from None

    async def _parse(self, request: Request) -> ParsedRequest:
        limit = self._settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ClientError(413, f"request body is larger than the limit of {limit} bytes")
        content_type = request.headers.get("content-type", "").lower()
        # A chunked body declares no length: count what actually arrives, for JSON and
        # multipart alike, so neither memory nor the upload spool grows past the limit.
        request = _limit_body(request, limit)
        if content_type.startswith("multipart/form-data"):
            return await self._parse_multipart(request)
        if content_type.startswith(RAW_IMAGE_TYPES):
            # The file itself as the body: no base64, no JSON, no multipart to parse.
            return parse_upload(
                [("request body", await request.body())],
                request.query_params.get("top_k"),
                request.query_params.get("callback_url"),
                self._settings,
            )
        if content_type and "json" not in content_type:
            raise ClientError(
                415,
                f"unsupported content type {content_type!r}; send application/json, "
                "multipart/form-data, or the image file itself as image/* or "
                "application/octet-stream",
            )
        return parse_json(await request.body(), self._settings)

    async def _parse_multipart(self, request: Request) -> ParsedRequest:
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
            return parse_upload(files, top_k, callback_url, self._settings)
        finally:
            await form.close()

    async def _publish_all(self, tasks: list[ClassifyTask]) -> None:
        await asyncio.gather(*(self._producer.publish(encode_task(t)) for t in tasks))

    async def _accept_for_webhook(
        self, request_id: str, parsed: ParsedRequest, tasks: list[ClassifyTask]
    ) -> Response:
        try:
            await self._publish_all(tasks)
        except ServiceUnavailable as exc:
            return error_response(503, str(exc), {"Retry-After": "1"})
        return json_response(
            202,
            {
                "id": request_id,
                "status": "accepted",
                "callback_url": parsed.callback_url,
                "task_ids": [t.id for t in tasks],
            },
        )

    async def _wait_for_results(
        self,
        request_id: str,
        parsed: ParsedRequest,
        tasks: list[ClassifyTask],
        started: float,
    ) -> Response:
        futures = [self._pending.expect(t.id) for t in tasks]
        try:
            try:
                await self._publish_all(tasks)
            except ServiceUnavailable as exc:
                return error_response(503, str(exc), {"Retry-After": "1"})
            remaining = tasks[0].deadline - time.time()
            done, _ = await asyncio.wait(futures, timeout=max(remaining, 0))
        finally:
            # Also runs when the client disconnects and Serve cancels this handler:
            # nothing stays registered, and a late result is counted, not kept.
            for task in tasks:
                self._pending.forget(task.id)
        timeout_message = self._timeout_message()
        model = self._settings.model_name
        if not parsed.multi:
            if not done:
                return error_response(504, timeout_message)
            result = futures[0].result()
            if result.error is not None:
                return error_response(result.error.status, result.error.message)
            return json_response(
                200,
                {
                    "id": request_id,
                    "model": model,
                    "predictions": result.predictions,
                    "batch_size": result.batch_size,
                    "timings_ms": _result_timings(result, started),
                },
            )
        if not done:
            return error_response(504, timeout_message)
        results: list[dict[str, Any]] = []
        for task, future in zip(tasks, futures, strict=True):
            if future in done:
                result = future.result()
                entry: dict[str, Any] = {"index": task.index, "batch_size": result.batch_size}
                if result.error is not None:
                    entry["error"] = {
                        "status": result.error.status,
                        "message": result.error.message,
                    }
                else:
                    entry["predictions"] = result.predictions
            else:
                entry = {"index": task.index, "error": {"status": 504, "message": timeout_message}}
            results.append(entry)
        total = round((time.perf_counter() - started) * 1000, 3)
        return json_response(
            200,
            {"id": request_id, "model": model, "results": results, "timings_ms": {"total": total}},
        )

    async def _probe_classifier(self) -> bool:
        try:
            info = await asyncio.wait_for(
                self._classifier.info.remote(), timeout=HEALTH_PROBE_TIMEOUT_S
            )
        except Exception:
            return False
        self._model_info = info
        return True
