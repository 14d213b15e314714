"""The ledger as a Ray Serve deployment: one replica, so every consumer and ingress
replica reads and writes the same memory (:class:`rabbit_serve.ledger.Ledger`).

Its state is that replica's memory, nothing more: if the replica restarts, what it
knew is gone, and until the window refills a redelivered webhook result may be POSTed
again and a retried Idempotency-Key is taken as new. Its callers treat it as optional:
a consumer that cannot reach it still POSTs (at least once), an ingress answers a
request that carries a key with 503. One replica's event loop runs each call to the
end before the next (none awaits), so no two callers interleave inside one.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from rabbit_serve.ledger import Claim, WebhookRecord
from rabbit_serve.ledger import Ledger as LedgerBook
from rabbit_serve.settings import Settings

# What an unanswered Idempotency-Key claim may take beyond TIMEOUT + PUBLISH_TIMEOUT
# (its request's own bound) before a retry may take it over: its ingress replica died.
CLAIM_LEASE_SLACK_S = 5.0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class Ledger:
    def __init__(self, settings: Settings) -> None:
        self._book = LedgerBook(
            webhook_window=settings.webhook_dedup_window,
            idempotency_window=settings.idempotency_window,
            claim_lease=settings.timeout + settings.publish_timeout + CLAIM_LEASE_SLACK_S,
        )

    async def webhook_attempt(self, task_id: str) -> WebhookRecord:
        return self._book.webhook_attempt(task_id, time.time())

    async def webhook_delivered(self, task_id: str) -> None:
        self._book.webhook_delivered(task_id, time.time())

    async def webhook_record(self, task_id: str) -> WebhookRecord:
        return self._book.webhook_record(task_id, time.time())

    async def claim(self, key: str, fingerprint: str, proposal: dict[str, Any]) -> Claim:
        return self._book.claim(key, fingerprint, proposal, time.time())

    async def complete(self, key: str, record: dict[str, Any]) -> None:
        self._book.complete(key, record, time.time())

    async def release(self, key: str) -> None:
        self._book.release(key, time.time())

    def sizes(self) -> dict[str, int]:
        return self._book.sizes()


class LedgerClient:
    """A :class:`Ledger` deployment's handle behind plain async methods, the shape the
    consumer's :class:`consumer.outbox.WebhookLedger` and the ingress's ledger protocol
    expect (a handle's ``.remote()`` returns a response, not a coroutine)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def webhook_attempt(self, task_id: str) -> WebhookRecord:
        return await self._handle.webhook_attempt.remote(task_id)

    async def webhook_delivered(self, task_id: str) -> None:
        await self._handle.webhook_delivered.remote(task_id)

    async def webhook_record(self, task_id: str) -> WebhookRecord:
        return await self._handle.webhook_record.remote(task_id)

    async def claim(self, key: str, fingerprint: str, proposal: dict[str, Any]) -> Claim:
        return await self._handle.claim.remote(key, fingerprint, proposal)

    async def complete(self, key: str, record: dict[str, Any]) -> None:
        await self._handle.complete.remote(key, record)

    async def release(self, key: str) -> None:
        await self._handle.release.remote(key)
