"""The one writer: a task that drains a queue of write operations and commits them in groups.

SQLite allows one writer at a time and every commit with ``synchronous=FULL`` costs an
fsync, so writes from every task funnel through here: whatever is queued while one
transaction commits goes into the next (group commit). Each operation runs inside its
own savepoint, so one operation's failure (an illegal move, a conflict) rolls back that
operation only. Its caller learns the outcome once the whole group is durable.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiosqlite
import anyio

from store.errors import StoreError, StoreUnavailable, translate

T = TypeVar("T")

#: a write: async function of the connection, run inside the writer's transaction. It may
#: run again if SQLite rolls back its group's transaction for another operation's error,
#: so it must not act outside the database, nor commit or roll back itself.
WriteOp = Callable[[aiosqlite.Connection], Awaitable[T]]


@dataclass(slots=True)
class _Item(Generic[T]):
    op: WriteOp[T]
    future: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = None


@dataclass
class WriterStats:
    commits: int = 0
    operations: int = 0
    failed_commits: int = 0
    last_error: str | None = None
    #: loop time of the last successful commit (for the watchdog and health)
    last_commit_at: float = 0.0
    largest_group: int = field(default=0)


class Writer:
    """Runs write operations in grouped transactions on one connection."""

    def __init__(self, conn: aiosqlite.Connection, *, max_group: int = 500) -> None:
        self._conn = conn
        self._max_group = max_group
        self._queue: asyncio.Queue[_Item[Any] | None] = asyncio.Queue()
        self._closed = False
        self._done = asyncio.Event()
        self.stats = WriterStats()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def write(self, op: WriteOp[T]) -> T:
        """Run ``op`` in the next group and return its result once that group is committed."""
        if self._closed:
            raise StoreUnavailable("the store is closing")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(op, future))
        # shield: a cancelled caller must not leave its op half-known; the op still commits
        return await asyncio.shield(future)

    async def run(self) -> None:
        """The writer loop; returns once ``close()`` was called and the queue is drained."""
        group: list[_Item[Any]] = []
        try:
            while True:
                first = await self._queue.get()
                if first is None:
                    break
                group = [first]
                stop = False
                while len(group) < self._max_group and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stop = True
                        break
                    group.append(item)
                with anyio.CancelScope(shield=True):
                    await self._commit(group)
                if stop:
                    break
        finally:
            self._closed = True
            # anyio's shield does not stop a native Task.cancel(): if the loop was cancelled
            # mid-group, its callers must not wait forever (the outcome is unknown to them)
            for item in group:
                if not item.future.done():
                    item.future.set_exception(
                        StoreUnavailable("the store closed during the write"))
            while not self._queue.empty():  # fail what can no longer be written
                item = self._queue.get_nowait()
                if item is not None and not item.future.done():
                    item.future.set_exception(StoreUnavailable("the store is closed"))
            self._done.set()

    async def close(self) -> None:
        """Stop taking writes, finish what is queued, and wait for the loop to end."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
        await self._done.wait()

    async def _commit(self, group: list[_Item[Any]], *, retry: bool = True) -> None:
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(group, translate(exc))
            await self._abandon()  # never stay wedged inside a stale transaction
            return
        single = len(group) == 1
        for item in group:
            try:
                if not single:
                    await conn.execute("SAVEPOINT op")
                item.result = await item.op(conn)
                if not single:
                    await conn.execute("RELEASE op")
            except Exception as exc:
                item.error = translate(exc) if isinstance(exc, sqlite3.OperationalError) else exc
                if not conn.in_transaction:
                    await self._rolled_back(group, item, retry=retry)
                    return
                try:
                    if single:
                        await conn.execute("ROLLBACK")
                    else:
                        await conn.execute("ROLLBACK TO op")
                        await conn.execute("RELEASE op")
                except sqlite3.Error as rollback_exc:
                    self._fail_all(group, translate(rollback_exc))
                    await self._abandon()
                    return
                if single:
                    self._settle(group)
                    return
        try:
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail_all(group, translate(exc))
            await self._abandon()
            return
        self.stats.commits += 1
        self.stats.operations += len(group)
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        self.stats.last_commit_at = asyncio.get_running_loop().time()
        self._settle(group)

    async def _rolled_back(self, group: list[_Item[Any]], culprit: _Item[Any], *,
                           retry: bool) -> None:
        """SQLite itself rolled back the whole transaction after ``culprit``'s error.

        SQLITE_FULL, SQLITE_IOERR and the like may end the transaction, savepoints
        included, so the work of the group's other operations is gone too. The culprit
        fails with its own error; the others did nothing wrong and run once more in a
        fresh transaction (once: on a full disk they would most likely fail again).
        """
        self.stats.failed_commits += 1
        self.stats.last_error = str(culprit.error)
        self._settle([culprit])
        rest = [item for item in group if item is not culprit]
        if not rest:
            return
        if retry:
            for item in rest:
                item.result = item.error = None
            await self._commit(rest, retry=False)
            return
        error = culprit.error
        if not isinstance(error, StoreError):
            error = StoreUnavailable(f"the transaction was rolled back: {error}")
        for item in rest:
            item.result, item.error = None, error
        self._settle(rest)

    async def _abandon(self) -> None:
        if self._conn.in_transaction:
            try:
                await self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _fail_all(self, group: list[_Item[Any]], error: StoreError) -> None:
        self.stats.failed_commits += 1
        self.stats.last_error = str(error)
        for item in group:
            item.error = error
            item.result = None
        self._settle(group)

    @staticmethod
    def _settle(group: list[_Item[Any]]) -> None:
        for item in group:
            if item.future.done():
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
            else:
                item.future.set_result(item.result)
