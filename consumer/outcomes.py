"""What became of each message a consumer took, counted once, and the consumer's metrics.

Every message taken from one of the consumer's three queues (requests, dead letters,
webhook outbox) is counted exactly once, at its final state there: an :class:`Outcome`.
A message on its way round again (requeued, redelivered, its hand-back failed) is not
at a final state; that is counted apart, as :class:`Rework`, so the outcomes add up
to the messages and the rework says how much was done twice.

A request answered by webhook is two messages: the request (``webhook_queued`` once its
result is confirmed in the outbox) and its outbox entry (``webhook_delivered`` or
``webhook_failed``). A request the broker gave up on is counted once, by the
dead-letter queue (``dead_lettered``), not by its deliveries before that.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import Any

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
QUEUE_WAIT_MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]


class Outcome(str, Enum):
    """The final state of one message (tag ``outcome`` of ``rabbit_serve_consumer_messages``)."""

    # Request queue.
    ANSWERED = "answered"  # result confirmed in its ingress replica's reply queue, then acked
    WEBHOOK_QUEUED = "webhook_queued"  # result confirmed in the webhook outbox, then acked
    EXPIRED = "expired"  # its client already had its 504: acked unprocessed
    MALFORMED = "malformed"  # can never be processed: rejected (or acked, off the request queue)
    # Its result had nowhere to go (its ingress replica, and so its reply queue, is gone):
    # the broker returned it, and the request was acked.
    UNROUTABLE = "unroutable"
    # The classifier failed on it alone while the rest of its batch succeeded (it crashed
    # or hung the replica, say): answered with a 422 and acked, so it is not retried.
    POISON = "poison"
    # Dead-letter queue: the broker gave up on it; its client was answered with a 503.
    DEAD_LETTERED = "dead_lettered"
    # Webhook outbox.
    WEBHOOK_DELIVERED = "webhook_delivered"  # the receiver answered 2xx
    # Refused, or the policy's attempts spent: rejected to the webhook dead-letter queue.
    WEBHOOK_FAILED = "webhook_failed"


class Rework(str, Enum):
    """A delivery that is not a final state (tag ``kind`` of ``rabbit_serve_consumer_rework``)."""

    REDELIVERED = "redelivered"  # the broker flagged the delivery as a redelivery
    REQUEUED = "requeued"  # handed back to its queue: a classifier failure, or a guard
    HANDBACK_FAILED = "handback_failed"  # the result was not confirmed: not acked
    DUPLICATE = "duplicate"  # redelivered after its result was handed back: acked, not redone
    # Its channel closed before it was settled (the consumer's connection dropped): the
    # broker delivers it again, and that delivery's outcome is the one counted.
    STALE = "stale"


class Tally:
    """Counts outcomes, rework and batch sizes; with ``export``, also as Ray metrics
    (Prometheus through Ray's metrics export), which exist only inside a Ray worker."""

    def __init__(self, *, export: bool = False) -> None:
        self.outcomes: Counter[Outcome] = Counter()
        self.rework: Counter[Rework] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self._metrics: _RayMetrics | None = _RayMetrics() if export else None

    def outcome(self, outcome: Outcome, n: int = 1) -> None:
        self.outcomes[outcome] += n
        if self._metrics is not None:
            self._metrics.messages.inc(n, tags={"outcome": outcome.value})

    def again(self, kind: Rework, n: int = 1) -> None:
        self.rework[kind] += n
        if self._metrics is not None:
            self._metrics.rework.inc(n, tags={"kind": kind.value})

    def batch(self, size: int) -> None:
        self.batch_sizes[size] += 1
        if self._metrics is not None:
            self._metrics.batch_size.observe(size)

    def queue_wait(self, ms: float) -> None:
        if self._metrics is not None:
            self._metrics.queue_wait_ms.observe(ms)

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": {o.value: n for o, n in self.outcomes.items()},
            "rework": {k.value: n for k, n in self.rework.items()},
            "batch_sizes": dict(self.batch_sizes),
        }


class _RayMetrics:
    def __init__(self) -> None:
        from ray.serve import metrics

        self.messages = metrics.Counter(
            "rabbit_serve_consumer_messages",
            description="Messages taken by the consumer, once each, by final outcome.",
            tag_keys=("outcome",),
        )
        self.rework = metrics.Counter(
            "rabbit_serve_consumer_rework",
            description="Deliveries that were not final: requeued, redelivered, not handed back.",
            tag_keys=("kind",),
        )
        self.batch_size = metrics.Histogram(
            "rabbit_serve_batch_size",
            description="Images per classifier call.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.queue_wait_ms = metrics.Histogram(
            "rabbit_serve_queue_wait_ms",
            description="Milliseconds from publish to consumer receipt.",
            boundaries=QUEUE_WAIT_MS_BUCKETS,
        )
