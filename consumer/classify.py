"""One batch, one classifier call; a batch that fails is split until the failure is alone.

Every call is bounded by ``CLASSIFY_TIMEOUT``. A call no replica ran (see
:mod:`consumer.failures`) is retried for up to ``unavailable_wait`` seconds, then the
batch goes back to the queue, never split: it says nothing about its images.

A failed batch is split in halves, tried one after the other, and a failing half again,
until the failing image is alone: with one bad image in ``n``, about ``1 + 2*log2(n)``
calls, and its batch-mates are answered as soon as their part succeeds. A lone image that
failed while another part of its batch succeeded is *poison*: answered with a 422 and
acked (``Outcome.POISON``); one whose failure was chance is first tried once more alone,
so a replica that died under a good image does not fail it. If both halves of the first
split fail, nothing in the batch succeeded: it is the classifier, not an image, and the
batch goes back to the queue, where the delivery limit bounds the calls and the
dead-letter answerer tells the client. (Two bad images straddling the first split look
the same; they are split apart when their batch is formed differently next time.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from consumer.admission import Delivery
from consumer.failures import (
    CallTimedOut,
    ClassifierUnavailable,
    WrongAnswer,
    by_chance,
    not_run,
)
from consumer.handback import Answer, HandBack
from consumer.outcomes import Outcome, Tally
from rabbit_serve.messages import ClassifyResult, ErrorInfo

logger = logging.getLogger("rabbit_serve.consumer")
T = TypeVar("T")

CLASSIFY_TIMEOUT_S = 15.0  # Settings.classify_timeout's default
CLASSIFIER_RETRY_DELAY_S = 0.25  # first pause while no replica takes the call; doubles
MAX_RETRY_DELAY_S = 1.0
UNAVAILABLE_WAIT_S = 5.0  # how long a call may wait for a replica before the batch goes back
REQUEUE_DELAY_S = 1.0  # pause before requeueing a batch nothing of which succeeded

POISON_MESSAGE = (
    "the classifier failed on this image on its own while the rest of its batch "
    "succeeded; it may be corrupt, or too large to decode"
)

# Per image: top-k predictions, or the error for that image alone.
ImageOutcome = list[Any] | ErrorInfo
# classify(images, top_ks, alone): the classifier deployment's method, or a stand-in.
ClassifyCall = Callable[[list[bytes], list[int], bool], Awaitable[Sequence[ImageOutcome]]]


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


def halves(part: list[T]) -> tuple[list[T], list[T]]:
    mid = len(part) // 2
    return part[:mid], part[mid:]


class _NothingSucceeded(Exception):
    pass


@dataclass
class _Search:
    """One batch's isolation: whether any part succeeded, and the images that failed alone."""

    alone: bool
    dispatched: float
    succeeded: bool = False
    lone: list[tuple[Delivery, BaseException]] = field(default_factory=list)


