"""One ingress replica's work behind the HTTP routes: publish a request, wait for its results.

The routes find the replica's :class:`IngressService` through :func:`current_service`
(a FastAPI dependency), so they are tested with a fake one and no Serve, broker or Ray.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Protocol

from fastapi import Depends

from ingress.health import ClassifierProbe
from ingress.idempotency import (
    KEY_HEADER,
    LEDGER_WAIT_S,
    IdempotencyStore,
    ledger_key,
    run_keyed,
)
from ingress.keys import KeyRing
from ingress.limits import ByteBudget, KeyLimits
from ingress.parsing import ParsedRequest, request_start
from ingress.pending import PendingResults
from rabbit_serve import render
from rabbit_serve.errors import ClientError, ServiceUnavailable
from rabbit_serve.messages import ClassifyTask, encode_bundle, encode_task
from rabbit_serve.render import Rendered
from rabbit_serve.settings import Settings
from rabbit_serve.transport import Outbound, PublishBlocked, PublishFailed, PublishRefused
from rabbit_serve.webhook_security import WebhookRefused, resolve

# Said in a 503 whose work the broker may have queued after all.
MAYBE_QUEUED = f"the broker may have queued it: retry with the same {KEY_HEADER}"


class TaskPublisher(Protocol):
    """What the service needs from :class:`ingress.producer.Producer`."""

    reply_queue: str
    malformed_results: int

    @property
    def ready(self) -> bool: ...

    def problem(self) -> str | None:
        """Why no work can be taken now (not connected, an alarm), or ``None``."""
        ...

    async def publish(self, message: Outbound) -> None:
        """Returns once the broker confirmed; raises :class:`ServiceUnavailable`."""
        ...


def unavailable(exc: ServiceUnavailable) -> Rendered:
    """The 503 for a publish the broker did not confirm. Nothing of the request is queued,
    unless the publish went out and its confirm never came (a timeout, a connection lost
    mid-publish): the broker may have it, and the answer says so."""
    cause = exc.__cause__
    if isinstance(cause, PublishFailed) and not isinstance(cause, (PublishRefused, PublishBlocked)):
        return render.unavailable(f"{exc}; {MAYBE_QUEUED}")
    return render.unavailable(str(exc))


class IngressService:
    """``idempotency``: the shared ledger of ``Idempotency-Key`` claims (production always
    has one); ``None``: a request with the header is answered 503 (nothing queued), a
    request without it is served as ever. ``ledger_wait``: seconds a ledger call may take."""

    def __init__(
        self,
        settings: Settings,
        producer: TaskPublisher,
        pending: PendingResults,
        probe: ClassifierProbe,
        idempotency: IdempotencyStore | None = None,
        *,
        ledger_wait: float = LEDGER_WAIT_S,
    ) -> None:
        self.settings = settings
        self._producer = producer
        self._pending = pending
        self._probe = probe
        self._idempotency = idempotency
        self._ledger_wait = ledger_wait
        # Who may come in and how much (the routes use them): per replica, like all of this.
        self.keys = KeyRing(settings.api_keys, settings.api_keys_file)
        self.limits = KeyLimits(
            settings.key_rate_limit, settings.key_rate_burst, settings.key_max_concurrent
        )
        self.budget = ByteBudget(settings.max_inflight_bytes)

    async def classify(
        self,
        parsed: ParsedRequest,
        request_start_header: str | None,
        started: float,
        idempotency_key: str | None = None,
        scope: str = "",
    ) -> Rendered:
        """Publish the request's images (one message, or one bundle of several), then
        answer: with the results, at once with 202 for a webhook, 503 if the broker did
        not take them, 504 past the deadline. ``started`` is ``time.perf_counter()`` when
        the request arrived. ``idempotency_key`` (checked by the route) and ``scope`` (who
        sent it): see :mod:`ingress.idempotency`; without a key, no ledger call at all."""
        if parsed.callback_url:
            await self._check_webhook(parsed.callback_url)

        async def work(request_id: str) -> tuple[Rendered, bool]:
            return await self._classify(parsed, request_start_header, started, request_id)

        if idempotency_key is None:
            rendered, _ = await work(uuid.uuid4().hex)
            return rendered
        if self._idempotency is None:
            return render.unavailable(f"{KEY_HEADER} is not available: no ledger is configured")
        key = ledger_key(idempotency_key, scope)
        return await run_keyed(self._idempotency, key, parsed, work, wait=self._ledger_wait)

    async def _classify(
        self,
        parsed: ParsedRequest,
        request_start_header: str | None,
        started: float,
        request_id: str,
    ) -> tuple[Rendered, bool]:
        """The answer, and whether a retry may do the work again (see ``Work``)."""
        sent_at = time.time()
        if parsed.callback_url:
            # A webhook job has its own lifetime, not TIMEOUT: its client is not waiting.
            deadline = sent_at + self.settings.webhook_job_ttl
        else:
            deadline = request_start(request_start_header, sent_at) + self.settings.timeout
            if deadline <= sent_at:
                # It already waited TIMEOUT in front of us: nobody is waiting for the answer.
                return render.timed_out(self.settings.timeout), True
        reply_to = None if parsed.callback_url else self._producer.reply_queue
        pixels = parsed.pixels or [0] * len(parsed.images)
        tasks = [
            ClassifyTask(
                id=f"{request_id}-{i}",
                request_id=request_id,
                index=i,
                image=image,
                top_k=parsed.top_k,
                sent_at=sent_at,
                deadline=deadline,
                reply_to=reply_to,
                callback_url=parsed.callback_url,
                pixels=count,
            )
            for i, (image, count) in enumerate(zip(parsed.images, pixels, strict=True))
        ]
        if parsed.callback_url:
            refused = await self._publish(tasks)
            if refused is not None:
                return refused, True
            body = render.accepted(request_id, parsed.callback_url, [t.id for t in tasks])
            return Rendered(202, body), False
        return await self._wait_for_results(request_id, parsed.multi, tasks, started)

    async def _wait_for_results(
        self, request_id: str, multi: bool, tasks: list[ClassifyTask], started: float
    ) -> tuple[Rendered, bool]:
        # Registered before publishing, so a result can never arrive unexpected.
        futures = [self._pending.expect(t.id) for t in tasks]
        try:
            refused = await self._publish(tasks)
            if refused is not None:
                return refused, True
            remaining = tasks[0].deadline - time.time()
            await asyncio.wait(futures, timeout=max(remaining, 0))
        finally:
            # Also runs when the client disconnects and Serve cancels the handler:
            # nothing stays registered, and a late result is counted, not kept.
            for task in tasks:
                self._pending.forget(task.id)
        results = [f.result() if f.done() and not f.cancelled() else None for f in futures]
        rendered = render.classified(
            request_id,
            self.settings.model_name,
            results,
            multi=multi,
            timeout=self.settings.timeout,
            total_ms=(time.perf_counter() - started) * 1000,
        )
        return rendered, False

    async def _publish(self, tasks: list[ClassifyTask]) -> Rendered | None:
        """``None`` once the broker confirmed; else the 503 to answer, which says in
        ``Server-Timing`` how long the publish took (a lost confirm: PUBLISH_TIMEOUT)."""
        # Several images go as one bundle: one confirm queues all of them or none.
        message = encode_task(tasks[0]) if len(tasks) == 1 else encode_bundle(tasks)
        started = time.perf_counter()
        try:
            await self._producer.publish(message)
        except ServiceUnavailable as exc:
            return render.timed(unavailable(exc), "publish", started)
        return None

    async def _check_webhook(self, url: str) -> None:
        """Resolve the webhook host now, so a refused destination is a 422, not a silent
        drop later (the consumer checks again when it delivers)."""
        try:
            await resolve(
                url,
                self.settings.webhook_allowed_hosts,
                self.settings.webhook_allow_private,
                self.settings.webhook_allowed_ports,
            )
        except WebhookRefused as exc:
            raise ClientError(422, str(exc)) from None

    async def health(self) -> Rendered:
        """200 only when the broker takes publishes and the classifier answers; a broker
        alarm (publishes blocked) is a 503 that says so."""
        broker_problem = self._producer.problem()
        broker = broker_problem is None
        _, classifier_reason = await self._probe.check()
        reasons = [] if broker_problem is None else [broker_problem]
        if classifier_reason:
            reasons.append(classifier_reason)
        return render.health(broker, classifier_reason is None, "; ".join(reasons))

    async def model(self) -> Rendered:
        info, reason = await self._probe.check()
        if info is None:
            return Rendered(503, render.error(f"classifier is not ready: {reason}"))
        return Rendered(200, render.model_info(info))

    def stats(self) -> Rendered:
        return Rendered(
            200,
            render.stats(
                pending=len(self._pending),
                delivered=self._pending.delivered,
                late_results=self._pending.late,
                malformed_results=self._producer.malformed_results,
                broker=self._producer.ready,
                reply_queue=self._producer.reply_queue,
            ),
        )


async def current_service() -> IngressService:
    """The serving replica's service (Serve's replica context); tests override this
    dependency with ``app.dependency_overrides``."""
    from ray import serve

    return serve.get_replica_context().servable_object.service


# A route's parameter ``service: Service`` receives the replica's service.
Service = Annotated[IngressService, Depends(current_service)]
