"""The batching consumer as a Ray Serve deployment (so Serve keeps NUM_CONSUMERS alive).

This class only wires the parts, each with one job:

- :mod:`consumer.admission`: decode, reject malformed, skip duplicates and expired work;
- :mod:`consumer.driver`: the batching rule on the event loop (timer, in-flight slots);
- :mod:`consumer.classify`: one classifier call per batch, bounded by CLASSIFY_TIMEOUT; a
  failing batch is split until the failing image is alone;
- :mod:`consumer.handback`: publish results with confirms, then ack;
- :mod:`consumer.outbox`: webhook results through a durable outbox, POSTed apart;
- :mod:`consumer.dead_letters`: answer the clients of messages the broker gave up on;
- :mod:`consumer.outcomes`: each message counted once, and the metrics;
- :mod:`consumer.liveness`: why the replica is unhealthy, for Serve's health check.

Per replica, two robust broker connections, as RabbitMQ advises: one consumes (the
request queue with a prefetch of ``MAX_BATCH_SIZE x (MAX_BATCHES_IN_FLIGHT + 1)``, the
batches in flight plus one filling; the dead letters; the outbox on a channel with its
own prefetch, so a slow or dead webhook receiver only ever slows other webhooks) and
one publishes (results and outbox entries, with confirms). A memory or disk alarm
blocks only the publishing one, so acks keep flowing while results wait for the alarm
to clear. A consumer that dies with unacked messages gets them redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractQueue
from ray import serve
from ray.serve.handle import DeploymentHandle

from consumer import bundle
from consumer.admission import Admission, Delivery
from consumer.backlog import Backlog
from consumer.batching import Batcher
from consumer.classify import BatchProcessor, ImageOutcome
from consumer.dead_letters import DeadLetterAnswerer
from consumer.dedup import RecentIds
from consumer.driver import BatchDriver
from consumer.failures import cancel_on_abandon
from consumer.guard import guarded
from consumer.handback import HandBack
from consumer.liveness import Liveness, Progress
from consumer.outbox import WebhookSender
from consumer.outcomes import Tally
from consumer.webhook import WebhookPolicy, webhook_client
from deployments.ledger import LedgerClient
from rabbit_serve import broker
from rabbit_serve.settings import Settings
from rabbit_serve.transport import Inbound

logger = logging.getLogger("rabbit_serve.consumer")

# How often a consumer checks that the broker still delivers the request queue to it.
RESUBSCRIBE_CHECK_S = 1.0


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=8,
    health_check_period_s=5,
)
class BatchingConsumer:
    async def __init__(
        self,
        settings: Settings,
        classifier: DeploymentHandle,
        ledger: DeploymentHandle | None = None,
    ) -> None:
        self._settings = settings
        self._classifier = classifier
        self._ledger = LedgerClient(ledger) if ledger is not None else None
        self._tally = Tally(export=True)
        self._answered = RecentIds()
        self._http = webhook_client(settings)
        self._connection: broker.Connection | None = None
        self._publishing: broker.Connection | None = None
        self._driver: BatchDriver[Delivery] | None = None
        self._processor: BatchProcessor | None = None
        self._requests: AbstractQueue | None = None
        self._broker_error: str | None = None
        self._liveness = Liveness(time.monotonic(), stall=settings.stall_timeout)
        self._resubscriber: asyncio.Task[None] | None = None
        self._backlog = Backlog(
            settings.request_queue, settings.queue_sample_interval_s, self._held, export=True
        )
        self._sampler = asyncio.create_task(self._backlog.run(lambda: self._connection))
        self._runner = asyncio.create_task(self._run())

    # -- Serve hooks -------------------------------------------------------------------------

    def check_health(self) -> None:
        """Raises, with the reason, if the consume loop died or the broker has been out
        of reach for longer than ``BROKER_LOST_GRACE_S``: Serve then restarts the replica."""
        problem = self._liveness.problem(
            self._runner,
            broker.is_connected(self._connection) and broker.is_connected(self._publishing),
            time.monotonic(),
            self._broker_error,
            self._progress(),
        )
        if problem is not None:
            raise RuntimeError(problem)

    def stats(self) -> dict[str, Any]:
        driver = self._driver
        return {
            **self._tally.snapshot(),
            "waiting": driver.waiting if driver else 0,
            "batches_in_flight": driver.in_flight if driver else 0,
            "connected": broker.is_connected(self._connection),
            "publishing_blocked": broker.is_blocked(self._publishing),
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this when the deployment autoscales: the backlog signals that
        :mod:`rabbit_serve.autoscaling` sizes the classifiers and consumers by."""
        return self._backlog.autoscaling_stats()

    def _held(self) -> int:
        driver = self._driver
        return driver.waiting + driver.items_in_flight if driver else 0

    def _progress(self) -> Progress:
        driver, processor = self._driver, self._processor
        if driver is None or processor is None:
            return Progress()
        return Progress(
            held=driver.waiting + driver.in_flight,
            last_progress=processor.last_progress,
            blocked=broker.is_blocked(self._publishing),
            consuming=broker.is_consuming(self._requests),
        )

    async def __del__(self) -> None:
        self._runner.cancel()
        self._sampler.cancel()
        if self._resubscriber is not None:
            self._resubscriber.cancel()
        if self._driver is not None:
            # What still waits is unacked: it returns to the queue when the connection closes.
            await self._driver.close(timeout=self._settings.timeout)
        for connection in (self._connection, self._publishing):
            if connection is not None:
                await connection.close()
        await self._http.aclose()

    # -- wiring ------------------------------------------------------------------------------

    async def _classify(
        self, images: list[bytes], top_ks: list[int], alone: bool
    ) -> list[ImageOutcome]:
        # Cancelling the await alone would leave the request running on its replica.
        outcomes = await cancel_on_abandon(self._classifier.classify.remote(images, top_ks, alone))
        self._backlog.classified(len(images))
        return outcomes

    async def _connect(self, role: str) -> broker.Connection:
        name = f"rabbit-serve consumer {serve.get_replica_context().replica_id.unique_id} {role}"
        while True:
            try:
                return await broker.connect(
                    self._settings, url=self._settings.consumer_broker_url, name=name
                )
            except Exception as exc:
                self._broker_error = repr(exc)
                logger.warning("broker unreachable (%s); retrying", exc)
                await asyncio.sleep(broker.RECONNECT_DELAY_S)

    async def _keep_consuming(
        self, requests: AbstractQueue, on_request: Callable[[Inbound], Awaitable[None]]
    ) -> None:
        """Consume the request queue again when the broker cancelled this consumer (the
        queue was deleted): a replica with no consumer holds no work and would idle
        until the health check replaced it, tens of seconds later."""
        missing = 0
        while True:
            await asyncio.sleep(RESUBSCRIBE_CHECK_S)
            if not broker.is_connected(self._connection) or broker.is_consuming(requests):
                missing = 0
                continue
            missing += 1
            if missing < 2:
                continue  # aio-pika may be restoring it right now
            try:
                await broker.consume_again(requests, on_request)
                logger.warning("the broker had cancelled the request queue's consumer; resumed")
                missing = 0
            except Exception as exc:
                # The queue may still be missing (the ingress declares it on a publish).
                logger.warning("could not consume the request queue again yet: %r", exc)

    async def _run(self) -> None:
        settings = self._settings
        self._connection = connection = await self._connect("consume")
        self._publishing = publishing = await self._connect("publish")
        self._broker_error = None
        channel = await broker.open_channel(connection, prefetch=settings.prefetch_count)
        requests, dead_letters = await broker.declare_request_queue(channel, settings)
        self._requests = requests

        publisher = broker.AioPikaPublisher(
            await broker.open_channel(publishing, confirms=True),
            timeout=settings.publish_timeout,
            connection=publishing,
            # Results wait out a broker alarm rather than go round the queue again.
            wait_unblocked=None,
        )
        hand_back = HandBack(
            publisher,
            self._tally,
            self._answered,
            webhook_queue=settings.webhook_queue,
            model_name=settings.model_name,
        )
        self._processor = processor = BatchProcessor(
            self._classify, hand_back, self._tally, timeout=settings.classify_timeout
        )
        batcher: Batcher[Delivery] = Batcher(
            settings.max_batch_size,
            settings.batch_timeout,
            settings.max_batches_in_flight,
            settings.dispatch_when_idle,
            weight=lambda delivery: delivery.task.pixels,
            max_weight=settings.max_batch_pixels,
        )
        self._driver = driver = BatchDriver(batcher, processor, on_error=processor.on_error)
        admission = Admission(self._answered, self._tally, driver.submit)
        answerer = DeadLetterAnswerer(
            hand_back,
            self._tally,
            settings.delivery_limit,
            webhook_job_ttl=settings.webhook_job_ttl,
            # A dead-lettered multi-image request is answered image by image.
            parts=bundle.parts,
        )

        # The robust connection re-opens the channel and these consumers after a drop.
        on_request = guarded(admission.on_request, self._tally, "admission")
        await broker.consume(requests, on_request)
        self._resubscriber = asyncio.create_task(self._keep_consuming(requests, on_request))
        await broker.consume(
            dead_letters, guarded(answerer.on_dead_letter, self._tally, "dead letters")
        )
        # Its own channel: the outbox's prefetch bounds webhook deliveries in flight
        # without touching the request queue's.
        webhook_channel = await broker.open_channel(
            connection, prefetch=settings.webhook_concurrency
        )
        outbox = await broker.declare_webhook_queue(webhook_channel, settings)
        sender = WebhookSender(
            self._http,
            WebhookPolicy.from_settings(settings),
            self._tally,
            self._ledger,
        )
        await broker.consume(outbox, guarded(sender.on_entry, self._tally, "webhook outbox"))
        logger.info(
            "consuming %s (batch %d, timeout %.3fs, prefetch %d)",
            settings.request_queue,
            settings.max_batch_size,
            settings.batch_timeout,
            settings.prefetch_count,
        )
