"""Static checks of the deployment files: cluster.yaml, docker-compose.yaml, Dockerfile,
.dockerignore and the RabbitMQ definitions.

Nothing here needs Docker, a broker or a Ray cluster: the files are parsed and
checked against Ray's own cluster schema, the settings model, and each other.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from pydantic import TypeAdapter

from rabbit_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEFINITIONS = ROOT / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = ROOT / "rabbitmq" / "rabbitmq.conf"
HASH_TOOL = ROOT / "scripts" / "rabbitmq_password_hash.py"
BROKER_USERS = ROOT / "scripts" / "broker_users.sh"
RUN_LOCAL = ROOT / "scripts" / "run_local.sh"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# Variables for the infrastructure rather than the application's Settings (GF_: Grafana's).
INFRA_PREFIXES = ("RAY_", "RABBITMQ_", "PYTHON", "PIP_", "GF_")
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}$")

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _bash_syntax_error(script: str) -> str | None:
    result = subprocess.run(
        ["bash", "-n", "-c", script], capture_output=True, text=True, check=False
    )
    return result.stderr if result.returncode else None


# --------------------------------------------------------------------------- cluster.yaml


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return _load_yaml(CLUSTER)


def test_ray_ships_its_cluster_schema():
    assert RAY_SCHEMA.is_file(), f"ray no longer ships {RAY_SCHEMA}"


def test_cluster_yaml_matches_rays_schema(cluster):
    schema = json.loads(RAY_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(cluster), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_cluster_yaml_survives_rays_own_preparation(cluster):
    # What `ray up` does before it talks to the cloud: merge the provider's
    # defaults, then the cross-field checks the schema cannot express.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(json.loads(json.dumps(cluster))))


def test_cluster_has_a_cpu_head_and_autoscaled_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU", 0) >= 1
    assert head["resources"].get("GPU", 0) == 0

    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker type advertises a GPU for the Classifier"
    for node_type in gpu_types.values():
        assert node_type.get("min_workers", 0) <= node_type["max_workers"]
        assert node_type["max_workers"] >= 1
    assert cluster["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


def test_cluster_nodes_name_their_image(cluster):
    if cluster["provider"]["type"] != "aws":
        pytest.skip("ImageId is AWS-specific")
    # Without one, Ray picks an Ubuntu 18.04 AMI whose Python is too old.
    for name, node_type in cluster["available_node_types"].items():
        assert node_type["node_config"].get("ImageId"), name


def test_cluster_ships_and_installs_the_project(cluster):
    assert cluster["file_mounts"].get("~/rabbit-serve") == "."
    head = " ".join(cluster["head_setup_commands"])
    worker = " ".join(cluster["worker_setup_commands"])
    assert re.search(r"pip install -e \"\$HOME/rabbit-serve\"", head)
    assert 'pip install -e "$HOME/rabbit-serve[gpu]"' in worker
    # The autoscaler on the head needs boto3; our head_setup_commands replace Ray's default.
    if cluster["provider"]["type"] == "aws":
        assert "boto3" in head


def test_cluster_keeps_the_dashboard_on_loopback(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head


def test_every_cluster_node_gets_the_broker_urls(cluster):
    # Serve builds the app (and reads the URLs) on whichever node it likes.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        ray_start = start.index("ray start")
        assert "export INGRESS_AMQP_URL=" in start, key
        assert start.index("export INGRESS_AMQP_URL=") < ray_start, key
        urls = start[start.index("export INGRESS_AMQP_URL=") : ray_start]
        assert "CONSUMER_AMQP_URL=" in urls, key
        assert "amqp://rabbit-serve-ingress:${RABBITMQ_INGRESS_PASSWORD:?" in urls, key
        assert "amqp://rabbit-serve-consumer:${RABBITMQ_CONSUMER_PASSWORD:?" in urls, key
        # The operator's password stays out of every Ray process.
        assert "export AMQP_URL=" not in start, key
        assert "unset RABBITMQ_PASSWORD" in start[:ray_start], key


def test_cluster_head_creates_the_broker_users(cluster):
    setup = " ".join(cluster["head_setup_commands"])
    assert "scripts/broker_users.sh" in setup
    assert setup.index("install_rabbitmq.sh") < setup.index("broker_users.sh")
    assert 'RABBITMQCTL="sudo rabbitmqctl"' in setup


def test_cluster_nodes_use_rays_token_auth(cluster):
    # Each node's agent serves the job API on the node's address: token auth on every node.
    setup = " ".join(cluster["setup_commands"])
    assert "~/.ray/auth_token" in setup and "umask 077" in setup
    assert "export RAY_AUTH_MODE=token" in setup and "~/.bashrc" in setup
    assert "${RAY_AUTH_TOKEN:?" in setup


@needs_bash
def test_cluster_commands_are_valid_shell(cluster):
    keys = [k for k in cluster if k.endswith("_commands")]
    for key in keys:
        for command in cluster[key]:
            error = _bash_syntax_error(command)
            assert error is None, f"{key}: {command!r}: {error}"


def test_cluster_yaml_documents_the_deploy_commands():
    text = CLUSTER.read_text(encoding="utf-8")
    for command in (
        "ray up cluster.yaml",
        "serve deploy serve_config.cluster.yaml",
        "ray down cluster.yaml",
    ):
        assert command in text


# --------------------------------------------------------------------------- docker-compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE)


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: (None if value is None else str(value)) for key, value in env.items()}


def _all_environment(compose: dict[str, Any]) -> dict[str, str | None]:
    merged: dict[str, str | None] = {}
    for service in compose["services"].values():
        merged.update(_environment(service))
    return merged


def unknown_setting_names(names: list[str]) -> list[str]:
    """Names that are neither infrastructure variables nor Settings fields."""
    return sorted(
        name for name in names if not name.startswith(INFRA_PREFIXES) and name not in SETTING_NAMES
    )


def _volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out.append((source, target, "ro" in mode))
    return out


def test_setting_name_check_catches_a_misspelling():
    assert unknown_setting_names(["MAX_BATCH_SIZE", "RAY_ADDRESS"]) == []
    assert unknown_setting_names(["MAX_BATCH_SIZ", "BATCH_TIMEOUT_S"]) == [
        "BATCH_TIMEOUT_S",
        "MAX_BATCH_SIZ",
    ]


def test_compose_environment_names_are_settings(compose):
    names = list(_all_environment(compose))
    assert {"INGRESS_AMQP_URL", "CONSUMER_AMQP_URL", "API_KEYS"} <= set(names)
    assert unknown_setting_names(names) == []


def test_compose_setting_defaults_match_the_application(compose):
    for name, value in _all_environment(compose).items():
        if name not in SETTING_NAMES or value is None:
            continue
        match = INTERPOLATION.match(value)
        if not match:
            continue
        # ${X:-d} under key Y would silently read the wrong host variable.
        assert match["name"] == name, f"{name} reads ${{{match['name']}}}"
        if match["default"] is None:
            continue
        field = Settings.model_fields[name.lower()]
        parsed = TypeAdapter(field.annotation).validate_python(match["default"])
        assert parsed == field.default, (
            f"{name}: compose says {parsed!r}, Settings {field.default!r}"
        )


def test_compose_sets_no_setting_that_serve_config_overrides(compose):
    # build_app lets the config's `args` win over the environment, so such a
    # variable would be silently ignored.
    serve_config = _load_yaml(ROOT / "serve_config.yaml")
    args = {key.upper() for app in serve_config["applications"] for key in (app.get("args") or {})}
    assert not set(_all_environment(compose)) & args


def test_compose_has_no_default_credentials(compose):
    text = json.dumps(compose)  # parsed, so comments do not count
    env = _all_environment(compose)
    assert "${RABBITMQ_INGRESS_PASSWORD:?" in (env["INGRESS_AMQP_URL"] or "")
    assert "${RABBITMQ_CONSUMER_PASSWORD:?" in (env["CONSUMER_AMQP_URL"] or "")
    assert (env["API_KEYS"] or "").startswith("${API_KEYS:?")
    for secret in (
        "RABBITMQ_PASSWORD",
        "RABBITMQ_INGRESS_PASSWORD",
        "RABBITMQ_CONSUMER_PASSWORD",
        "RAY_AUTH_TOKEN",
        "API_KEYS",
    ):
        assert f"${{{secret}:?" in text, secret
        assert not re.search(rf"\$\{{{secret}:?-", text), secret
    assert "guest" not in text


def test_compose_ray_containers_connect_as_the_least_privilege_users(compose):
    for name in ("ray-head", "ray-worker"):
        env = _environment(compose["services"][name])
        # No admin URL, and so no admin password, in any Ray process.
        assert "AMQP_URL" not in env, name
        assert "RABBITMQ_PASSWORD" not in json.dumps(env), name
        assert (env["INGRESS_AMQP_URL"] or "").startswith(
            "amqp://${RABBITMQ_INGRESS_USER:-rabbit-serve-ingress}:"
        )
        assert (env["CONSUMER_AMQP_URL"] or "").startswith(
            "amqp://${RABBITMQ_CONSUMER_USER:-rabbit-serve-consumer}:"
        )


def test_compose_creates_the_broker_users_before_ray(compose):
    services = compose["services"]
    users = services["rabbitmq-users"]
    # The broker image's own rabbitmqctl, against the broker node, with its cookie.
    assert users["image"] == services["rabbitmq"]["image"]
    assert users["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    env = _environment(users)
    assert env["RABBITMQ_NODENAME"] == f"rabbit@{services['rabbitmq']['hostname']}"
    for role in ("INGRESS", "CONSUMER"):
        assert (env[f"RABBITMQ_{role}_PASSWORD"] or "").startswith(f"${{RABBITMQ_{role}_PASSWORD:?")
        # The same user names the Ray containers' URLs use.
        user = env[f"RABBITMQ_{role}_USER"] or ""
        assert _all_environment(compose)[f"{role}_AMQP_URL"].startswith(f"amqp://{user}:")
    mounts = {target: (source, ro) for source, target, ro in _volumes(users)}
    script_target = next(t for t, (src, _) in mounts.items() if src == "./scripts/broker_users.sh")
    assert mounts["/var/lib/rabbitmq"] == ("rabbitmq-data", True)
    assert users["command"] == ["bash", script_target]
    assert users.get("restart") == "no"
    condition = services["ray-head"]["depends_on"]["rabbitmq-users"]["condition"]
    assert condition == "service_completed_successfully"


def test_compose_publishes_ports_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_rabbitmq_service(compose):
    rabbitmq = compose["services"]["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:[0-9.]+-management", rabbitmq["image"])
    test = rabbitmq["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "rabbitmq-diagnostics" in " ".join(test)
    ports = {p.rsplit(":", 1)[1] for p in rabbitmq["ports"]}
    assert {"5672", "15672"} <= ports
    mounts = {target: source for source, target, _ in _volumes(rabbitmq)}
    assert mounts.get("/etc/rabbitmq/rabbitmq.conf") == "./rabbitmq/rabbitmq.conf"


def _load_definitions_path() -> str:
    conf = RABBITMQ_CONF.read_text(encoding="utf-8")
    match = re.search(r"^\s*(?:management\.)?load_definitions\s*=\s*(\S+)", conf, re.MULTILINE)
    assert match, "rabbitmq.conf does not load definitions"
    return match[1]


def _definitions_mount(compose: dict[str, Any]) -> tuple[str, str, str]:
    """(mount source, mount target, file path) of the definitions the broker loads."""
    path = _load_definitions_path()
    mounts = _volumes(compose["services"]["rabbitmq"])
    found = [(s, t) for s, t, _ in mounts if path == t or path.startswith(t.rstrip("/") + "/")]
    assert found, f"rabbitmq.conf loads {path}, which no rabbitmq volume provides"
    return found[0][0], found[0][1], path


def _hash_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rabbitmq_password_hash", HASH_TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_rabbitmq_loads_the_rendered_definitions(compose):
    # rabbitmq.conf names a file; follow the mounts back to the repo's template.
    services = compose["services"]
    source, _, _ = _definitions_mount(compose)
    if source == "./rabbitmq/definitions.json":
        return  # mounted as-is
    assert source in compose["volumes"], f"{source} is neither the template nor a volume"
    writers = [
        name
        for name, service in services.items()
        if name != "rabbitmq" and any(s == source and not ro for s, _, ro in _volumes(service))
    ]
    assert len(writers) == 1, writers
    renderer = services[writers[0]]
    sources = {s for s, _, _ in _volumes(renderer)}
    assert {"./rabbitmq/definitions.json", "./scripts/rabbitmq_password_hash.py"} <= sources
    condition = services["rabbitmq"]["depends_on"][writers[0]]["condition"]
    assert condition == "service_completed_successfully"


def test_compose_definitions_render_command_works(compose, tmp_path):
    """Run the renderer's command here, its mounts mapped onto temporary paths."""
    services = compose["services"]
    source, target, path = _definitions_mount(compose)
    if source == "./rabbitmq/definitions.json":
        pytest.skip("definitions are mounted unrendered")
    name, renderer = next(
        (n, s)
        for n, s in services.items()
        if n != "rabbitmq" and any(v[0] == source for v in _volumes(s))
    )
    shell, flag, script = renderer["command"]
    assert (shell, flag) == ("sh", "-c"), name
    script = script.replace("$$", "$")
    for mount_source, mount_target, _ in _volumes(renderer):
        if mount_source.startswith("./"):
            local = ROOT / mount_source
        else:  # a named volume: an empty directory, as Docker creates it
            local = tmp_path / mount_source
            local.mkdir()
        script = script.replace(mount_target, str(local))
    script = re.sub(r"(?<![\w/])python(?=\s)", sys.executable, script)

    env = {**os.environ, "RABBITMQ_USER": "compose-user", "RABBITMQ_PASSWORD": "from-dotenv"}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "from-dotenv" not in script  # the password travels by environment, not argv

    rendered = json.loads((tmp_path / source / path[len(target) :].lstrip("/")).read_text())
    assert [u["name"] for u in rendered["users"]] == ["compose-user"]
    tool = _hash_tool()
    assert tool.verify("from-dotenv", rendered["users"][0]["password_hash"])
    assert {(p["user"], p["vhost"]) for p in rendered["permissions"]} == {("compose-user", "/")}