class BatchProcessor:
    """The batch driver's handler: classify a batch and hand its results back, isolating
    an image that fails the classifier. ``last_progress`` is the monotonic time a
    classifier call or a hand-back last finished, for the consumer's stall check."""

    def __init__(
        self,
        classify: ClassifyCall,
        hand_back: HandBack,
        tally: Tally,
        *,
        timeout: float | None = CLASSIFY_TIMEOUT_S,
        retry_delay: float = CLASSIFIER_RETRY_DELAY_S,
        unavailable_wait: float = UNAVAILABLE_WAIT_S,
        requeue_delay: float = REQUEUE_DELAY_S,
    ) -> None:
        self._classify = classify
        self._hand_back = hand_back
        self._tally = tally
        self._timeout = timeout
        self._retry_delay = retry_delay
        self._unavailable_wait = unavailable_wait
        self._requeue_delay = requeue_delay
        self.last_progress = time.monotonic()

    async def __call__(self, batch: list[Delivery], alone: bool) -> None:
        # Classifying what the broker has already taken back would be wasted work.
        batch = self._hand_back.live(batch)
        if not batch:
            return
        search = _Search(alone, time.time())
        try:
            error = await self._try(batch, search)
            if error is not None:
                await self._bisect(batch, error, search)
            if search.lone and not search.succeeded:
                raise _NothingSucceeded
            for delivery, error in search.lone:
                await self._settle_lone(delivery, error, search)
        except _NothingSucceeded:
            logger.error("every part of a batch of %d failed; requeueing it", len(batch))
            # A replica restarting is the likeliest cause: give it a moment before the
            # batch spends another of its deliveries.
            await asyncio.sleep(self._requeue_delay)
            await self._requeue_unsettled(batch)
        except ClassifierUnavailable as exc:
            logger.warning("%s; requeueing what is left of a batch of %d", exc, len(batch))
            await self._requeue_unsettled(batch)

    async def on_error(self, batch: list[Delivery], exc: Exception) -> None:
        """The driver's error handler: whatever was not settled goes back to the queue."""
        await self._requeue_unsettled(batch)

    async def _requeue_unsettled(self, batch: list[Delivery]) -> None:
        await self._hand_back.requeue([d.inbound for d in batch if not d.inbound.settled])
        self._progressed()

    def _progressed(self) -> None:
        self.last_progress = time.monotonic()

    async def _bisect(self, part: list[Delivery], error: BaseException, search: _Search) -> None:
        """``part`` failed with ``error``: find the images in it that fail alone."""
        if len(part) == 1:
            search.lone.append((part[0], error))
            return
        failed = []
        for half in halves(part):
            half_error = await self._try(half, search)
            if half_error is None:
                search.succeeded = True
            else:
                failed.append((half, half_error))
        if len(failed) == 2 and not search.succeeded:
            raise _NothingSucceeded
        for half, half_error in failed:
            await self._bisect(half, half_error, search)

    async def _settle_lone(self, delivery: Delivery, error: BaseException, search: _Search) -> None:
        if by_chance(error):
            # A replica may have died under it for another reason: once more, alone.
            logger.warning(
                "image %s failed alone (%r); trying it once more", delivery.task.id, error
            )
            retry = await self._try([delivery], search)
            if retry is None:
                return
            error = retry
        task = delivery.task
        logger.error(
            "poison image %s (%d bytes, %d pixels): the classifier failed on it alone (%r)",
            task.id,
            len(task.image),
            task.pixels,
            error,
        )
        result = build_result(delivery, ErrorInfo(422, POISON_MESSAGE), 1, search.dispatched, 0.0)
        await self._hand_back.answer(
            [Answer(delivery.inbound, task, result)], outcome=Outcome.POISON
        )
        self._progressed()

    async def _try(self, part: list[Delivery], search: _Search) -> BaseException | None:
        """Classify ``part`` and hand its results back; the error instead, if it failed."""
        self._tally.batch(len(part))
        started = time.time()
        try:
            outcomes = await self._call(
                [d.task.image for d in part], [d.task.top_k for d in part], search.alone
            )
            if len(outcomes) != len(part):
                raise WrongAnswer(f"{len(outcomes)} outcomes for a batch of {len(part)}")
        except ClassifierUnavailable:
            raise
        except Exception as exc:
            self._progressed()
            chance = by_chance(exc)
            logger.warning(
                "classifier failed on %d image(s): %r (%s)",
                len(part),
                exc,
                "may be chance" if chance else "raised by the classifier itself",
                # A failure of the classifier's own code: its traceback says where.
                exc_info=not chance,
            )
            return exc
        self._progressed()
        inference_ms = (time.time() - started) * 1000
        await self._hand_back.answer(
            [
                Answer(
                    d.inbound,
                    d.task,
                    build_result(d, o, len(part), search.dispatched, inference_ms),
                )
                for d, o in zip(part, outcomes, strict=True)
            ]
        )
        self._progressed()
        return None

    async def _call(
        self, images: list[bytes], top_ks: list[int], alone: bool
    ) -> Sequence[ImageOutcome]:
        """One classifier call, bounded by the timeout; retried while no replica runs it."""
        deadline = time.monotonic() + self._unavailable_wait
        delay = self._retry_delay
        while True:
            try:
                return await asyncio.wait_for(
                    self._classify(images, top_ks, alone), timeout=self._timeout
                )
            except asyncio.TimeoutError as exc:
                raise CallTimedOut(f"no answer within CLASSIFY_TIMEOUT ({self._timeout}s)") from exc
            except Exception as exc:
                if not not_run(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise ClassifierUnavailable(
                        f"no classifier replica took the call in {self._unavailable_wait}s: {exc!r}"
                    ) from exc
                logger.warning("no classifier replica ran the call (%r); waiting %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
