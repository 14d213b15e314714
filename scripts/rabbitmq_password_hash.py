"""Hash RabbitMQ passwords for definitions files, without a running broker.

RabbitMQ stores internal-database passwords as ``rabbit_password_hashing_sha256``:
a 4-byte random salt, then ``base64(salt + sha256(salt + utf8(password)))``.
This script produces exactly that, so ``rabbitmq/definitions.json`` can carry a
user whose password never appears in the repository, in a config file or on a
command line.

The password is read from standard input (``--password-stdin``, one trailing
newline stripped) or from an interactive prompt; it is never accepted as an
argument, because arguments end up in shell history and ``ps`` output.

Usage::

    # Just the hash:
    python scripts/rabbitmq_password_hash.py

    # A definitions "users" entry, as JSON:
    printf %s "$RABBITMQ_PASSWORD" | \\
        python scripts/rabbitmq_password_hash.py --user rabbit-serve --password-stdin

    # Add or update a user (and its permissions on vhost "/") in place; this is
    # how the committed template was made, with the placeholder password only
    # (tests/unit/test_deploy_files.py refuses any other):
    printf %s change-me | python scripts/rabbitmq_password_hash.py \\
        --user rabbit-serve --password-stdin --tags management \\
        --write rabbitmq/definitions.json

    # Render a copy for one broker, keeping only this user (docker-compose.yaml
    # and cluster.yaml do this so the template's placeholder user never loads):
    printf %s "$RABBITMQ_PASSWORD" | python scripts/rabbitmq_password_hash.py \\
        --user "$RABBITMQ_USER" --password-stdin --tags management \\
        --write rabbitmq/definitions.json --replace-users --output /out/definitions.json
    # (--output - prints the result instead, e.g. for `rabbitmqctl import_definitions`.)

The committed ``rabbitmq/definitions.json`` is a template: its ``rabbit-serve``
user has the hash of the placeholder password ``change-me`` (see
``PLACEHOLDER_PASSWORD``) so the file is importable as-is for a throwaway local
broker, and is replaced by a real hash whenever the compose stack or the
cluster renders it. Never load the template unmodified on a reachable broker.

Only the standard library is used, so the script runs in a bare ``python``
container, without the project installed.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

ALGORITHM = "rabbit_password_hashing_sha256"
SALT_BYTES = 4
PLACEHOLDER_PASSWORD = "change-me"
# configure, write, read: the app declares its own queues, so it needs all three.
FULL_PERMISSIONS = {"configure": ".*", "write": ".*", "read": ".*"}


def _digest(salt: bytes, password: str) -> bytes:
    return hashlib.sha256(salt + password.encode("utf-8")).digest()


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` hash of ``password``.

    ``salt`` is for tests and known vectors only; leave it out so each hash
    gets fresh random bytes.
    """
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes, got {len(salt)}")
    return base64.b64encode(salt + _digest(salt, password)).decode("ascii")


def verify(password: str, password_hash: str) -> bool:
    """Whether ``password_hash`` (as stored by RabbitMQ) matches ``password``."""
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    if len(raw) != SALT_BYTES + hashlib.sha256().digest_size:
        return False
    salt, expected = raw[:SALT_BYTES], raw[SALT_BYTES:]
    return hmac.compare_digest(expected, _digest(salt, password))


def user_entry(name: str, password: str, tags: list[str] | None = None) -> dict[str, Any]:
    """A ``users`` item for a definitions file.

    Tags are written as one comma-separated string rather than the list newer
    brokers export: RabbitMQ 3.8 and 3.9 (Ubuntu 22.04's package) only import
    the string form, and every later version accepts it too.
    """
    if not name:
        raise ValueError("user name must not be empty")
    return {
        "name": name,
        "password_hash": hash_password(password),
        "hashing_algorithm": ALGORITHM,
        "tags": ",".join(tags or []),
        "limits": {},
    }


def upsert_user(
    definitions: dict[str, Any],
    user: dict[str, Any],
    vhosts: list[str],
    *,
    replace_users: bool = False,
) -> dict[str, Any]:
    """Return ``definitions`` with ``user`` added or replaced, and given full rights on ``vhosts``.

    With ``replace_users`` every other user and its permissions are dropped, so a
    rendered file holds exactly one account.
    """
    name = user["name"]
    result = dict(definitions)
    users = [] if replace_users else [u for u in result.get("users", []) if u["name"] != name]
    result["users"] = [*users, user]

    keep = {u["name"] for u in result["users"]}
    permissions = [p for p in result.get("permissions", []) if p.get("user") in keep]
    declared = {v["name"] for v in result.get("vhosts", [])}
    for vhost in vhosts:
        if vhost not in declared:
            # Importing permissions on an undeclared vhost fails the whole import.
            raise ValueError(f"vhost {vhost!r} is not declared in the definitions")
        permissions = [
            p for p in permissions if not (p.get("user") == name and p.get("vhost") == vhost)
        ]
        permissions.append({"user": name, "vhost": vhost, **FULL_PERMISSIONS})
    result["permissions"] = permissions
    if "topic_permissions" in result:
        result["topic_permissions"] = [
            p for p in result["topic_permissions"] if p.get("user") in keep
        ]
    return result


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.read()
        # `echo` adds one newline; a password ending in newlines is not worth supporting.
        password = password.removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("RabbitMQ password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("passwords differ")
    if not password:
        raise SystemExit("empty password refused")
    return password


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Write then rename, so a broker reading the file never sees half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        # mkstemp creates 0600; the broker in another container runs as another uid.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Hash a RabbitMQ password (rabbit_password_hashing_sha256).",
        # Otherwise "--password SECRET" would pass as an abbreviation of --password-stdin.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of prompting",
    )
    parser.add_argument("--user", help="print a definitions user entry for this name")
    parser.add_argument(
        "--tags",
        default="",
        help="comma-separated user tags, e.g. 'management' for the web UI (default: none)",
    )
    parser.add_argument(
        "--vhost",
        action="append",
        help="vhost to grant full permissions on with --write (repeatable; default: /)",
    )
    parser.add_argument(
        "--write",
        type=Path,
        metavar="DEFINITIONS",
        help="add or update the user in this definitions file (needs --user)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="with --write: write the result here instead of in place ('-': standard output)",
    )
    parser.add_argument(
        "--replace-users",
        action="store_true",
        help="with --write: drop every other user and its permissions",
    )
    args = parser.parse_args(argv)

    if (args.write or args.output or args.replace_users) and not args.user:
        parser.error("--write, --output and --replace-users need --user")
    if (args.output or args.replace_users) and not args.write:
        parser.error("--output and --replace-users need --write")

    password = _read_password(args.password_stdin)
    if not args.user:
        print(hash_password(password))
        return 0

    tags = [tag.strip() for tag in args.tags.split(",") if tag.strip()]
    entry = user_entry(args.user, password, tags)
    if not args.write:
        print(json.dumps(entry, indent=2))
        return 0

    definitions = json.loads(args.write.read_text(encoding="utf-8"))
    try:
        updated = upsert_user(
            definitions, entry, args.vhost or ["/"], replace_users=args.replace_users
        )
    except ValueError as exc:
        parser.error(str(exc))
    if str(args.output) == "-":
        print(json.dumps(updated, indent=2))
    else:
        _write_json(args.output or args.write, updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
