"""Stand-ins for the ingress's broker side, so its HTTP rules run without Serve, RabbitMQ or Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from ingress.api import create_app
from ingress.health import ClassifierProbe
from ingress.pending import PendingResults
from ingress.service import IngressService, current_service
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import ClassifyResult, ClassifyTask, ErrorInfo, decode_tasks
from rabbit_serve.model_spec import load_spec
from rabbit_serve.settings import DEFAULT_MODEL_PATH, Settings
from rabbit_serve.transport import Outbound

ESPRESSO = [{"class_id": 967, "label": "espresso", "score": 0.9}]
MODEL_INFO: dict[str, Any] = {
    "name": "efficientnet-lite0",
    "path": "/models/efficientnet_lite0.onnx",
    "sha256": "0" * 64,
    "provider": "CPUExecutionProvider",
    "providers_available": ["CPUExecutionProvider"],
    "input_name": "images",
    "input_shape": ["batch", 3, 224, 224],
    "num_classes": 1000,
    "spec": load_spec(DEFAULT_MODEL_PATH).model_dump(mode="json"),
    "fast_jpeg_decode": False,
    "node_id": "node",
    "gpu_ids": [],
}


def answer_all(task: ClassifyTask) -> ClassifyResult:
    return ClassifyResult(
        id=task.id,
        request_id=task.request_id,
        index=task.index,
        predictions=ESPRESSO[: task.top_k],
        batch_size=1,
        timings_ms={"queue": 1.23456, "batch_wait": 2.0, "inference": 3.0},
    )


def failing(status: int, message: str) -> Callable[[ClassifyTask], ClassifyResult]:
    def answer(task: ClassifyTask) -> ClassifyResult:
        return ClassifyResult(
            task.id, task.request_id, task.index, error=ErrorInfo(status, message)
        )

    return answer


class FakeProducer:
    """Takes every publish (or refuses all with ``fail``) and answers each task through
    ``pending`` on the next loop turn, as the reply listener would; ``answer`` returning
    ``None`` leaves that task unanswered."""

    def __init__(
        self,
        pending: PendingResults,
        answer: Callable[[ClassifyTask], ClassifyResult | None] | None = answer_all,
        fail: str | None = None,
    ) -> None:
        self.pending = pending
        self.answer = answer
        self.fail = fail
        self.ready = True
        self.blocked = False
        self.reply_queue = "rabbit-serve.replies.test"
        self.malformed_results = 0
        self.published: list[Outbound] = []
        self.tasks: list[ClassifyTask] = []

    def problem(self) -> str | None:
        if self.blocked:
            return "message broker is blocking publishes (memory or disk alarm)"
        return None if self.ready else "message broker is not connected"

    async def publish(self, message: Outbound) -> None:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise ServiceUnavailable(self.fail)
        self.published.append(message)
        # One task, or the several of a bundle (one message, one confirm).
        tasks = decode_tasks(
            message.body, dict(message.headers), message.message_id, message.reply_to
        )
        self.tasks.extend(tasks)
        for task in tasks:
            if self.answer is not None and (result := self.answer(task)) is not None:
                asyncio.get_running_loop().call_soon(self.pending.resolve, result)


async def ready_classifier() -> dict[str, Any]:
    return MODEL_INFO


def make_service(
    settings: Settings | None = None,
    *,
    answer: Callable[[ClassifyTask], ClassifyResult | None] | None = answer_all,
    fail: str | None = None,
    info: Callable[[], Any] = ready_classifier,
    idempotency: Any = None,
) -> tuple[IngressService, FakeProducer]:
    pending = PendingResults()
    producer = FakeProducer(pending, answer, fail)
    service = IngressService(
        settings or Settings(),
        producer,
        pending,
        ClassifierProbe(info, timeout=0.2),
        idempotency,
        ledger_wait=0.2,
    )
    return service, producer


def client_for(service: IngressService, app: Any = None) -> httpx.AsyncClient:
    """An HTTP client on the real FastAPI app, whose routes get ``service``."""
    app = app or create_app()
    app.dependency_overrides[current_service] = lambda: service
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress")
