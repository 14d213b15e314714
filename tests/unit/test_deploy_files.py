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
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# Variables for the infrastructure rather than the application's Settings.
INFRA_PREFIXES = ("RAY_", "RABBITMQ_", "PYTHON", "PIP_")
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


def test_every_cluster_node_gets_the_broker_url(cluster):
    # Serve builds the app (and reads AMQP_URL) on whichever node it likes.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        assert "export AMQP_URL=" in start, key
        assert start.index("export AMQP_URL=") < start.index("ray start"), key


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
    assert "AMQP_URL" in names
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


def test_compose_has_no_default_broker_credentials(compose):
    text = json.dumps(compose)  # parsed, so comments do not count
    assert "${RABBITMQ_PASSWORD:?" in _all_environment(compose)["AMQP_URL"]
    assert not re.search(r"\$\{RABBITMQ_PASSWORD:?-", text)
    assert "guest" not in text


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
