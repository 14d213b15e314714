"""A bundle delivery (one message, N images) as N deliveries, one per image.

The ingress publishes a multi-image request as one message so that one confirm queues
all of it or none. The consumer still batches, answers and settles image by image, so
each task gets a :class:`Part`: an :class:`~rabbit_serve.transport.Inbound` of its own
whose settlement is recorded, and the real delivery is settled once, when the last
part is:

- any part requeued -> requeue (the broker redelivers the whole bundle; parts already
  answered are then skipped at admission, see :mod:`consumer.admission`);
- every part rejected -> reject (dead-lettered; the answerer answers every part);
- otherwise -> ack (each part was answered, or rejected and answered with its error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rabbit_serve.messages import ClassifyTask, decode_tasks, encode_task
from rabbit_serve.transport import Inbound

ACK, REQUEUE, REJECT = "ack", "requeue", "reject"


def settlement(outcomes: list[str]) -> str:
    """How the real delivery is settled once every part is: the rule above."""
    if REQUEUE in outcomes:
        return REQUEUE
    if outcomes and all(o == REJECT for o in outcomes):
        return REJECT
    return ACK


class Bundle:
    """The real delivery and how many of its parts are still unsettled."""

    def __init__(self, inbound: Inbound, count: int) -> None:
        self.inbound = inbound
        self._outcomes: list[str | None] = [None] * count

    @property
    def settled(self) -> bool:
        return self.inbound.settled

    async def settle_part(self, index: int, how: str) -> None:
        if self._outcomes[index] is not None:
            raise RuntimeError(f"bundle part {index} settled twice")
        # Recorded before any await: parts settled concurrently count exactly once.
        self._outcomes[index] = how
        if any(o is None for o in self._outcomes):
            return
        final = settlement([o for o in self._outcomes if o is not None])
        # The last part's caller settles the real delivery; a SettleFailed reaches it
        # (the broker then redelivers the bundle, and answered parts are skipped).
        await getattr(self.inbound, final)()


class Part:
    """One image of a bundle, shaped like the one-image message it stands for (its
    body, headers and message_id), so code that reads a delivery needs no bundle case."""

    def __init__(self, bundle: Bundle, task: ClassifyTask) -> None:
        message = encode_task(task)
        self.body: bytes = message.body
        self.headers: Mapping[str, Any] = message.headers
        self.message_id: str | None = task.id
        self.reply_to: str | None = bundle.inbound.reply_to
        self.redelivered: bool = bundle.inbound.redelivered
        self._bundle = bundle
        self._index = task.index
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def stale(self) -> bool:
        return self._bundle.inbound.stale

    async def _settle(self, how: str) -> None:
        self._settled = True
        await self._bundle.settle_part(self._index, how)

    async def ack(self) -> None:
        await self._settle(ACK)

    async def requeue(self) -> None:
        await self._settle(REQUEUE)

    async def reject(self) -> None:
        await self._settle(REJECT)

    def __repr__(self) -> str:
        return f"Part({self.message_id!r}, settled={self._settled})"


def parts(inbound: Inbound) -> list[tuple[Inbound, ClassifyTask]]:
    """The tasks of a request delivery, each with the delivery that settles it: the
    delivery itself for a one-image message, a :class:`Part` each for a bundle. Raises
    :class:`~rabbit_serve.messages.MalformedMessage` (nothing settled then)."""
    headers = dict(inbound.headers)
    tasks = decode_tasks(inbound.body, headers, inbound.message_id, inbound.reply_to)
    if len(tasks) == 1 and tasks[0].id == inbound.message_id:
        return [(inbound, tasks[0])]
    bundle = Bundle(inbound, len(tasks))
    return [(Part(bundle, task), task) for task in tasks]
