"""In-process notification of batch changes, for long-polls (``/wait``) and the event stream."""

from __future__ import annotations

import asyncio


class BatchChanges:
    """Wake whoever waits on a batch when its state changes."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}
        #: how many watchers hold each batch's current event (it is dropped at 0)
        self._holders: dict[str, int] = {}
        self._any = asyncio.Event()
        #: set when the daemon stops: every wait returns at once
        self.closed = False

    def close(self) -> None:
        """Release every waiter (the daemon is stopping: long-polls must not hold it up)."""
        self.closed = True
        self.notify_all()

    def notify(self, batch_id: str) -> None:
        event = self._waiters.pop(batch_id, None)
        if event is not None:
            self._holders.pop(batch_id, None)
            event.set()
        self._any.set()
        self._any = asyncio.Event()

    def notify_all(self) -> None:
        """Wake every waiter (changes may have been missed: each reads its batch again)."""
        for event in self._waiters.values():
            event.set()
        self._waiters.clear()
        self._holders.clear()
        self._any.set()
        self._any = asyncio.Event()

    def watch(self, batch_id: str) -> asyncio.Event:
        """An event set at the batch's next change (or when the daemon stops).

        Take it *before* reading the batch: a change between the read and the wait then
        still wakes the waiter, instead of falling in the gap between the two.
        Every event taken and not set by a change is given back with :meth:`unwatch`.
        """
        if self.closed:
            event = asyncio.Event()
            event.set()
            return event
        self._holders[batch_id] = self._holders.get(batch_id, 0) + 1
        return self._waiters.setdefault(batch_id, asyncio.Event())

    def unwatch(self, batch_id: str, event: asyncio.Event) -> None:
        """Give back an event from :meth:`watch` that its taker will not wait on any more
        (the batch ended, is unknown, or the wait timed out); the last one out drops it."""
        if self._waiters.get(batch_id) is not event:
            return  # set by a change (and dropped then), or the daemon stopped
        left = self._holders.get(batch_id, 1) - 1
        if left > 0:
            self._holders[batch_id] = left
        else:
            del self._waiters[batch_id]
            self._holders.pop(batch_id, None)

    def watched(self) -> int:
        """Batches with a watcher (a leak shows here)."""
        return len(self._waiters)

    async def wait_on(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for an event from :meth:`watch`, for at most ``seconds``."""
        if self.closed:
            return False
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
