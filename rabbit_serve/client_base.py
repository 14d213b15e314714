"""What :class:`~rabbit_serve.client.Client` and
:class:`~rabbit_serve.client_async.AsyncClient` share: the answer to one try of a
request (a result, a wait before the next try, or a final error) and the per-image
``Outcome`` of ``classify_many``. No I/O here: the two clients differ only in how they
send and sleep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from rabbit_serve import client_core as core
from rabbit_serve.client_core import (
    Classification,
    ImageInput,
    RabbitServeError,
    RequestRejected,
    RetryPolicy,
    TimedOut,
    Unavailable,
)

# Longer than the service's TIMEOUT (10 s by default), so its 504 arrives before ours.
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """One image of ``classify_many``: ``result`` or ``error``, never both."""

    index: int
    image: ImageInput
    result: Classification | None = None
    error: RabbitServeError | None = None


def failed(index: int, image: ImageInput, exc: Exception) -> Outcome:
    """The outcome of an image whose classify raised ``exc``. A file that cannot be read
    (``OSError``) or an input of the wrong type is this image's failure, not the run's."""
    if not isinstance(exc, RabbitServeError):
        exc = RequestRejected(f"cannot read the image: {exc}")
    return Outcome(index, image, error=exc)


def timed_out(exc: httpx.TimeoutException) -> TimedOut:
    # The service answers 504 after its TIMEOUT; this is our own, longer, timeout.
    return TimedOut(f"no answer in time: {exc!r}")


class ClientBase:
    def __init__(self, url: str, api_key: str | None, retry: RetryPolicy | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.retry = retry or RetryPolicy()

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _classify_url(self) -> str:
        return f"{self.url}/v1/classify"

    def _judge(
        self, attempt: int, response: httpx.Response | None, exc: httpx.TransportError | None
    ) -> Classification | float:
        """The result of try ``attempt``, or how long to wait before the next; raises
        when the answer is final or the tries are spent. ``response`` None: the request
        failed with ``exc`` before any answer came."""
        if response is not None and response.status_code < 400:
            return core.classification(response.content)
        if response is not None:
            status, retry_after = response.status_code, response.headers.get("retry-after")
            failure = core.error_for(status, response.content)
        else:
            status, retry_after = None, None
            failure = self._unreachable(exc)
        if not self.retry.should_retry(attempt, status):
            raise failure from exc
        return self.retry.delay(attempt, retry_after, random.random())

    def _unreachable(self, exc: BaseException | None) -> Unavailable:
        return Unavailable(f"cannot reach {self.url}: {exc!r}")

    def _answer(self, response: httpx.Response) -> bytes:
        """The body of a GET's answer, or its error."""
        if response.status_code >= 400:
            raise core.error_for(response.status_code, response.content)
        return response.content
