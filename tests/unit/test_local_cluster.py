"""The local cluster's pure parts: Ray's environment defaults and per-app queue names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rabbit_serve import local_cluster
from rabbit_serve.local_cluster import (
    RAY_ENV_DEFAULTS,
    SERVE_FAST_PATH_ENV,
    App,
    app_queues,
    apply_ray_env_defaults,
    queue_names,
)
from rabbit_serve.settings import Settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in {**RAY_ENV_DEFAULTS, **SERVE_FAST_PATH_ENV}:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_fill_only_what_is_unset(clean_env):
    clean_env.setenv("RAY_AUTH_MODE", "token")
    in_effect = apply_ray_env_defaults()
    assert in_effect == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    assert local_cluster.os.environ["RAY_AUTH_MODE"] == "token"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in local_cluster.os.environ


def test_fast_path_adds_serves_throughput_settings(clean_env):
    clean_env.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # a user measuring the default path
    in_effect = apply_ray_env_defaults(fast_path=True)
    assert in_effect["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert in_effect["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert set(in_effect) == {*RAY_ENV_DEFAULTS, *SERVE_FAST_PATH_ENV}


def test_queue_names_are_settings_and_all_under_the_prefix():
    names = queue_names("p")
    settings = Settings.from_overrides(names)
    assert {settings.request_queue, settings.dead_letter_queue, settings.webhook_queue} <= set(
        names.values()
    )
    assert all(value.startswith("p.") for value in names.values())
    app = App("a", "http://x", settings)
    assert app_queues(app)[0] == settings.request_queue
    assert set(app_queues(app)) == set(names.values()) - {settings.reply_queue_prefix}


def test_make_run_exports_the_same_ray_environment():
    # scripts/run_local.sh is shell and keeps its own exports; they must say the same.
    script = (Path(__file__).resolve().parents[2] / "scripts" / "run_local.sh").read_text()
    exported = {}
    for name, value in re.findall(r"^export (RAY_\w+)=(\S+)", script, re.MULTILINE):
        default = re.fullmatch(r'"\$\{(\w+):-([^}]*)\}"', value)
        exported[name] = default[2] if default and default[1] == name else value
    assert {**RAY_ENV_DEFAULTS, **SERVE_FAST_PATH_ENV}.items() <= exported.items()
