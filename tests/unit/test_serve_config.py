"""Both Serve config files are valid for Ray Serve and speak this project's settings."""

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from consumer.worker import BatchingConsumer
from deployments.classifier import Classifier
from ingress.app import Ingress
from rabbit_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["serve_config.yaml", "serve_config.cluster.yaml"]
DEPLOYMENT_NAMES = {d.name for d in (Ingress, BatchingConsumer, Classifier)}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_config_matches_serves_schema(name):
    schema = ServeDeploySchema.model_validate(load(name))
    (app,) = schema.applications
    assert app.import_path == "deployments.app:build_app"


@pytest.mark.parametrize("name", CONFIGS)
def test_args_are_settings_and_valid(name):
    (app,) = load(name)["applications"]
    fields = {f.upper() for f in Settings.model_fields}
    unknown = set(app["args"]) - fields
    assert not unknown, f"{name}: unknown settings {unknown}"
    Settings.from_overrides(app["args"])  # values must validate too


@pytest.mark.parametrize("name", CONFIGS)
def test_deployment_names_exist(name):
    (app,) = load(name)["applications"]
    assert {d["name"] for d in app["deployments"]} <= DEPLOYMENT_NAMES


def test_local_config_is_loopback_and_cpu_only():
    config = load("serve_config.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    (app,) = config["applications"]
    for deployment in app["deployments"]:
        assert deployment.get("ray_actor_options", {}).get("num_gpus", 0) == 0


def test_cluster_config_puts_the_classifier_on_gpus():
    (app,) = load("serve_config.cluster.yaml")["applications"]
    (classifier,) = [d for d in app["deployments"] if d["name"] == "Classifier"]
    assert classifier["ray_actor_options"]["num_gpus"] > 0
