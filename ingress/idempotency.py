"""The ``Idempotency-Key`` header: a retry with the same key gets the same ids, and the
first request's answer, instead of queueing the work again.

The rule (:func:`run_keyed`), around the work of one request:

1. claim the key in the shared ledger (:class:`IdempotencyStore`, one memory for every
   ingress replica) with what this request will do: its request id;
2. ``fresh``: do the work under the claimed request id (task ids follow from it); then
   ``complete`` the key with the answer (status and body; for a webhook, the 202), or
   ``release`` it when the answer is a 503 and the work may be tried again;
3. ``in_progress`` (another request with the key is running): 409 + ``Retry-After: 1``;
4. ``done``: the stored answer again, with ``Idempotent-Replayed: true``;
5. ``mismatch`` (the key came with another request): 422;
6. no answer from the ledger within ``wait`` seconds: 503, and nothing is queued.

The request id is derived from the key and the request's fingerprint, so even after a
release (a 503 that may have queued the work: the publish was not confirmed) a retry
publishes under the same task ids, which the webhook ledger and the ingress deduplicate.

The fingerprint covers the decoded request (images, top_k, callback_url, single or
several), not the raw body: a client's retry of a multipart upload has a new random
boundary, and a JSON body may be re-serialised, yet it is the same request.

Keys are scoped by the API key that sent them (hashed: no secret is stored), so two
clients that pick the same key never see each other's answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from ingress.parsing import ParsedRequest
from rabbit_serve import render
from rabbit_serve.errors import ClientError
from rabbit_serve.ledger import Claim
from rabbit_serve.render import Rendered

logger = logging.getLogger("rabbit_serve.ingress")

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Seconds to wait for the ledger before answering 503 (its replica may be restarting).
LEDGER_WAIT_S = 2.0
# 1 to 255 visible ASCII characters (VCHAR: no spaces, no control characters).
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class IdempotencyStore(Protocol):
    """What the ingress needs from the ledger deployment (``rabbit_serve.ledger.Ledger``'s
    key methods without ``now``). A Serve handle's ``.remote()`` returns a response, not a
    coroutine: wrap it (``deployments.ledger.LedgerClient``)."""

    async def claim(self, key: str, fingerprint: str, proposal: dict[str, Any]) -> Claim: ...

    async def complete(self, key: str, record: dict[str, Any]) -> None: ...

    async def release(self, key: str) -> None: ...


# The work of one request under a request id: its answer, and whether the key may be
# released (nothing was queued, or a retry may queue it again under the same ids).
Work = Callable[[str], Awaitable[tuple[Rendered, bool]]]


def check_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        raise ClientError(
            422, f"{KEY_HEADER} must be 1 to 255 visible ASCII characters (no spaces)"
        )
    return value


def ledger_key(key: str, scope: str) -> str:
    """The key as stored: prefixed with a hash of who sent it (the API key, or "")."""
    return f"{hashlib.sha256(scope.encode()).hexdigest()[:16]}:{key}"


def fingerprint(parsed: ParsedRequest) -> str:
    digest = hashlib.sha256()
    options = [parsed.top_k, parsed.callback_url, parsed.multi, [len(i) for i in parsed.images]]
    digest.update(orjson.dumps(options))
    for image in parsed.images:
        digest.update(image)
    return digest.hexdigest()


def request_id_for(key: str, fingerprint: str) -> str:
    """32 hex digits, like a uuid4's, the same for every retry of the same request."""
    return hashlib.sha256(f"{key}\0{fingerprint}".encode()).hexdigest()[:32]


def replay(record: dict[str, Any]) -> Rendered:
    return Rendered(int(record["status"]), str(record["body"]).encode(), {REPLAYED_HEADER: "true"})


async def _bounded(call: Awaitable[Any], wait: float) -> Any:
    return await asyncio.wait_for(call, timeout=wait)


async def run_keyed(
    store: IdempotencyStore,
    key: str,
    parsed: ParsedRequest,
    work: Work,
    *,
    wait: float = LEDGER_WAIT_S,
) -> Rendered:
    """``key``: as stored (see :func:`ledger_key`)."""
    print_ = fingerprint(parsed)
    proposal = {"request_id": request_id_for(key, print_)}
    try:
        claim = await _bounded(store.claim(key, print_, proposal), wait)
    except Exception as exc:
        logger.warning("idempotency ledger unreachable: %r", exc)
        return render.unavailable(
            f"the {KEY_HEADER} ledger is not reachable; nothing was queued, retry"
        )
    if claim.state == "mismatch":
        raise ClientError(422, f"this {KEY_HEADER} was already used with a different request")
    if claim.state == "in_progress":
        return Rendered(
            409,
            render.error(f"a request with this {KEY_HEADER} is still in progress"),
            {"Retry-After": "1"},
        )
    if claim.state == "done":
        return replay(claim.record)
    request_id = str(claim.record.get("request_id") or proposal["request_id"])
    try:
        rendered, releasable = await work(request_id)
    except asyncio.CancelledError:
        # The client went away: its work may be queued. The claim stays in progress;
        # the ledger's lease hands the same ids to a retry once it runs out.
        raise
    except Exception:
        await _settle(store.release(key), key, wait)
        raise
    if releasable:
        await _settle(store.release(key), key, wait)
    else:
        record = {"request_id": request_id, "status": rendered.status}
        record["body"] = rendered.body.decode()
        await _settle(store.complete(key, record), key, wait)
    return rendered


async def _settle(call: Awaitable[None], key: str, wait: float) -> None:
    try:
        await _bounded(call, wait)
    except Exception as exc:
        # The key stays in progress until the ledger's lease runs out; then a retry
        # takes it over with the same ids.
        logger.warning("could not settle idempotency key %s: %r", key, exc)