def test_compose_ray_head_service(compose):
    head = compose["services"]["ray-head"]
    assert head["build"] in (".", {"context": "."})
    assert head["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert head.get("shm_size")
    ports = {p.rsplit(":", 1)[1] for p in head["ports"]}
    assert {"8000", "8265"} <= ports
    script = " ".join(head["command"])
    assert "ray start --head" in script
    assert "serve deploy serve_config.yaml" in script or "serve run serve_config.yaml" in script
    assert "healthcheck" in head


@needs_bash
def test_compose_ray_head_command_is_valid_shell(compose):
    command = compose["services"]["ray-head"]["command"]
    assert command[:2] == ["bash", "-c"]
    error = _bash_syntax_error(command[2].replace("$$", "$"))
    assert error is None, error


def test_compose_ray_worker_can_scale(compose):
    worker = compose["services"]["ray-worker"]
    # A fixed name or host port would make `--scale ray-worker=N` fail.
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "--address=ray-head:6379" in " ".join(worker["command"])
    assert worker.get("shm_size")
    assert worker["image"] == compose["services"]["ray-head"]["image"]


# --------------------------------------------------------------------------- prometheus, grafana


def _metrics_export_ports(compose: dict[str, Any]) -> dict[str, int]:
    """The fixed --metrics-export-port of each Ray service's `ray start`."""
    ports = {}
    for name in ("ray-head", "ray-worker"):
        command = " ".join(compose["services"][name]["command"])
        found = re.findall(r"--metrics-export-port[= ](\d+)", command)
        assert len(found) == 1, f"{name}: ray start needs one fixed --metrics-export-port"
        ports[name] = int(found[0])
    return ports


def _mounted_file(service: dict[str, Any], path: str) -> Path | None:
    """The repo file a container path comes from, through the service's bind mounts."""
    for source, target, _ in _volumes(service):
        if source.startswith("./") and (path == target or path.startswith(target + "/")):
            return ROOT / source / path[len(target) :].lstrip("/")
    return None


def test_compose_prometheus_scrapes_every_ray_node(compose):
    services = compose["services"]
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_file = _mounted_file(prometheus, flag.split("=", 1)[1])
    assert config_file == ROOT / "prometheus" / "prometheus.yml" and config_file.is_file()
    assert all(ro for s, _, ro in _volumes(prometheus) if s.startswith("./"))
    config = _load_yaml(config_file)
    ports = _metrics_export_ports(compose)
    static = [
        t
        for job in config["scrape_configs"]
        for c in job.get("static_configs", [])
        for t in c["targets"]
    ]
    assert f"ray-head:{ports['ray-head']}" in static
    # Workers scale: found by Docker's DNS, one A record per container, not by fixed names.
    dns = [c for job in config["scrape_configs"] for c in job.get("dns_sd_configs", [])]
    assert {(tuple(c["names"]), c["type"], c["port"]) for c in dns} == {
        (("ray-worker",), "A", ports["ray-worker"])
    }
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])
    assert "prometheus-data" in compose["volumes"]


