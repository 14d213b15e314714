"""A guard around every consumer callback: an unexpected exception is logged and the
message settled (requeued), so it never holds a prefetch slot until the connection dies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from consumer.handback import settle
from consumer.outcomes import Rework, Tally
from rabbit_serve.transport import Inbound, SettleFailed

logger = logging.getLogger("rabbit_serve.consumer")

Handler = Callable[[Inbound], Awaitable[None]]


def guarded(handler: Handler, tally: Tally, name: str) -> Handler:
    async def run(inbound: Inbound) -> None:
        try:
            await handler(inbound)
        except SettleFailed as exc:
            # The channel is gone; the broker redelivers the message by itself.
            logger.warning("%s: message %s will be redelivered: %s", name, inbound.message_id, exc)
        except Exception:
            logger.exception("%s failed on message %s", name, inbound.message_id)
            if not inbound.settled:
                tally.again(Rework.REQUEUED)
                await settle(inbound.requeue(), inbound)

    return run
