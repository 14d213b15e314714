"""No anonymous service on a network: build_app refuses a proxy off loopback without keys."""

from __future__ import annotations

import pytest

from deployments import app as app_module
from deployments.app import AnonymousServiceRefused, anonymous_refusal, build_app, is_loopback
from rabbit_serve.settings import Settings

ANONYMOUS = Settings()
LOOPBACK = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",
    "localhost",
    "LocalHost.",
]
NETWORK = [
    "0.0.0.0",
    "::",
    "[::]",
    "192.168.1.20",
    "10.0.0.5",
    "203.0.113.7",
    "fe80::1",
    "2001:db8::1",
    "my-host",
    "localhost.example.com",
    "",
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_proxies_serve_anonymously(host):
    assert is_loopback(host)
    assert anonymous_refusal(host, ANONYMOUS) is None


@pytest.mark.parametrize("host", NETWORK)
def test_a_proxy_on_a_network_without_keys_is_refused_with_the_three_ways_out(host):
    assert not is_loopback(host)
    refusal = anonymous_refusal(host, ANONYMOUS)
    assert refusal is not None and repr(host) in refusal
    for way_out in ("API_KEYS ", "API_KEYS_FILE", "ALLOW_ANONYMOUS=true"):
        assert way_out in refusal


@pytest.mark.parametrize(
    "settings",
    [
        Settings(api_keys=("k",)),
        Settings(api_keys_file="/etc/rabbit-serve/keys"),
        Settings(allow_anonymous=True),
    ],
    ids=["API_KEYS", "API_KEYS_FILE", "ALLOW_ANONYMOUS"],
)
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_each_way_out_lets_it_start(settings, host):
    assert anonymous_refusal(host, settings) is None


def test_no_http_proxy_serves_nobody():
    assert anonymous_refusal(None, ANONYMOUS) is None


def test_build_app_refuses_before_building_anything(monkeypatch):
    monkeypatch.setattr(app_module, "proxy_host", lambda: "0.0.0.0")
    with pytest.raises(AnonymousServiceRefused, match="not loopback"):
        build_app({"NUM_CONSUMERS": 0})
    with pytest.raises(AnonymousServiceRefused):
        build_app({"ALLOW_ANONYMOUS": "false"})
    # The ways out, as serve_config args (environment variables work the same way).
    assert build_app({"API_KEYS": "k1,k2"}) is not None
    assert build_app({"ALLOW_ANONYMOUS": True}) is not None


def test_build_app_asks_the_cluster_only_when_no_key_is_set(monkeypatch):
    def never() -> str:
        raise AssertionError("the proxy host was looked up")

    monkeypatch.setattr(app_module, "proxy_host", never)
    build_app({"API_KEYS_FILE": "/run/keys"})


def test_without_serve_running_the_host_is_what_serve_start_would_bind(monkeypatch):
    # `make run` and the shipped serve_config.yaml: loopback, no keys, starts.
    from ray.serve.config import HTTPOptions

    assert app_module.proxy_host() == HTTPOptions().host
    assert is_loopback(app_module.proxy_host())
    assert build_app({"NUM_CONSUMERS": 0}) is not None


@pytest.mark.parametrize(
    ("config", "refused"), [("serve_config.yaml", False), ("serve_config.cluster.yaml", True)]
)
def test_the_shipped_configs_as_they_are(config, refused, monkeypatch):
    # The local config starts without keys; the cluster one (0.0.0.0) only with a key
    # or the explicit opt-out in the environment or its args.
    import yaml

    from rabbit_serve.settings import REPO_ROOT

    for name in ("API_KEYS", "API_KEYS_FILE", "ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    loaded = yaml.safe_load((REPO_ROOT / config).read_text())
    (application,) = loaded["applications"]
    settings = Settings.from_overrides(application.get("args"))
    refusal = anonymous_refusal(loaded["http_options"]["host"], settings)
    assert (refusal is not None) == refused, refusal
