"""A Python client for the service: :class:`Client` (blocking) and :class:`AsyncClient`.

Each image is one ``POST /v1/classify`` with the file itself as the body, so it takes the
same path as any other request: the queue, batching, delivery guarantees, API keys and
per-key limits. 503, 429 and 409 are retried after ``Retry-After`` with capped backoff
(:class:`~rabbit_serve.client_core.RetryPolicy`), and so is a connection that failed;
everything else raises a :class:`~rabbit_serve.client_core.RabbitServeError` subclass::

    from rabbit_serve.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.classify("examples/images/coffee.jpg", top_k=3)
        print(result.predictions[0].label, result.predictions[0].score)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from rabbit_serve import client_core as core
from rabbit_serve.client_async import AsyncClient
from rabbit_serve.client_base import DEFAULT_TIMEOUT_S, ClientBase, Outcome, failed, timed_out
from rabbit_serve.client_core import (
    Classification,
    ClassifyError,
    ImageInput,
    Prediction,
    RabbitServeError,
    RequestRejected,
    RetryPolicy,
    ServerError,
    TimedOut,
    Unauthorized,
    Unavailable,
)
from rabbit_serve.schemas import HealthResponse, ModelInfo

__all__ = [
    "AsyncClient",
    "Classification",
    "ClassifyError",
    "Client",
    "Outcome",
    "Prediction",
    "RabbitServeError",
    "RequestRejected",
    "RetryPolicy",
    "ServerError",
    "TimedOut",
    "Unauthorized",
    "Unavailable",
]


class Client(ClientBase):
    """Blocking client; safe to share between threads (``classify_many`` does)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, retry)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def classify(self, image: ImageInput, top_k: int | None = None) -> Classification:
        """Top-k predictions for one image (a path, the file's bytes, or a PIL image)."""
        body = core.image_bytes(image)
        attempt = 0
        while True:
            try:
                response, exc = self._post(body, top_k), None
            except httpx.TimeoutException as timeout:
                raise timed_out(timeout) from timeout
            except httpx.TransportError as failure:
                response, exc = None, failure
            step = self._judge(attempt, response, exc)
            if isinstance(step, Classification):
                return step
            time.sleep(step)
            attempt += 1

    def _post(self, body: bytes, top_k: int | None) -> httpx.Response:
        return self._http.post(
            self._classify_url(),
            content=body,
            params=core.classify_params(top_k),
            headers=core.headers(self.api_key),
        )

    def classify_many(
        self, images: Sequence[ImageInput], top_k: int | None = None, *, concurrency: int = 8
    ) -> list[Outcome]:
        """Every image, ``concurrency`` requests at a time, in the order given; a failed
        image is an ``Outcome`` with ``error``, the others still run."""

        def one(index: int) -> Outcome:
            image = images[index]
            try:
                return Outcome(index, image, result=self.classify(image, top_k))
            except (RabbitServeError, OSError, TypeError) as exc:
                return failed(index, image, exc)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, range(len(images))))

    def health(self) -> HealthResponse:
        """``/healthz``; a 503 is an answer here (``status == "unavailable"``, with why)."""
        try:
            response = self._http.get(f"{self.url}/healthz")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code == 503:
            return core.health(response.content)
        return core.health(self._answer(response))

    def model(self) -> ModelInfo:
        """``/v1/model``: the model the classifier serves."""
        try:
            response = self._http.get(f"{self.url}/v1/model", headers=self._auth())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return core.model_info(self._answer(response))
