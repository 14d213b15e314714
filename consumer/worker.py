"""A batching consumer actor (a Ray Serve deployment, so Serve keeps NUM_CONSUMERS alive).

Per replica: one robust broker connection, a prefetch of ``MAX_BATCH_SIZE x
(MAX_BATCHES_IN_FLIGHT + 1)`` so the next batch fills while earlier ones are at
the classifier, a :class:`Batcher` driven by a real timer, one classifier
call per batch, and an ack for each message only after its result was handed
back (published with confirms to the owner's reply queue, or POSTed to its
webhook outbox). A consumer that dies with unacked messages gets them redelivered.
Webhook results go through a durable outbox queue with its own channel and
prefetch, so a slow or dead receiver only ever slows other webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

import aio_pika
import httpx
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from consumer.batching import Batcher, Step
from consumer.dedup import RecentIds
from consumer.webhook import WebhookPolicy, deliver
from rabbit_serve import broker
from rabbit_serve.messages import (
    H_CALLBACK_URL,
    RESULT_CONTENT_TYPE,
    ClassifyResult,
    ClassifyTask,
    ErrorInfo,
    MalformedMessage,
    dead_letter_reason,
    decode_task,
    encode_reply,
)
from rabbit_serve.settings import Settings

logger = logging.getLogger("rabbit_serve.consumer")

RECONNECT_DELAY_S = 1.0
CLASSIFIER_ATTEMPTS = 3
CLASSIFIER_RETRY_DELAY_S = 0.5
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass
class _Delivery:
    task: ClassifyTask
    message: AbstractIncomingMessage
    received_at: float  # wall clock, comparable with task.sent_at


class _Answer(NamedTuple):
    message: AbstractIncomingMessage
    task: ClassifyTask
    result: ClassifyResult


def _result(
    delivery: _Delivery,
    outcome: list[Any] | ErrorInfo,
    batch_size: int,
    dispatched: float,
    inference_ms: float,
) -> ClassifyResult:
    task = delivery.task
    return ClassifyResult(
        id=task.id,
        request_id=task.request_id,
        index=task.index,
        predictions=None if isinstance(outcome, ErrorInfo) else outcome,
        error=outcome if isinstance(outcome, ErrorInfo) else None,
        batch_size=batch_size,
        timings_ms={
            "queue": (delivery.received_at - task.sent_at) * 1000,
            "batch_wait": (dispatched - delivery.received_at) * 1000,
            "inference": inference_ms,
        },
    )


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=8,
    health_check_period_s=5,
)
class BatchingConsumer:
    async def __init__(self, settings: Settings, classifier: DeploymentHandle) -> None:
        self._settings = settings
        self._classifier = classifier
        self._loop = asyncio.get_running_loop()
        self._batcher: Batcher[_Delivery] = Batcher(
            settings.max_batch_size,
            settings.batch_timeout,
            settings.max_batches_in_flight,
            settings.dispatch_when_idle,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._answered = RecentIds()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel
        self._http = httpx.AsyncClient()
        self._webhook_policy = WebhookPolicy(
            secret=settings.webhook_secret,
            allowed_hosts=settings.webhook_allowed_hosts,
            allow_private=settings.webhook_allow_private,
            attempts=settings.webhook_max_attempts,
            timeout=settings.webhook_timeout,
        )
        self._counts: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._metric_batch_size = metrics.Histogram(
            "rabbit_serve_batch_size",
            description="Images per classifier call.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self._metric_messages = metrics.Counter(
            "rabbit_serve_consumer_messages",
            description="Messages taken from the request queue, by outcome.",
            tag_keys=("outcome",),
        )
        self._metric_queue_ms = metrics.Histogram(
            "rabbit_serve_queue_wait_ms",
            description="Milliseconds from publish to consumer receipt.",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000],
        )
        self._runner = asyncio.create_task(self._run())

    # -- Serve hooks -------------------------------------------------------------------------

    def check_health(self) -> None:
        """Serve restarts this replica if its consume loop died."""
        if self._runner.done() and not self._runner.cancelled():
            exc = self._runner.exception()
            if exc is not None:
                raise RuntimeError(f"consumer loop died: {exc!r}")

    def stats(self) -> dict[str, Any]:
        return {
            "counts": dict(self._counts),
            "batch_sizes": dict(self._batch_sizes),
            "waiting": self._batcher.waiting,
            "batches_in_flight": len(self._in_flight),
            "connected": self._connection is not None and not self._connection.is_closed,
        }

    async def __del__(self) -> None:
        self._runner.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self._settings.timeout)
        # Unacked messages (still batching) return to the queue when the connection closes.
        if self._connection is not None:
            await self._connection.close()
        await self._http.aclose()

    # -- consuming ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                self._connection = await broker.connect(self._settings)
                break
            except Exception as exc:
                logger.warning("broker unreachable (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self._settings.prefetch_count)
        queue, dead = await broker.declare_request_queue(channel, self._settings)
        self._channel = channel
        # The robust connection re-opens the channel and these consumers after a drop.
        await queue.consume(self._on_message)
        await dead.consume(self._on_dead_letter)
        # Its own channel: the outbox's prefetch bounds webhook deliveries in flight
        # without touching the request queue's.
        webhook_channel = await self._connection.channel()
        await webhook_channel.set_qos(prefetch_count=self._settings.webhook_concurrency)
        outbox = await broker.declare_webhook_queue(webhook_channel, self._settings)
        await outbox.consume(self._on_webhook)
        logger.info(
            "consuming %s (batch %d, timeout %.3fs, prefetch %d)",
            self._settings.request_queue,
            self._settings.max_batch_size,
            self._settings.batch_timeout,
            self._settings.prefetch_count,
        )

    def _count(self, outcome: str, n: int = 1) -> None:
        self._counts[outcome] += n
        self._metric_messages.inc(n, tags={"outcome": outcome})

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            task = decode_task(message.body, message.headers, message.message_id, message.reply_to)
        except MalformedMessage as exc:
            # It can never succeed: requeueing would only poison the queue.
            logger.warning("rejecting malformed message %s: %s", message.message_id, exc)
            self._count("malformed")
            await message.reject(requeue=False)
            return
        if message.redelivered:
            self._count("redelivered")
            if task.id in self._answered:
                # Answered before, but the ack was lost: do not answer twice.
                self._count("duplicate_skipped")
                await message.ack()
                return
        now = time.time()
        if task.remaining(now) <= 0:
            # Its client has already had a 504; the work would be wasted.
            self._count("expired")
            await message.ack()
            return
        self._metric_queue_ms.observe(max(now - task.sent_at, 0) * 1000)
        self._apply(self._batcher.add(_Delivery(task, message, now), self._loop.time()))

    def _apply(self, step: Step[_Delivery]) -> None:
        """Dispatch what the batcher released and keep exactly one timer armed."""
        for batch in step.batches:
            task = asyncio.create_task(self._process(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        if step.wake_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._timer_at = step.wake_at
            if step.wake_at is not None:
                self._timer = self._loop.call_at(step.wake_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._apply(self._batcher.on_timer(self._loop.time()))

    # -- processing --------------------------------------------------------------------------

    async def _classify(self, batch: list[_Delivery]) -> list[list[Any] | ErrorInfo]:
        images = [d.task.image for d in batch]
        top_ks = [d.task.top_k for d in batch]
        # The only batch in flight with nothing waiting behind it: a lone request, which
        # the classifier may give more than one thread.
        alone = len(self._in_flight) <= 1 and self._batcher.waiting == 0
        for attempt in range(1, CLASSIFIER_ATTEMPTS + 1):
            try:
                return await self._classifier.classify.remote(images, top_ks, alone)
            except Exception as exc:
                if attempt == CLASSIFIER_ATTEMPTS:
                    raise
                logger.warning("classifier call failed (%r); retry %d", exc, attempt)
                await asyncio.sleep(CLASSIFIER_RETRY_DELAY_S * attempt)
        raise AssertionError("unreachable")

    async def _process(self, batch: list[_Delivery]) -> None:
        try:
            await self._classify_and_hand_back(batch)
        finally:
            # Frees the slot; an overdue batch that waited for it leaves now.
            self._apply(self._batcher.on_done(self._loop.time()))

    async def _classify_and_hand_back(self, batch: list[_Delivery]) -> None:
        dispatched = time.time()
        self._batch_sizes[len(batch)] += 1
        self._metric_batch_size.observe(len(batch))
        try:
            outcomes = await self._classify(batch)
        except Exception:
            logger.exception("classifier failed on a batch of %d; requeueing it", len(batch))
            self._count("requeued", len(batch))
            for delivery in batch:
                with contextlib.suppress(Exception):
                    await delivery.message.nack(requeue=True)
            return
        inference_ms = (time.time() - dispatched) * 1000
        await self._hand_back(
            [
                _Answer(
                    d.message, d.task, _result(d, outcome, len(batch), dispatched, inference_ms)
                )
                for d, outcome in zip(batch, outcomes, strict=True)
            ]
        )

    async def _hand_back(self, answers: list[_Answer]) -> None:
        """Hand results back, then ack: never the other way round.

        The results bound for one ingress replica leave in a single reply message, so a
        batch costs one publish and one delivery per replica instead of one per image;
        webhook results go one by one to the durable outbox.
        """
        replies: dict[str, list[_Answer]] = defaultdict(list)
        webhooks: list[_Answer] = []
        for answer in answers:
            if answer.task.callback_url:
                webhooks.append(answer)
            else:
                replies[answer.task.reply_to or ""].append(answer)
        await asyncio.gather(
            *(
                self._settle(
                    group,
                    "answered",
                    aio_pika.Message(
                        encode_reply([a.result for a in group]), content_type=RESULT_CONTENT_TYPE
                    ),
                    queue,
                )
                for queue, group in replies.items()
            ),
            *(
                self._settle(
                    [answer],
                    "webhook_queued",
                    aio_pika.Message(
                        answer.result.to_json(),
                        message_id=answer.task.id,
                        content_type=RESULT_CONTENT_TYPE,
                        headers={H_CALLBACK_URL: answer.task.callback_url},
                        # Durably handed to the outbox (confirmed): the request can be acked.
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    self._settings.webhook_queue,
                )
                for answer in webhooks
            ),
        )

    async def _settle(
        self, answers: list[_Answer], outcome: str, message: aio_pika.Message, routing_key: str
    ) -> None:
        """Publish (confirmed) what answers these requests, then ack them."""
        try:
            await self._channel.default_exchange.publish(message, routing_key=routing_key)
            self._count(outcome, len(answers))
            for answer in answers:
                self._answered.add(answer.task.id)
                await answer.message.ack()
        except Exception:
            # The connection dropped between result and ack: the broker redelivers the
            # messages to a live consumer, so nothing is lost (the ingress ignores a
            # second result for the same task).
            logger.exception(
                "could not hand back %d result(s); they will be redelivered", len(answers)
            )
            self._count("handback_failed", len(answers))

    # -- webhooks ----------------------------------------------------------------------------

    async def _on_webhook(self, message: AbstractIncomingMessage) -> None:
        """Deliver one outbox entry (retries inside), then ack it whatever the outcome:
        the retry bound is the policy's, not the broker's."""
        url = (message.headers or {}).get(H_CALLBACK_URL)
        if isinstance(url, bytes):
            url = url.decode("utf-8", "replace")
        if not isinstance(url, str) or not url:
            self._count("webhook_malformed")
            await message.reject(requeue=False)
            return
        delivered = await deliver(
            self._http,
            url,
            message.body,
            policy=self._webhook_policy,
            task_id=message.message_id or "",
        )
        self._count("webhook_delivered" if delivered else "webhook_failed")
        await message.ack()

    # -- dead letters ------------------------------------------------------------------------

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """Answer the client of a message the broker gave up on, instead of letting it
        wait for its timeout; expired work is only counted (its client had a 504)."""
        reason = dead_letter_reason(message.headers)
        if reason == "expired":
            self._count("expired_in_queue")
            await message.ack()
            return
        try:
            task = decode_task(message.body, message.headers, message.message_id, message.reply_to)
        except MalformedMessage:
            self._count("dead_malformed")
            await message.ack()
            return
        if task.remaining() <= 0:
            self._count("expired")
            await message.ack()
            return
        self._count("dead_lettered")
        logger.warning("task %s dead-lettered (%s); answering with an error", task.id, reason)
        result = ClassifyResult(
            id=task.id,
            request_id=task.request_id,
            index=task.index,
            error=ErrorInfo(
                503,
                f"the image could not be classified: it failed {self._settings.delivery_limit + 1}"
                " times; retry later",
            ),
        )
        await self._hand_back([_Answer(message, task, result)])
