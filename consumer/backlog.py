"""The request queue's backlog as a consumer sees it: the autoscaling signal and metrics.

Each consumer replica asks the broker every ``QUEUE_SAMPLE_INTERVAL_S`` how many messages
are ready in the request queue and how many consumers it has, with a passive declare:
plain AMQP, so no management plugin is needed, and the same answer the broker gives any
client. The declare runs on a channel of its own, opened for the sample, because the
broker closes a channel whose passive declare fails (the queue deleted), and that must
not be the channel the consumer takes its work on.

What the broker cannot say cheaply, the unacked messages, every consumer knows of its
own: what it holds (waiting to form a batch, and in batches in flight). The sum over
replicas is the queue's unacked count. Both go to Serve's controller through
``record_autoscaling_stats`` (:meth:`Backlog.autoscaling_stats`), which must not wait on
the broker: it reads the last sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from rabbit_serve.meters import RateWindow

logger = logging.getLogger("rabbit_serve.consumer")

# A sample older than this many intervals is not reported: the broker is out of reach,
# and a stale count would keep the autoscaler acting on a backlog that may be gone.
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class QueueSample:
    ready: int
    consumers: int
    at: float  # time.monotonic()


async def sample_queue(connection: AbstractRobustConnection, queue: str) -> QueueSample:
    """One passive declare of ``queue`` on a channel opened for it."""
    async with aio_pika.Channel(connection, publisher_confirms=False) as channel:
        declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return QueueSample(result.message_count or 0, result.consumer_count or 0, time.monotonic())


class Backlog:
    """The last queue sample, this replica's held messages and its classify rate.

    ``held`` is a callable so it is read when asked, from the batch driver's own counts.
    """

    def __init__(
        self,
        queue: str,
        interval_s: float,
        held: Callable[[], int],
        *,
        export: bool = False,
        rate_window_s: float = 10.0,
    ) -> None:
        self._queue = queue
        self._interval_s = interval_s
        self._held = held
        self._classified = RateWindow(rate_window_s)
        self.sample: QueueSample | None = None
        self._metrics = _RayMetrics(queue) if export else None

    def classified(self, images: int) -> None:
        """``images`` came back from the classifier (one batch)."""
        self._classified.add(images, time.monotonic())

    def fresh_sample(self, now: float) -> QueueSample | None:
        sample = self.sample
        if sample is None or now - sample.at > STALE_AFTER_INTERVALS * self._interval_s:
            return None
        return sample

    def autoscaling_stats(self) -> dict[str, float]:
        """What the queue-aware policy (:mod:`rabbit_serve.autoscaling`) reads of this
        replica. ``queue_ready`` is left out while the sample is stale."""
        now = time.monotonic()
        stats = {
            "held": float(self._held()),
            "classified_per_s": self._classified.rate(now),
        }
        if (sample := self.fresh_sample(now)) is not None:
            stats["queue_ready"] = float(sample.ready)
        return stats

    async def run(self, connection: Callable[[], AbstractRobustConnection | None]) -> None:
        """Sample until cancelled; a failed sample is logged once per failure streak."""
        failing = False
        while True:
            current = connection()
            if current is not None and not current.is_closed:
                try:
                    self.sample = await sample_queue(current, self._queue)
                    failing = False
                except Exception as exc:
                    if not failing:
                        logger.warning("could not sample queue %s: %r", self._queue, exc)
                    failing = True
            self._export()
            await asyncio.sleep(self._interval_s)

    def _export(self) -> None:
        if self._metrics is None:
            return
        self._metrics.unacked.set(self._held())
        if (sample := self.fresh_sample(time.monotonic())) is not None:
            # Tags per call: Serve's metrics reserve set_default_tags for their own.
            self._metrics.ready.set(sample.ready, tags=self._metrics.tags)
            self._metrics.consumers.set(sample.consumers, tags=self._metrics.tags)


class _RayMetrics:
    def __init__(self, queue: str) -> None:
        from ray.serve import metrics

        self.tags = {"queue": queue}
        self.ready = metrics.Gauge(
            "rabbit_serve_queue_messages_ready",
            description="Ready messages in the request queue, as a consumer last sampled "
            "it (every consumer samples: take the max over replicas).",
            tag_keys=("queue",),
        )
        self.consumers = metrics.Gauge(
            "rabbit_serve_queue_consumers",
            description="Consumers of the request queue, from the same sample.",
            tag_keys=("queue",),
        )
        self.unacked = metrics.Gauge(
            "rabbit_serve_consumer_unacked",
            description="Request deliveries this consumer replica holds unacked (forming a "
            "batch or in a batch in flight); the sum over replicas is the queue's unacked.",
        )
