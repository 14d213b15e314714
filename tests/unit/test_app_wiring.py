"""deployments.app.wire: the graph Serve deploys, checked without starting Ray."""

from __future__ import annotations

from consumer.worker import BatchingConsumer
from deployments.app import build_app, wire
from deployments.classifier import Classifier
from ingress.app import Ingress
from rabbit_serve.settings import Settings


def graph(app):
    """(ingress, classifier, consumers or None) as the deployments Serve will run."""
    ingress = app._bound_deployment
    _, classifier, consumers, _ledger = ingress.init_args
    return (
        ingress,
        classifier._bound_deployment,
        consumers and consumers._bound_deployment,
    )


def test_options_left_out_keep_the_decorators():
    ingress, classifier, consumers = graph(wire(Settings()))
    assert ingress.name == Ingress.name and ingress.num_replicas == Ingress.num_replicas
    assert classifier.name == Classifier.name
    assert classifier.num_replicas == Classifier.num_replicas
    assert classifier.ray_actor_options == Classifier.ray_actor_options
    assert consumers.name == BatchingConsumer.name
    assert consumers.ray_actor_options == BatchingConsumer.ray_actor_options
    # The consumers call the same classifier application as the ingress.
    assert consumers.init_args[1] is ingress.init_args[1]


def test_replicas_and_gpu_options_are_applied_on_top():
    settings = Settings(num_consumers=2)
    ingress, classifier, consumers = graph(
        wire(
            settings,
            ingress_replicas=3,
            classifier_replicas=2,
            classifier_actor_options={"num_gpus": 1},
        )
    )
    assert (ingress.num_replicas, classifier.num_replicas, consumers.num_replicas) == (3, 2, 2)
    # Asking for a GPU keeps the decorator's CPU share.
    assert classifier.ray_actor_options == {**Classifier.ray_actor_options, "num_gpus": 1}
    assert ingress.init_args[0] is settings and classifier.init_args[0] is settings


def test_no_consumers_deploys_none():
    _, _, consumers = graph(build_app({"NUM_CONSUMERS": 0}))
    assert consumers is None


def test_consumers_and_ingress_share_one_ledger():
    app = wire(Settings(num_consumers=2))
    ingress = app._bound_deployment
    ledger = ingress.init_args[3]
    consumers = ingress.init_args[2]._bound_deployment
    assert ledger._bound_deployment.name == "Ledger"
    assert ledger._bound_deployment.num_replicas == 1
    assert consumers.init_args[2] is ledger
