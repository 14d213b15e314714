"""The application: ingress -> RabbitMQ -> consumer pool -> classifier, wired for Serve.

``serve run serve_config.yaml`` and ``serve deploy serve_config.yaml`` call
:func:`build_app` with the config's ``args``; those override the environment,
and the resulting settings object is handed to every deployment, so all
replicas on all nodes share one configuration.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from consumer.worker import BatchingConsumer
from deployments.classifier import Classifier
from deployments.ledger import Ledger
from ingress.app import Ingress
from rabbit_serve.settings import Settings


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder; ``args`` use the setting names, e.g. ``MAX_BATCH_SIZE``."""
    return wire(Settings.from_overrides(args))


def wire(
    settings: Settings,
    *,
    ingress_replicas: int | None = None,
    classifier_replicas: int | None = None,
    classifier_actor_options: dict[str, Any] | None = None,
) -> Application:
    """The deployment graph for ``settings``; for ``serve.run`` from Python.

    Options left out keep the ``@serve.deployment`` decorator's (Serve's one replica).
    ``classifier_actor_options`` are merged into the classifier's Ray actor options:
    ``{"num_gpus": 1}`` places each replica on a GPU node. Replica counts and resources
    set in a Serve config file take precedence.
    """
    classifier_options: dict[str, Any] = _replicas(classifier_replicas)
    if classifier_actor_options:
        # .options() replaces the decorator's actor options as a whole: merge, so that
        # asking for a GPU keeps the decorator's num_cpus.
        classifier_options["ray_actor_options"] = {
            **(Classifier.ray_actor_options or {}),
            **classifier_actor_options,
        }
    classifier = Classifier.options(**classifier_options).bind(settings)
    # One shared memory of webhook deliveries and Idempotency-Keys for the application.
    ledger = Ledger.bind(settings)
    consumers = None
    if settings.num_consumers > 0:
        consumers = BatchingConsumer.options(num_replicas=settings.num_consumers).bind(
            settings, classifier, ledger
        )
    return Ingress.options(**_replicas(ingress_replicas)).bind(
        settings, classifier, consumers, ledger
    )


def _replicas(count: int | None) -> dict[str, Any]:
    return {} if count is None else {"num_replicas": count}
