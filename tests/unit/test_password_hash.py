"""scripts/rabbitmq_password_hash.py against RabbitMQ's own hashes and its CLI contract."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rabbitmq_password_hash.py"
DEFINITIONS = ROOT / "rabbitmq" / "definitions.json"

# Made by RabbitMQ 3.10.8 itself (`rabbitmqctl add_user` then
# `rabbitmqctl export_definitions`), so they pin the algorithm, not our reading of it.
BROKER_VECTORS = [
    ("secret", "IysdSxW5w8vo+zR5fQ3o9fa052QrhQDsQicV8lOMJsqE9fes"),
    # Non-ASCII: proves the password is hashed as UTF-8, as the broker does.
    ("pässwörd-✓", "FeDdSiV4sCKGvztwoLjy11I+AIvcEA85gQ5LlrHhpKYHrwjQ"),
]


def _load() -> ModuleType:
    # scripts/ is not a package; the script must stay runnable on its own.
    spec = importlib.util.spec_from_file_location("rabbitmq_password_hash", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load()


def _run(monkeypatch, capsys, argv: list[str], stdin: str = "") -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert tool.main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("password", "password_hash"), BROKER_VECTORS)
def test_verify_accepts_hashes_made_by_rabbitmq(password, password_hash):
    assert tool.verify(password, password_hash)
    assert not tool.verify(password + "x", password_hash)


@pytest.mark.parametrize(("password", "password_hash"), BROKER_VECTORS)
def test_hash_with_the_brokers_salt_reproduces_its_hash(password, password_hash):
    salt = base64.b64decode(password_hash)[:4]
    assert tool.hash_password(password, salt=salt) == password_hash


def test_round_trip():
    password_hash = tool.hash_password("correct horse battery staple")
    assert tool.verify("correct horse battery staple", password_hash)


@pytest.mark.parametrize(
    "wrong", ["", "correct horse battery stapl", "Correct horse battery staple"]
)
def test_wrong_password_fails(wrong):
    assert not tool.verify(wrong, tool.hash_password("correct horse battery staple"))


def test_salt_is_random_and_four_bytes():
    hashes = {tool.hash_password("same") for _ in range(64)}
    assert len(hashes) == 64
    raw = [base64.b64decode(h) for h in hashes]
    assert {len(r) for r in raw} == {4 + 32}
    assert len({r[:4] for r in raw}) == 64


def test_explicit_salt_must_be_four_bytes():
    with pytest.raises(ValueError):
        tool.hash_password("pw", salt=b"\x00" * 5)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        base64.b64encode(b"\x00" * 35).decode(),  # one byte short
        base64.b64encode(b"\x00" * 37).decode(),
    ],
)
def test_verify_rejects_malformed_hashes(bad):
    assert not tool.verify("pw", bad)


def test_user_entry_shape():
    entry = tool.user_entry("app", "pw", ["management", "monitoring"])
    assert entry["name"] == "app"
    assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    # RabbitMQ 3.8/3.9 import only the comma-separated form.
    assert entry["tags"] == "management,monitoring"
    assert tool.verify("pw", entry["password_hash"])
    with pytest.raises(ValueError):
        tool.user_entry("", "pw")


def test_cli_prints_just_a_hash(monkeypatch, capsys):
    out = _run(monkeypatch, capsys, ["--password-stdin"], "s3cret\n")
    # The newline `echo` adds is not part of the password.
    assert tool.verify("s3cret", out.strip())


def test_cli_prompts_twice_when_not_reading_stdin(monkeypatch, capsys):
    answers = iter(["typed", "typed"])
    monkeypatch.setattr(tool.getpass, "getpass", lambda prompt="": next(answers))
    out = _run(monkeypatch, capsys, [])
    assert tool.verify("typed", out.strip())


def test_cli_prompt_mismatch_is_refused(monkeypatch):
    answers = iter(["one", "two"])
    monkeypatch.setattr(tool.getpass, "getpass", lambda prompt="": next(answers))
    with pytest.raises(SystemExit):
        tool.main([])


def test_cli_refuses_an_empty_password(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    with pytest.raises(SystemExit):
        tool.main(["--password-stdin"])


@pytest.mark.parametrize("argv", [["hunter2"], ["--password", "hunter2"], ["-p", "hunter2"]])
def test_cli_never_takes_the_password_as_an_argument(argv, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw"))
    with pytest.raises(SystemExit) as excinfo:
        tool.main([*argv, "--password-stdin"])
    assert excinfo.value.code == 2


def test_cli_prints_a_user_entry(monkeypatch, capsys):
    out = _run(
        monkeypatch, capsys, ["--user", "app", "--tags", "management", "--password-stdin"], "pw"
    )
    entry = json.loads(out)
    assert entry["name"] == "app"
    assert entry["tags"] == "management"
    assert tool.verify("pw", entry["password_hash"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--write", "x.json"],  # no --user
        ["--user", "app", "--output", "y.json"],  # --output without --write
        ["--user", "app", "--replace-users"],
    ],
)
def test_cli_rejects_inconsistent_options(argv, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw"))
    with pytest.raises(SystemExit) as excinfo:
        tool.main([*argv, "--password-stdin"])
    assert excinfo.value.code == 2


def test_cli_write_updates_in_place(tmp_path, monkeypatch, capsys):
    target = tmp_path / "definitions.json"
    shutil.copy(DEFINITIONS, target)
    before = json.loads(target.read_text())
    _run(
        monkeypatch, capsys, ["--user", "second", "--password-stdin", "--write", str(target)], "pw"
    )

    after = json.loads(target.read_text())
    names = [u["name"] for u in after["users"]]
    assert names == [*(u["name"] for u in before["users"]), "second"]
    assert {"user": "second", "vhost": "/", **tool.FULL_PERMISSIONS} in after["permissions"]
    # Brokers in other containers run as other users and must read the file.
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["definitions.json"]  # no temp left


def test_cli_write_replaces_an_existing_user(tmp_path, monkeypatch, capsys):
    target = tmp_path / "definitions.json"
    shutil.copy(DEFINITIONS, target)
    name = json.loads(target.read_text())["users"][0]["name"]
    _run(monkeypatch, capsys, ["--user", name, "--password-stdin", "--write", str(target)], "new")

    after = json.loads(target.read_text())
    matching = [u for u in after["users"] if u["name"] == name]
    assert len(matching) == 1
    assert tool.verify("new", matching[0]["password_hash"])
    assert sum(1 for p in after["permissions"] if p["user"] == name) == 1


def test_cli_render_keeps_only_the_new_user(tmp_path, monkeypatch, capsys):
    out_file = tmp_path / "out" / "definitions.json"
    argv = ["--user", "svc", "--password-stdin", "--write", str(DEFINITIONS)]
    argv += ["--replace-users", "--output", str(out_file)]
    original = DEFINITIONS.read_bytes()
    _run(monkeypatch, capsys, argv, "pw")

    assert DEFINITIONS.read_bytes() == original  # the template is untouched
    rendered = json.loads(out_file.read_text())
    assert [u["name"] for u in rendered["users"]] == ["svc"]
    assert {p["user"] for p in rendered["permissions"]} == {"svc"}
    assert tool.verify("pw", rendered["users"][0]["password_hash"])


def test_cli_render_to_stdout(monkeypatch, capsys):
    argv = ["--user", "svc", "--password-stdin", "--write", str(DEFINITIONS)]
    out = _run(monkeypatch, capsys, [*argv, "--replace-users", "--output", "-"], "pw")
    assert [u["name"] for u in json.loads(out)["users"]] == ["svc"]


def test_upsert_refuses_permissions_on_an_undeclared_vhost():
    definitions = {"vhosts": [{"name": "/"}], "users": [], "permissions": []}
    with pytest.raises(ValueError, match="staging"):
        tool.upsert_user(definitions, tool.user_entry("app", "pw"), ["staging"])


def test_upsert_drops_permissions_of_replaced_users():
    definitions = {
        "vhosts": [{"name": "/"}],
        "users": [tool.user_entry("old", "pw")],
        "permissions": [{"user": "old", "vhost": "/", **tool.FULL_PERMISSIONS}],
        "topic_permissions": [{"user": "old", "vhost": "/", "exchange": "x"}],
    }
    result = tool.upsert_user(definitions, tool.user_entry("new", "pw"), ["/"], replace_users=True)
    assert [u["name"] for u in result["users"]] == ["new"]
    assert [p["user"] for p in result["permissions"]] == ["new"]
    assert result["topic_permissions"] == []
    assert [u["name"] for u in definitions["users"]] == ["old"]  # input not mutated
