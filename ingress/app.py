"""The HTTP producer as a Ray Serve deployment: wiring only.

Each replica owns a :class:`~ingress.producer.Producer` (its broker connection and
reply queue), the :class:`~ingress.pending.PendingResults` its requests wait on, and
the :class:`~ingress.service.IngressService` the routes in :mod:`ingress.api` call.
"""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.ledger import LedgerClient
from ingress.api import create_app
from ingress.health import ClassifierProbe
from ingress.pending import PendingResults
from ingress.producer import Producer
from ingress.service import IngressService
from rabbit_serve.settings import Settings

logger = logging.getLogger("rabbit_serve.ingress")

app = create_app()


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=512,
    # Past this many waiting in Serve's own queue, the proxy answers 503 at once
    # instead of holding more requests in memory.
    max_queued_requests=1024,
    health_check_period_s=5,
)
@serve.ingress(app)
class Ingress:
    async def __init__(
        self,
        settings: Settings,
        classifier: DeploymentHandle,
        consumers: DeploymentHandle | None = None,
        ledger: DeploymentHandle | None = None,
    ) -> None:
        # Held so that Serve deploys the consumer pool with this application.
        self._consumers = consumers
        pending = PendingResults()
        context = serve.get_replica_context()
        owner = f"{context.app_name}.{context.replica_id.unique_id}"
        self._producer = Producer(settings, owner, pending.resolve)
        await self._producer.start()
        # ingress.service.current_service finds it here for every request.
        self.service = IngressService(
            settings,
            self._producer,
            pending,
            ClassifierProbe(classifier.info.remote),
            LedgerClient(ledger) if ledger is not None else None,
        )
        logger.info("ingress ready; replies on %s", self._producer.reply_queue)

    async def __del__(self) -> None:
        await self._producer.close()
