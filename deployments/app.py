"""The application: ingress -> RabbitMQ -> consumer pool -> classifier, wired for Serve.

``serve run serve_config.yaml`` and ``serve deploy serve_config.yaml`` call
:func:`build_app` with the config's ``args``; those override the environment,
and the resulting settings object is handed to every deployment, so all
replicas on all nodes share one configuration.

:func:`build_app` refuses to build an application that would serve ``/v1`` to anyone:
Serve's HTTP proxy on an address other than loopback, no API key configured, and no
explicit ``ALLOW_ANONYMOUS``. ``serve run`` and ``serve deploy`` of a config file build
the app on the cluster, after Serve has started with the config's ``http_options``, so
the proxy host is asked of Serve's controller, the authority on where it listens.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ray.serve import Application

from consumer.worker import BatchingConsumer
from deployments.classifier import Classifier
from deployments.ledger import Ledger
from ingress.app import Ingress
from rabbit_serve.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class AnonymousServiceRefused(RuntimeError):
    """The app would serve anyone who can reach the proxy; the message says the ways out."""


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder; ``args`` use the setting names, e.g. ``MAX_BATCH_SIZE``.

    Raises :class:`AnonymousServiceRefused` (see :func:`anonymous_refusal`)."""
    settings = Settings.from_overrides(args)
    if not (settings.api_keys or settings.api_keys_file or settings.allow_anonymous):
        # Only then is the host needed: with keys nothing is asked of the cluster.
        if refusal := anonymous_refusal(proxy_host(), settings):
            raise AnonymousServiceRefused(refusal)
    return wire(settings)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ``[::1]`` or v4-mapped) or a name for them; a wildcard
    (0.0.0.0, ::) is every interface, and any other name may resolve anywhere."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def anonymous_refusal(host: str | None, settings: Settings) -> str | None:
    """Why an app with ``settings`` must not start behind a proxy on ``host``, or ``None``.

    ``host`` ``None``: Serve runs no HTTP proxy, so nothing is served over the network.
    """
    if settings.api_keys or settings.api_keys_file or settings.allow_anonymous:
        return None
    if host is None or is_loopback(host):
        return None
    return (
        f"refusing to start: Serve's HTTP proxy listens on {host!r}, which is not loopback, "
        "and no API key is configured, so anyone who can reach it could classify images "
        "and send webhooks. Set API_KEYS (comma-separated keys), or API_KEYS_FILE (a file "
        "of keys, one per line), or ALLOW_ANONYMOUS=true to serve without keys on purpose; "
        "or bind http_options.host to 127.0.0.1"
    )


def proxy_host(timeout_s: float = 30.0) -> str | None:
    """Where Serve's HTTP proxy listens: the running controller's HTTP options; with no
    Serve running yet, the host ``serve.start`` would take by default."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.config import HTTPOptions

    if ray.is_initialized():
        try:
            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            pass  # no Serve on this cluster yet
        else:
            options = ray.get(controller.get_http_config.remote(), timeout=timeout_s)
            return options.host
    return HTTPOptions().host


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
