"""Both Serve config files are valid for Ray Serve, speak this project's settings, and
state only what they change: each default lives once, in Settings or a decorator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter
from ray.serve.schema import ServeDeploySchema

from consumer.worker import BatchingConsumer
from deployments.classifier import Classifier
from ingress.app import Ingress
from rabbit_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["serve_config.yaml", "serve_config.cluster.yaml"]
DEPLOYMENTS = {d.name: d for d in (Ingress, BatchingConsumer, Classifier)}
DEPLOYMENT_NAMES = set(DEPLOYMENTS)
# What a replica gets when neither the decorator nor the config names the resource.
ACTOR_OPTION_DEFAULTS = {"num_gpus": 0}


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
    args = app.get("args") or {}
    unknown = set(args) - fields
    assert not unknown, f"{name}: unknown settings {unknown}"
    Settings.from_overrides(args)  # values must validate too


@pytest.mark.parametrize("name", CONFIGS)
def test_deployment_names_exist(name):
    (app,) = load(name)["applications"]
    assert {d["name"] for d in app.get("deployments", [])} <= DEPLOYMENT_NAMES


def test_local_config_is_loopback_and_cpu_only():
    config = load("serve_config.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    (app,) = config["applications"]
    for deployment in app.get("deployments", []):
        assert deployment.get("ray_actor_options", {}).get("num_gpus", 0) == 0
    # Left out of the config, the Classifier's resources are its decorator's.
    assert (Classifier.ray_actor_options or {}).get("num_gpus", 0) == 0


def test_cluster_config_puts_the_classifier_on_gpus():
    (app,) = load("serve_config.cluster.yaml")["applications"]
    (classifier,) = [d for d in app["deployments"] if d["name"] == "Classifier"]
    assert classifier["ray_actor_options"]["num_gpus"] > 0


def _decorator_value(name: str, option: str) -> Any:
    deployment = DEPLOYMENTS[name]
    if hasattr(deployment, option):
        return getattr(deployment, option)
    return getattr(deployment._deployment_config, option)


def repeated_defaults(config: dict[str, Any]) -> list[str]:
    """Values a Serve config sets to what the code already defaults them to."""
    repeats = []
    for app in config["applications"]:
        for key, value in (app.get("args") or {}).items():
            field = Settings.model_fields[key.lower()]
            if TypeAdapter(field.annotation).validate_python(value) == field.default:
                repeats.append(f"args.{key}: {value!r} is the Settings default")
        for entry in app.get("deployments", []):
            name = entry["name"]
            for option, value in entry.items():
                if option in ("name", "ray_actor_options"):
                    continue
                if value == _decorator_value(name, option):
                    repeats.append(f"{name}.{option}: {value!r} is the decorator's")
            decorated = {**ACTOR_OPTION_DEFAULTS, **(DEPLOYMENTS[name].ray_actor_options or {})}
            for option, value in (entry.get("ray_actor_options") or {}).items():
                if option in decorated and value == decorated[option]:
                    repeats.append(f"{name}.ray_actor_options.{option}: {value!r} is the default")
    return repeats


@pytest.mark.parametrize("name", CONFIGS)
def test_config_states_only_what_it_changes(name):
    assert repeated_defaults(load(name)) == []


def test_repeat_check_catches_a_copied_default():
    config = {
        "applications": [
            {
                "args": {"MAX_BATCH_SIZE": 16, "TIMEOUT": 10, "NUM_CONSUMERS": 2},
                "deployments": [
                    {"name": "Classifier", "num_replicas": 1, "max_ongoing_requests": 16},
                    {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0}},
                ],
            }
        ]
    }
    assert len(repeated_defaults(config)) == 6, repeated_defaults(config)