def test_compose_grafana_has_no_default_password_or_anonymous_access(compose):
    grafana = compose["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    env = _environment(grafana)
    assert (env["GF_SECURITY_ADMIN_PASSWORD"] or "").startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert not re.search(r"\$\{GRAFANA_ADMIN_PASSWORD:?-", json.dumps(compose))
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert grafana["ports"] == ["127.0.0.1:${GRAFANA_PORT:-3000}:3000"]
    assert "grafana-data" in compose["volumes"]


def test_compose_grafana_provisions_prometheus_and_every_dashboard(compose):
    services = compose["services"]
    grafana = services["grafana"]
    for source, _, ro in _volumes(grafana):
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
            assert ro, f"{source} should be mounted read-only"
    datasources_dir = _mounted_file(grafana, "/etc/grafana/provisioning/datasources")
    providers_dir = _mounted_file(grafana, "/etc/grafana/provisioning/dashboards")
    assert datasources_dir and providers_dir
    (datasource,) = [
        d for f in sorted(datasources_dir.glob("*.yaml")) for d in _load_yaml(f)["datasources"]
    ]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    container_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{container_port}"

    providers = [
        p for f in sorted(providers_dir.glob("*.yaml")) for p in _load_yaml(f)["providers"]
    ]
    loaded = set()
    for provider in providers:
        folder = _mounted_file(grafana, provider["options"]["path"])
        assert folder and folder.is_dir(), provider["options"]["path"]
        loaded |= set(folder.rglob("*.json"))
    shipped = set((ROOT / "grafana" / "dashboards").rglob("*.json"))
    assert (ROOT / "grafana" / "dashboards" / "rabbit-serve.json") in shipped
    assert shipped <= loaded, sorted(str(p) for p in shipped - loaded)
    home = _mounted_file(
        grafana, _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    )
    assert home in shipped


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for pair in line.split()[1:]:
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_dockerfile_base_and_environment():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    env = _dockerfile_env()
    assert unknown_setting_names(list(env)) == []
    workdir = re.findall(r"^WORKDIR (\S+)", text, re.MULTILINE)[-1]
    model = Path(env["MODEL_PATH"])
    assert (ROOT / model.relative_to(workdir)).is_file(), "MODEL_PATH is not the copied model"


def test_dockerfile_copies_files_that_exist():
    text = DOCKERFILE.read_text(encoding="utf-8")
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        *sources, _ = [word for word in line.split() if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert source == "." or not _dockerignored(source), f"COPY {source}: dockerignored"


def _dockerignored(path: str) -> bool:
    # Enough of Docker's matching for these patterns: a match on the path or
    # any parent excludes it; "!" re-includes.
    ignored = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates) or any(
            pattern.startswith("**/") and fnmatch.fnmatch(part, candidates[1]) for part in parts
        ):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "serve_config.yaml",
        "models/efficientnet_lite0.onnx",
        "rabbit_serve/settings.py",
        "ingress/app.py",
        "consumer/worker.py",
        "deployments/app.py",
    ],
)
def test_dockerignore_keeps_what_the_image_needs(path):
    assert not _dockerignored(path)


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/config", ".env", "rabbit_serve/__pycache__/x.pyc"]
)
def test_dockerignore_drops_local_state_and_secrets(path):
    assert _dockerignored(path)


