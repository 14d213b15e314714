"""One batch, one classifier call: retried only when the failure may pass, then handed back.

A failure that may pass is the classifier's infrastructure: its replica died or is
unavailable, Serve pushed back, a timeout. Those are retried here a few times, since a
live replica (or the one Serve restarts) usually answers within a second. A failure
raised by the classifier's own code (a ``RayTaskError`` wrapping, say, a ``ValueError``)
will fail the same way again: the batch goes back to the queue at once, so the broker's
delivery limit bounds the calls (``DELIVERY_LIMIT + 1`` in all) and the dead-letter
answerer tells the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ray.exceptions import (
    GetTimeoutError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    ObjectStoreFullError,
    OutOfMemoryError,
    PendingCallsLimitExceeded,
    RayActorError,
    RaySystemError,
    RayTaskError,
    RpcError,
    TaskCancelledError,
    WorkerCrashedError,
)
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from consumer.admission import Delivery
from consumer.handback import Answer, HandBack
from consumer.outcomes import Tally
from rabbit_serve.messages import ClassifyResult, ErrorInfo

logger = logging.getLogger("rabbit_serve.consumer")

CLASSIFIER_ATTEMPTS = 3
CLASSIFIER_RETRY_DELAY_S = 0.5

# Per image: top-k predictions, or the error for that image alone.
ImageOutcome = list[Any] | ErrorInfo
# classify(images, top_ks, alone): the classifier deployment's method, or a stand-in.
ClassifyCall = Callable[[list[bytes], list[int], bool], Awaitable[Sequence[ImageOutcome]]]

MAY_PASS: tuple[type[BaseException], ...] = (
    # The replica's actor died, or cannot be reached for now.
    RayActorError,
    WorkerCrashedError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    # Pressure that eases: Serve's queue limits, Ray's memory and object store.
    BackPressureError,
    PendingCallsLimitExceeded,
    OutOfMemoryError,
    ObjectStoreFullError,
    # Serve has no replica for it at the moment (restarting, redeploying).
    ReplicaUnavailableError,
    DeploymentUnavailableError,
    TaskCancelledError,  # Serve's RequestCancelledError too: a replica shutting down
    RaySystemError,
    RpcError,
    GetTimeoutError,
    TimeoutError,
    ConnectionError,
)


def may_pass(exc: BaseException) -> bool:
    """Whether a failed classifier call may succeed if tried again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RayTaskError):
            # Raised inside the replica: what it wraps decides. Checked first, because
            # RayTaskError(ValueError) is also an instance of ValueError.
            cause = current.cause
            current = cause if isinstance(cause, BaseException) else None
            continue
        if isinstance(current, MAY_PASS):
            return True
        # Serve wraps an upstream actor's death in a plain RayServeException.
        current = current.__cause__ if isinstance(current, RayServeException) else None
    return False


async def call_classifier(
    classify: ClassifyCall,
    images: list[bytes],
    top_ks: list[int],
    alone: bool,
    *,
    attempts: int = CLASSIFIER_ATTEMPTS,
    delay: float = CLASSIFIER_RETRY_DELAY_S,
) -> Sequence[ImageOutcome]:
    """Call the classifier, retrying only failures that :func:`may_pass`."""
    for attempt in range(1, attempts + 1):
        try:
            return await classify(images, top_ks, alone)
        except Exception as exc:
            if attempt == attempts or not may_pass(exc):
                raise
            logger.warning("classifier call failed (%r); retry %d", exc, attempt)
            await asyncio.sleep(delay * attempt)
    raise AssertionError("unreachable")


def build_result(
    delivery: Delivery,
    outcome: ImageOutcome,
    batch_size: int,
    dispatched: float,
    inference_ms: float,
) -> ClassifyResult:
    task = delivery.task
    failed = isinstance(outcome, ErrorInfo)
    return ClassifyResult(
        id=task.id,
        request_id=task.request_id,
        index=task.index,
        predictions=None if failed else outcome,
        error=outcome if failed else None,
        batch_size=batch_size,
        timings_ms={
            "queue": (delivery.received_at - task.sent_at) * 1000,
            "batch_wait": (dispatched - delivery.received_at) * 1000,
            "inference": inference_ms,
        },
    )


class BatchProcessor:
    """The batch driver's handler: classify a batch, then hand its results back, or
    requeue the whole batch if the classifier failed."""

    def __init__(
        self,
        classify: ClassifyCall,
        hand_back: HandBack,
        tally: Tally,
        *,
        attempts: int = CLASSIFIER_ATTEMPTS,
        retry_delay: float = CLASSIFIER_RETRY_DELAY_S,
    ) -> None:
        self._classify = classify
        self._hand_back = hand_back
        self._tally = tally
        self._attempts = attempts
        self._retry_delay = retry_delay

    async def __call__(self, batch: list[Delivery], alone: bool) -> None:
        dispatched = time.time()
        self._tally.batch(len(batch))
        try:
            outcomes = await call_classifier(
                self._classify,
                [d.task.image for d in batch],
                [d.task.top_k for d in batch],
                alone,
                attempts=self._attempts,
                delay=self._retry_delay,
            )
            if len(outcomes) != len(batch):
                raise ValueError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
        except Exception as exc:
            passing = may_pass(exc)
            logger.error(
                "classifier failed on a batch of %d (%r, %s); requeueing it",
                len(batch),
                exc,
                "may pass" if passing else "raised by the classifier itself",
                # A failure of the classifier's own code: its traceback says where.
                exc_info=not passing,
            )
            await self._hand_back.requeue([d.inbound for d in batch])
            return
        inference_ms = (time.time() - dispatched) * 1000
        await self._hand_back.answer(
            [
                Answer(d.inbound, d.task, build_result(d, o, len(batch), dispatched, inference_ms))
                for d, o in zip(batch, outcomes, strict=True)
            ]
        )

    async def on_error(self, batch: list[Delivery], exc: Exception) -> None:
        """The driver's error handler: whatever was not settled goes back to the queue."""
        await self._hand_back.requeue([d.inbound for d in batch if not d.inbound.settled])
