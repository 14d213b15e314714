"""Which RabbitMQ versions rabbit-serve supports, and the check every service makes.

Defined once here; ``docker-compose.yaml``, ``cluster.yaml`` and CI pin a broker
inside this range (a unit test holds them to it). The floor is a hard requirement:
before 3.10, quorum queues ignore per-message TTL, so expired work would never be
dead-lettered. The ceiling is what the suite has been run against: a newer broker
is allowed, with a warning.

``python -m rabbit_serve.broker_version`` connects with ``AMQP_URL`` and says where
the broker stands.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

MINIMUM = (3, 10, 0)
TESTED_BELOW = (4, 0, 0)
SUPPORTED = f">={'.'.join(map(str, MINIMUM))},<{'.'.join(map(str, TESTED_BELOW))}"


class UnsupportedBroker(RuntimeError):
    """The broker is older than :data:`MINIMUM`."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``"3.10.8"`` -> ``(3, 10, 8)``; suffixes such as ``-1`` or ``+rc.1`` are ignored."""
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"not a RabbitMQ version: {text!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def server_version(server_properties: Mapping[str, Any]) -> str:
    """The version the broker announced in ``connection.start``."""
    value = server_properties.get("version", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def check_version(version: str, product: str = "RabbitMQ") -> str | None:
    """Raises :class:`UnsupportedBroker` below the floor; returns a warning above the
    tested range, else ``None``."""
    found = parse_version(version)
    if found < MINIMUM:
        raise UnsupportedBroker(
            f"{product} {version} is too old: rabbit-serve needs {SUPPORTED} "
            "(quorum queues honour per-message TTL from 3.10); upgrade the broker"
        )
    if found >= TESTED_BELOW:
        return f"{product} {version} is newer than the tested range {SUPPORTED}"
    return None


async def _report() -> int:
    from rabbit_serve import broker
    from rabbit_serve.settings import get_settings

    connection = await broker.connect(get_settings(), check=False)
    try:
        version = broker.connection_version(connection)
    finally:
        await connection.close()
    try:
        warning = check_version(version)
    except UnsupportedBroker as exc:
        print(exc)
        return 1
    print(warning or f"RabbitMQ {version}: supported ({SUPPORTED})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_report()))