# --------------------------------------------------------------------------- definitions


@pytest.fixture(scope="module")
def definitions() -> dict[str, Any]:
    return json.loads(DEFINITIONS.read_text(encoding="utf-8"))


def test_definitions_declare_the_vhost_users_and_permissions(definitions):
    vhosts = {v["name"] for v in definitions["vhosts"]}
    assert "/" in vhosts
    users = {u["name"]: u for u in definitions["users"]}
    assert users
    for user in users.values():
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert user["password_hash"]
        assert isinstance(user["tags"], str)  # what RabbitMQ 3.8/3.9 can import
    for permission in definitions["permissions"]:
        assert permission["user"] in users
        assert permission["vhost"] in vhosts
        assert {"configure", "write", "read"} <= permission.keys()
    # Every user can reach the app's vhost, else it could not declare its queues.
    assert {p["user"] for p in definitions["permissions"] if p["vhost"] == "/"} == set(users)


def test_definitions_define_no_guest_user(definitions):
    assert "guest" not in {u["name"] for u in definitions["users"]}


def test_definitions_template_uses_the_documented_placeholder(definitions):
    # A real password's hash must never be committed; the template's is for "change-me".
    tool = _hash_tool()
    for user in definitions["users"]:
        assert tool.verify(tool.PLACEHOLDER_PASSWORD, user["password_hash"]), user["name"]


