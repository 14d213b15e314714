"""Building blocks for tests that speak the wire format directly."""

from __future__ import annotations

import time
import uuid
from typing import Any

from rabbit_serve.messages import ClassifyTask


def make_task(
    reply_to: str | None = "rabbit-serve.replies.test", *, ttl: float = 10.0, **overrides: Any
) -> ClassifyTask:
    """A valid task with a fresh id, due ``ttl`` seconds from now."""
    now = time.time()
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "request_id": "req",
        "index": 0,
        "image": b"\xff\xd8jpeg bytes",
        "top_k": 5,
        "sent_at": now,
        "deadline": now + ttl,
        "reply_to": reply_to,
    }
    fields.update(overrides)
    return ClassifyTask(**fields)
