"""The ledger: what every consumer and ingress replica must agree on, in one memory.

Two kinds of entries, both keyed by a string and both forgotten after a window:

- webhook records (key: a task id, see :func:`webhook_key`): how many POSTs of its
  result were started, and whether one was answered 2xx, so a result redelivered to
  another consumer (or re-run after a crash) is neither posted again once delivered
  nor given a fresh set of attempts;
- idempotency claims (key: a client's ``Idempotency-Key``): the first request with a
  key stores what it will do (its ids) and, once answered, the answer, so a retry gets
  the same ids or the same answer and nothing is queued twice.

This module is the rule only: no I/O, and the clock is passed in, so its tests need
neither Ray nor time to pass. :mod:`deployments.ledger` serves one instance of it.

Memory is bounded twice: an entry is forgotten ``window`` seconds after it was last
written, and past ``max_entries`` per kind the least recently written go first. An
entry forgotten early only weakens a guarantee (a second POST, a second enqueue), it
never makes one wrong answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

# Set by `python -m rabbit_serve.webhook_dlq replay` on an outbox entry it moves back:
# how many times it was replayed. A replayed result gets a fresh attempt budget.
H_REPLAYS = "rs-webhook-replays"

ClaimState = Literal["fresh", "in_progress", "done", "mismatch"]

V = TypeVar("V")


@dataclass(frozen=True)
class WebhookRecord:
    """POSTs started for one result, and whether one was answered 2xx."""

    attempts: int = 0
    delivered: bool = False


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`.

    ``fresh``: the key was free; ``record`` is what is now stored as in progress (the
    proposal, or what an earlier claimant left when its lease ran out: the caller must
    use ``record``'s ids, not its own). ``in_progress``: another request with the key is
    still running. ``done``: ``record`` is its stored answer. ``mismatch``: the key was
    used with another request (another fingerprint).
    """

    state: ClaimState
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Entry(Generic[V]):
    value: V
    written: float


class _Expiring(Generic[V]):
    """Entries in the order they were last written, so the oldest are at the front and
    expiry and the cap only ever look there."""

    def __init__(self, window: float, cap: int) -> None:
        self._window = window
        self._cap = cap
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> V | None:
        self.expire(now)
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def put(self, key: str, value: V, now: float) -> None:
        self._entries[key] = _Entry(value, now)
        self._entries.move_to_end(key)
        self.expire(now)
        while len(self._entries) > self._cap:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def expire(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.written < self._window:
                return
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class _Key:
    fingerprint: str
    done: bool
    record: Mapping[str, Any]
    claimed: float


def webhook_key(task_id: str, replays: int = 0) -> str:
    """The ledger key of one result: a replayed dead letter is a new delivery, with its
    own attempts, under its own key."""
    return task_id if replays <= 0 else f"{task_id}#replay{replays}"


class Ledger:
    """``webhook_window``: seconds a webhook record is kept after its last attempt or
    delivery (``WEBHOOK_DEDUP_WINDOW``); ``idempotency_window``: seconds a key is kept
    after its claim or answer (``IDEMPOTENCY_WINDOW``). ``claim_lease``: seconds an
    unanswered claim holds its key (its claimant may have died); after it, the next
    claim takes it over, with the same ids. ``None``: as long as the window."""

    def __init__(
        self,
        *,
        webhook_window: float,
        idempotency_window: float,
        max_entries: int = 200_000,
        claim_lease: float | None = None,
    ) -> None:
        if webhook_window <= 0 or idempotency_window <= 0:
            raise ValueError("windows must be > 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._webhooks: _Expiring[WebhookRecord] = _Expiring(webhook_window, max_entries)
        self._keys: _Expiring[_Key] = _Expiring(idempotency_window, max_entries)
        self._lease = idempotency_window if claim_lease is None else claim_lease

    def sizes(self) -> dict[str, int]:
        return {"webhooks": len(self._webhooks), "idempotency_keys": len(self._keys)}

    # -- webhooks ------------------------------------------------------------------------

    def webhook_attempt(self, task_id: str, now: float) -> WebhookRecord:
        """The record before this attempt; the attempt is counted unless already
        delivered (the caller then does not POST)."""
        record = self._webhooks.get(task_id, now) or WebhookRecord()
        if not record.delivered:
            self._webhooks.put(task_id, WebhookRecord(record.attempts + 1, False), now)
        return record

    def webhook_delivered(self, task_id: str, now: float) -> None:
        record = self._webhooks.get(task_id, now) or WebhookRecord()
        self._webhooks.put(task_id, WebhookRecord(record.attempts, True), now)

    def webhook_record(self, task_id: str, now: float) -> WebhookRecord:
        return self._webhooks.get(task_id, now) or WebhookRecord()

    # -- idempotency keys ----------------------------------------------------------------

    def claim(self, key: str, fingerprint: str, proposal: dict[str, Any], now: float) -> Claim:
        held = self._keys.get(key, now)
        if held is not None and held.fingerprint != fingerprint:
            return Claim("mismatch")
        if held is not None and held.done:
            return Claim("done", dict(held.record))
        if held is not None and now - held.claimed < self._lease:
            return Claim("in_progress", dict(held.record))
        # Free, or its claimant's lease ran out: what it proposed may already be queued,
        # so its ids are kept (the webhook ledger and the receivers then see the same ids).
        record = dict(proposal if held is None else held.record)
        self._keys.put(key, _Key(fingerprint, False, record, now), now)
        return Claim("fresh", dict(record))

    def complete(self, key: str, record: dict[str, Any], now: float) -> None:
        """Store the answer: later claims with the key get ``done`` and ``record``. The
        first answer stays; a key already forgotten (window, cap) stays forgotten, as no
        fingerprint is left to check a retry against."""
        held = self._keys.get(key, now)
        if held is None or held.done:
            return
        self._keys.put(key, _Key(held.fingerprint, True, dict(record), held.claimed), now)

    def release(self, key: str, now: float) -> None:
        """Forget the key: nothing was queued, so a retry starts afresh."""
        self._keys.expire(now)
        self._keys.pop(key)
