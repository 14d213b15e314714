"""Requests waiting for their results: one future per task, resolved by the reply listener.

Waiting is a future, never a polling loop. A result whose request already gave up
(timed out, client gone) finds no future; it is dropped and counted, not kept.
"""

from __future__ import annotations

import asyncio

from rabbit_serve.messages import ClassifyResult


class PendingResults:
    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[ClassifyResult]] = {}
        self.delivered = 0
        self.late = 0

    def __len__(self) -> int:
        return len(self._futures)

    def expect(self, task_id: str) -> asyncio.Future[ClassifyResult]:
        """Register interest in ``task_id`` before its message is published."""
        if task_id in self._futures:
            raise KeyError(f"task {task_id} is already pending")
        future: asyncio.Future[ClassifyResult] = asyncio.get_running_loop().create_future()
        self._futures[task_id] = future
        return future

    def resolve(self, result: ClassifyResult) -> bool:
        """Hand ``result`` to its waiter; ``False`` (and counted as late) if nobody waits."""
        future = self._futures.pop(result.id, None)
        if future is None or future.done():
            self.late += 1
            return False
        future.set_result(result)
        self.delivered += 1
        return True

    def forget(self, task_id: str) -> None:
        """The waiter gave up; a result arriving later is then late."""
        future = self._futures.pop(task_id, None)
        if future is not None and not future.done():
            future.cancel()
