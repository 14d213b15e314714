"""In-memory stand-ins for the broker seam (:mod:`rabbit_serve.transport`), so the
consumer's rules are tested without RabbitMQ or Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import ActorDiedError, RayTaskError

from rabbit_serve.messages import ClassifyTask, ErrorInfo, encode_task
from rabbit_serve.transport import Outbound, PublishFailed, SettleFailed


class FakeInbound:
    """One delivery that records how it was settled, and fails the test if settled twice."""

    def __init__(
        self,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        reply_to: str | None = None,
        *,
        redelivered: bool = False,
        settle_fails: bool = False,
        stale: bool = False,
    ) -> None:
        self.body = body
        self.headers: Mapping[str, Any] = dict(headers or {})
        self.message_id = message_id
        self.reply_to = reply_to
        self.redelivered = redelivered
        self.settle_fails = settle_fails
        # Settable: a test closes the delivering channel midway.
        self.stale = stale
        self.settled_as: str | None = None

    @classmethod
    def of(cls, task: ClassifyTask, **kwargs: Any) -> FakeInbound:
        message = encode_task(task)
        return cls(message.body, message.headers, message.message_id, message.reply_to, **kwargs)

    @property
    def settled(self) -> bool:
        return self.settled_as is not None

    async def ack(self) -> None:
        self._settle("ack")

    async def requeue(self) -> None:
        self._settle("requeue")

    async def reject(self) -> None:
        self._settle("reject")

    def _settle(self, how: str) -> None:
        assert self.settled_as is None, f"{self.message_id} settled twice: {self.settled_as}, {how}"
        if self.settle_fails:
            raise SettleFailed("channel closed")
        self.settled_as = how

    def __repr__(self) -> str:
        return f"FakeInbound({self.message_id!r}, {self.settled_as})"


@dataclass
class FakePublisher:
    """Confirms at once (``mode="confirm"``), fails (``"fail"``), or waits until
    :meth:`release` (``"hang"``; released, it confirms). ``fail_to`` fails only those
    routing keys."""

    mode: str = "confirm"
    fail_to: set[str] = field(default_factory=set)
    published: list[tuple[Outbound, str]] = field(default_factory=list)
    attempts: int = 0
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, message: Outbound, routing_key: str) -> None:
        self.attempts += 1
        if self.mode == "fail" or routing_key in self.fail_to:
            raise PublishFailed(f"no confirm from the fake broker for {routing_key}")
        if self.mode == "hang":
            await self._released.wait()
        self.published.append((message, routing_key))

    def release(self) -> None:
        self._released.set()

    def to(self, routing_key: str) -> list[Outbound]:
        return [m for m, key in self.published if key == routing_key]


def predictions(top_k: int, label: str = "espresso") -> list[dict[str, Any]]:
    return [{"class_id": i, "label": f"{label}{i}", "score": 1.0 / (i + 1)} for i in range(top_k)]


@dataclass
class FakeClassifier:
    """A stand-in for the classifier's ``classify(images, top_ks, alone)``: answers each
    image with top-k predictions (or ``ErrorInfo`` for images listed in ``bad``), or
    raises ``fail_with`` for the first ``fail_times`` calls; records every call."""

    bad: frozenset[bytes] = frozenset()
    fail_with: Exception | None = None
    fail_times: int = 0
    delay: float = 0.0
    gate: asyncio.Event | None = None
    calls: list[tuple[list[bytes], list[int], bool]] = field(default_factory=list)

    async def __call__(
        self, images: list[bytes], top_ks: list[int], alone: bool
    ) -> Sequence[list[Any] | ErrorInfo]:
        self.calls.append((images, top_ks, alone))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None and len(self.calls) <= self.fail_times:
            raise self.fail_with
        return [
            ErrorInfo(422, "undecodable image") if image in self.bad else predictions(k)
            for image, k in zip(images, top_ks, strict=True)
        ]


def task_error(cause: Exception) -> RayTaskError:
    """What awaiting a Serve call raises when the replica's own code raised ``cause``."""
    error = RayTaskError("classify", "Traceback: ...", cause, proctitle="t", pid=1, ip="127.0.0.1")
    return error.as_instanceof_cause()


class FakeLedger:
    """The ledger deployment's async methods over an in-memory
    :class:`rabbit_serve.ledger.Ledger`, on a clock the test moves (``now``). ``fail``:
    every call raises (the replica is restarting); ``hang``: every call waits forever."""

    def __init__(self, *, window: float = 3600.0) -> None:
        from rabbit_serve.ledger import Ledger

        self.book = Ledger(webhook_window=window, idempotency_window=window)
        self.now = 0.0
        self.fail = False
        self.hang = False
        self.calls: list[str] = []

    async def _call(self, name: str, *args: Any) -> Any:
        self.calls.append(name)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise ConnectionError("ledger replica restarting")
        return getattr(self.book, name)(*args, self.now)

    async def webhook_attempt(self, task_id: str) -> Any:
        return await self._call("webhook_attempt", task_id)

    async def webhook_delivered(self, task_id: str) -> None:
        await self._call("webhook_delivered", task_id)

    async def webhook_record(self, task_id: str) -> Any:
        return await self._call("webhook_record", task_id)

    async def claim(self, key: str, fingerprint: str, proposal: dict[str, Any]) -> Any:
        return await self._call("claim", key, fingerprint, proposal)

    async def complete(self, key: str, record: dict[str, Any]) -> None:
        await self._call("complete", key, record)

    async def release(self, key: str) -> None:
        await self._call("release", key)


@dataclass
class PoisonClassifier(FakeClassifier):
    """A :class:`FakeClassifier` whose call fails whenever it holds a ``poison`` image
    (raising ``poison_error``, by default a replica crash), or never returns while it
    holds a ``hang`` image."""

    poison: frozenset[bytes] = frozenset()
    poison_error: Exception | None = None
    hang: frozenset[bytes] = frozenset()

    async def __call__(
        self, images: list[bytes], top_ks: list[int], alone: bool
    ) -> Sequence[list[Any] | ErrorInfo]:
        if self.hang & set(images):
            self.calls.append((images, top_ks, alone))
            await asyncio.Event().wait()
        if self.poison & set(images):
            self.calls.append((images, top_ks, alone))
            raise self.poison_error or ActorDiedError()
        return await super().__call__(images, top_ks, alone)