def test_every_deploy_path_pins_a_broker_in_the_supported_range(compose, cluster):
    from rabbit_serve.broker_version import check_version

    tag = compose["services"]["rabbitmq"]["image"].split(":", 1)[1].removesuffix("-management")
    assert tag.count(".") == 2, f"compose should pin a patch release, not {tag!r}"
    assert check_version(tag) is None
    commands = " ".join(cluster["head_setup_commands"])
    pinned = re.search(r"RABBITMQ_VERSION=([0-9.]+-\d+)", commands)
    assert pinned and "install_rabbitmq.sh" in commands
    assert check_version(pinned[1]) is None
    # Same minor release in both.
    assert pinned[1].rsplit(".", 1)[0] == tag.rsplit(".", 1)[0]
    script = (ROOT / "scripts" / "install_rabbitmq.sh").read_text()
    assert _bash_syntax_error(script) is None and "check_version" in script


# --------------------------------------------------------------------------- Ray's surfaces

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# `ray start ...` or `"$RAY" start ...`, up to the end of that simple command.
RAY_START = re.compile(r"""(?:\bray|"\$RAY"|\$RAY)\s+start\b(?P<args>[^;&|\n]*)""")


def _without_comments(shell: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in shell.splitlines())


def _flag(args: str, name: str) -> str | None:
    match = re.search(rf"--{name}(?:=|\s+)[\"']?([^\s\"']+)", args)
    return match[1] if match else None


