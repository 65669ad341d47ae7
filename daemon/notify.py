"""In-process notification of batch changes, for long-polls (``/wait``) and the event stream."""

from __future__ import annotations

import asyncio


class BatchChanges:
    """Wake whoever waits on a batch when its state changes."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}
        self._any = asyncio.Event()
        #: set when the daemon stops: every wait returns at once
        self.closed = False

    def close(self) -> None:
        """Release every waiter (the daemon is stopping: long-polls must not hold it up)."""
        self.closed = True
        for event in self._waiters.values():
            event.set()
        self._waiters.clear()
        self._any.set()

    def notify(self, batch_id: str) -> None:
        event = self._waiters.pop(batch_id, None)
        if event is not None:
            event.set()
        self._any.set()
        self._any = asyncio.Event()

    async def wait(self, batch_id: str, seconds: float) -> bool:
        """Wait until the batch changes or ``seconds`` pass; True if it changed."""
        if self.closed:
            return False
        event = self._waiters.setdefault(batch_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def wait_any(self, seconds: float) -> bool:
        """Wait until any batch changes or ``seconds`` pass."""
        if self.closed:
            return False
        try:
            await asyncio.wait_for(self._any.wait(), seconds)
        except TimeoutError:
            return False
        return True
