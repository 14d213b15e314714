"""The asyncio client, :class:`AsyncClient`: the same requests, retries and errors as
:class:`~rabbit_serve.client.Client` (import either from :mod:`rabbit_serve.client`).
Reading files and encoding PIL images run on worker threads, so a large image never
stalls the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

import httpx

from rabbit_serve import client_core as core
from rabbit_serve.client_base import DEFAULT_TIMEOUT_S, ClientBase, Outcome, failed, timed_out
from rabbit_serve.client_core import (
    Classification,
    ImageInput,
    RabbitServeError,
    RetryPolicy,
)
from rabbit_serve.schemas import HealthResponse, ModelInfo


class AsyncClient(ClientBase):
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        super().__init__(url, api_key, retry)
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, limits=limits)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def classify(self, image: ImageInput, top_k: int | None = None) -> Classification:
        """Top-k predictions for one image (a path, the file's bytes, or a PIL image)."""
        body = await asyncio.to_thread(core.image_bytes, image)
        attempt = 0
        while True:
            try:
                response, exc = await self._post(body, top_k), None
            except httpx.TimeoutException as timeout:
                raise timed_out(timeout) from timeout
            except httpx.TransportError as failure:
                response, exc = None, failure
            step = self._judge(attempt, response, exc)
            if isinstance(step, Classification):
                return step
            await asyncio.sleep(step)
            attempt += 1

    async def _post(self, body: bytes, top_k: int | None) -> httpx.Response:
        return await self._http.post(
            self._classify_url(),
            content=body,
            params=core.classify_params(top_k),
            headers=core.headers(self.api_key),
        )

    async def _one(self, index: int, image: ImageInput, top_k: int | None) -> Outcome:
        try:
            return Outcome(index, image, result=await self.classify(image, top_k))
        except (RabbitServeError, OSError, TypeError) as exc:
            return failed(index, image, exc)

    async def iter_classify(
        self, images: Iterable[ImageInput], top_k: int | None = None, *, concurrency: int = 8
    ) -> AsyncIterator[Outcome]:
        """Outcomes as they finish, at most ``concurrency`` requests open. ``images`` is
        read lazily, so a folder of 100,000 files never becomes 100,000 tasks."""
        source = iter(enumerate(images))
        running: set[asyncio.Task[Outcome]] = set()
        try:
            while True:
                for index, image in source:
                    running.add(asyncio.create_task(self._one(index, image, top_k)))
                    if len(running) >= max(1, concurrency):
                        break
                if not running:
                    return
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            # The caller stopped early (or was cancelled): nothing keeps running behind it.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def classify_many(
        self, images: Sequence[ImageInput], top_k: int | None = None, *, concurrency: int = 8
    ) -> list[Outcome]:
        """Every image, in the order given (see :meth:`iter_classify`)."""
        outcomes = [o async for o in self.iter_classify(images, top_k, concurrency=concurrency)]
        return sorted(outcomes, key=lambda o: o.index)

    async def health(self) -> HealthResponse:
        """``/healthz``; a 503 is an answer here (``status == "unavailable"``, with why)."""
        try:
            response = await self._http.get(f"{self.url}/healthz")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code == 503:
            return core.health(response.content)
        return core.health(self._answer(response))

    async def model(self) -> ModelInfo:
        """``/v1/model``: the model the classifier serves."""
        try:
            response = await self._http.get(f"{self.url}/v1/model", headers=self._auth())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return core.model_info(self._answer(response))