def ray_exposure(command: str, env: dict[str, str | None]) -> list[str]:
    """What the ``ray start`` commands in ``command`` (shell text, ``env`` its
    environment) put on a non-loopback address without Ray's token auth.

    The dashboard, with the job API, binds ``--dashboard-host`` (Ray's default:
    loopback) on the head; every node's agent serves the job API on the node's
    address (``--node-ip-address``, by default the machine's own). Either on a
    network address needs RAY_AUTH_MODE=token, set in the environment or exported
    before the command, with a token that has no default.
    """
    text = command.replace("\\\n", " ")
    problems = []
    for match in RAY_START.finditer(text):
        before, args = text[: match.start()], match["args"]
        mode = env.get("RAY_AUTH_MODE")
        exported = re.findall(r"\bRAY_AUTH_MODE=[\"']?([\w$:{}-]+)", before)
        if exported:
            mode = exported[-1]
        token = env.get("RAY_AUTH_TOKEN") or ""
        has_token = token.startswith("${RAY_AUTH_TOKEN:?") or "${RAY_AUTH_TOKEN:?" in before
        has_token = has_token or "~/.ray/auth_token" in before
        if mode == "token" and has_token:
            continue
        exposed = []
        if "--head" in args:
            host = _flag(args, "dashboard-host") or "127.0.0.1"
            if host not in LOOPBACK_HOSTS and "--include-dashboard=false" not in args:
                exposed.append(f"dashboard and job API on {host}")
        node_ip = _flag(args, "node-ip-address")
        if node_ip not in LOOPBACK_HOSTS:
            exposed.append(f"the agent's job API on {node_ip or 'the node address'}")
        problems += [f"{item} without token auth ({match[0].strip()!r})" for item in exposed]
    return problems


def test_ray_exposure_catches_an_open_dashboard_or_agent():
    open_head = "ray start --head --port=6379 --dashboard-host=0.0.0.0 --block &"
    assert ray_exposure(open_head, {"RAY_AUTH_MODE": "disabled"})
    assert ray_exposure(open_head, {})  # mode unset: Ray decides, not the config
    # Token mode without a required token is not enough either.
    assert ray_exposure(open_head, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "${T:-x}"})
    assert not ray_exposure(
        open_head, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "${RAY_AUTH_TOKEN:?set it}"}
    )
    # The default dashboard host is loopback, but the agent is on the node's address.
    worker = "ray start --address=$RAY_HEAD_IP:6379"
    assert ray_exposure(worker, {}) == [
        f"the agent's job API on the node address without token auth ({worker!r})"
    ]
    exported = "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:?missing} && " + worker
    assert not ray_exposure(exported, {})
    # All on loopback: nothing on a network, no token needed.
    local = '"$RAY" start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1'
    assert not ray_exposure(local, {"RAY_AUTH_MODE": "disabled"})
    assert ray_exposure(local.replace("--dashboard-host=127.0.0.1", "--dashboard-host=::"), {})


