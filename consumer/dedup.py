"""Remembering which tasks this consumer already answered, within a bounded memory."""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """The last ``capacity`` ids seen, oldest forgotten first.

    A message whose result was handed back but whose ack was lost (the connection
    dropped in between) comes back redelivered; if it comes back here, it is acked
    without a second classification. This memory is one process's: a redelivery to
    another consumer is classified again, and a webhook result is kept from a second
    POST by the shared ledger (:mod:`deployments.ledger`), not by this.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, task_id: str) -> None:
        self._ids[task_id] = None
        self._ids.move_to_end(task_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