def _shipped_ray_starts(compose: dict[str, Any], cluster: dict[str, Any]):
    for name, service in compose["services"].items():
        command = service.get("command") or []
        text = " ".join(command) if isinstance(command, list) else command
        yield f"docker-compose.yaml:{name}", text.replace("$$", "$"), _environment(service)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in cluster[key]:
            yield f"cluster.yaml:{key}", " ".join(cluster["setup_commands"]) + " && " + command, {}
    run_local = _without_comments(RUN_LOCAL.read_text(encoding="utf-8"))
    yield "scripts/run_local.sh", run_local, {}


def test_shipped_configs_never_expose_rays_dashboard_or_job_api(compose, cluster):
    found = 0
    for where, command, env in _shipped_ray_starts(compose, cluster):
        found += len(RAY_START.findall(command.replace("\\\n", " ")))
        assert ray_exposure(command, env) == [], where
    # compose head + worker, cluster head + worker, run_local.sh
    assert found >= 5


def test_compose_ray_containers_share_one_required_token(compose):
    for name in ("ray-head", "ray-worker"):
        env = _environment(compose["services"][name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert (env["RAY_AUTH_TOKEN"] or "").startswith("${RAY_AUTH_TOKEN:?"), name


def test_cluster_start_commands_export_token_auth(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        head = start[: start.index("ray start")]
        assert "export RAY_AUTH_MODE=token" in head, key
        assert "${RAY_AUTH_TOKEN:?" in head, key


# --------------------------------------------------------------------------- broker users

FAKE_RABBITMQCTL = r"""
import json, os, sys
state_path = os.environ["FAKE_RABBITMQCTL_STATE"]
state = {"users": [], "vhosts": ["/"]}
if os.path.exists(state_path):
    state = json.load(open(state_path))
args = [a for a in sys.argv[1:] if a not in ("-q", "--")]
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["FAKE_RABBITMQCTL_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "stdin": stdin}) + "\n")
command = args[0]
if command == "list_users":
    print("\n".join(f"{u}\t[]" for u in state["users"]))
elif command == "list_vhosts":
    print("\n".join(state["vhosts"]))
elif command == "add_user":
    state["users"].append(args[1])
elif command == "add_vhost":
    state["vhosts"].append(args[1])
json.dump(state, open(state_path, "w"))
"""


def run_broker_users(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list]:
    fake = tmp_path / "fake_rabbitmqctl.py"
    fake.write_text(FAKE_RABBITMQCTL)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    full_env = {
        "PATH": os.environ["PATH"],
        "RABBITMQCTL": f"{sys.executable} {fake}",
        "FAKE_RABBITMQCTL_STATE": str(tmp_path / "state.json"),
        "FAKE_RABBITMQCTL_LOG": str(log),
        "RABBITMQ_INGRESS_PASSWORD": "ingress-secret-1",
        "RABBITMQ_CONSUMER_PASSWORD": "consumer-secret-1",
        **env,
    }
    result = subprocess.run(
        ["bash", str(BROKER_USERS)],
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def _permissions(calls: list) -> dict[str, tuple[str, str, str, str]]:
    """user -> (vhost, configure, write, read) from the recorded set_permissions."""
    out = {}
    for call in calls:
        argv = [a for a in call["argv"] if a not in ("-q", "--")]
        if argv[0] == "set_permissions":
            vhost, user, *regexes = argv[2:]
            assert argv[1] == "-p"
            out[user] = (vhost, *regexes)
    return out


def _matches(regex: str, names: list[str]) -> list[str]:
    return [name for name in names if re.search(regex, name)]


@needs_bash
def test_broker_users_grant_each_role_only_its_queues(tmp_path):
    settings = Settings()
    result, calls = run_broker_users(tmp_path)
    assert result.returncode == 0, result.stderr
    perms = _permissions(calls)
    _, i_configure, i_write, i_read = perms["rabbit-serve-ingress"]
    _, c_configure, c_write, c_read = perms["rabbit-serve-consumer"]
    reply = f"{settings.reply_queue_prefix}.ingress-replica-1"
    queues = [
        settings.request_queue,
        settings.dead_letter_queue,
        settings.webhook_queue,
        settings.webhook_dead_letter_queue,
        reply,
        # Near misses: an unescaped dot or a missing anchor would let these through.
        settings.request_queue + "x",
        settings.request_queue.replace(".", "X"),
        "x" + settings.webhook_queue,
        settings.reply_queue_prefix,
        settings.reply_queue_prefix + "X1",
        "amq.gen-123",
    ]
    exchanges = ["amq.default", "amq.direct", "amq.topic", "amq.fanout", "amqXdefault"]
    assert _matches(i_configure, queues + exchanges) == [reply]
    assert _matches(i_read, queues + exchanges) == [reply]
    assert _matches(c_configure, queues + exchanges) == queues[:4]
    assert _matches(c_read, queues + exchanges) == queues[:3]
    assert (
        _matches(i_write, queues + exchanges)
        == _matches(c_write, queues + exchanges)
        == ["amq.default"]
    )
    # No tags: set_user_tags with a user and nothing else.
    tags = [c["argv"] for c in calls if "set_user_tags" in c["argv"]]
    assert [[a for a in t if a not in ("-q", "--")] for t in tags] == [
        ["set_user_tags", "rabbit-serve-ingress"],
        ["set_user_tags", "rabbit-serve-consumer"],
    ]


@needs_bash
def test_broker_users_defaults_are_the_applications_queue_names():
    text = BROKER_USERS.read_text(encoding="utf-8")
    for name in (
        "request_queue",
        "dead_letter_queue",
        "reply_queue_prefix",
        "webhook_queue",
        "webhook_dead_letter_queue",
    ):
        default = Settings.model_fields[name].default
        assert f'"${{{name.upper()}:-{default}}}"' in text, name


@needs_bash
def test_broker_users_escape_queue_names(tmp_path):
    result, calls = run_broker_users(
        tmp_path, REQUEST_QUEUE="a+b.(q)", REPLY_QUEUE_PREFIX="r[1].*", RABBITMQ_VHOST="v|h"
    )
    assert result.returncode == 0, result.stderr
    perms = _permissions(calls)
    vhost, configure, _, _ = perms["rabbit-serve-consumer"]
    assert vhost == "v|h"
    assert _matches(configure, ["a+b.(q)", "aab.(q)", "a+bX(q)", "ab.q"]) == ["a+b.(q)"]
    _, i_configure, _, _ = perms["rabbit-serve-ingress"]
    assert _matches(i_configure, ["r[1].*.x", "r1.x", "r[1]X*.x", "r[1].*"]) == ["r[1].*.x"]
    assert ["add_vhost", "v|h"] in [[a for a in c["argv"] if a not in ("-q", "--")] for c in calls]


@needs_bash
def test_broker_users_keep_passwords_off_the_command_line_and_rotate(tmp_path):
    result, calls = run_broker_users(tmp_path)
    assert result.returncode == 0, result.stderr
    argv = json.dumps([c["argv"] for c in calls])
    assert "secret" not in argv
    added = {c["argv"][-1]: c["stdin"] for c in calls if "add_user" in c["argv"]}
    assert added == {
        "rabbit-serve-ingress": "ingress-secret-1\n",
        "rabbit-serve-consumer": "consumer-secret-1\n",
    }
    # Again, with new passwords: the users exist, so their passwords change.
    result, calls = run_broker_users(
        tmp_path,
        RABBITMQ_INGRESS_PASSWORD="ingress-secret-2",
        RABBITMQ_CONSUMER_PASSWORD="consumer-secret-2",
    )
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if "add_user" in c["argv"] or "add_vhost" in c["argv"]]
    changed = {c["argv"][-1]: c["stdin"] for c in calls if "change_password" in c["argv"]}
    assert changed == {
        "rabbit-serve-ingress": "ingress-secret-2\n",
        "rabbit-serve-consumer": "consumer-secret-2\n",
    }
    assert len(_permissions(calls)) == 2


@needs_bash
@pytest.mark.parametrize("missing", ["RABBITMQ_INGRESS_PASSWORD", "RABBITMQ_CONSUMER_PASSWORD"])
def test_broker_users_need_both_passwords(tmp_path, missing):
    result, calls = run_broker_users(tmp_path, **{missing: ""})
    assert result.returncode != 0
    assert missing in result.stderr
    assert calls == []


@needs_bash
def test_broker_users_refuse_one_user_for_both_roles(tmp_path):
    result, calls = run_broker_users(
        tmp_path, RABBITMQ_INGRESS_USER="same", RABBITMQ_CONSUMER_USER="same"
    )
    assert result.returncode != 0 and calls == []


@needs_bash
def test_broker_users_script_is_valid_shell():
    assert _bash_syntax_error(BROKER_USERS.read_text(encoding="utf-8")) is None
