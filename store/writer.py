"""The one writer: a task that drains a queue of write operations and commits them in groups.

SQLite allows one writer at a time and every commit with ``synchronous=FULL`` costs an
fsync, so writes from every task funnel through here: whatever is queued while one
transaction commits goes into the next (group commit). Each operation runs inside its
own savepoint, so one operation's failure (an illegal move, a conflict) rolls back that
operation only. Its caller learns the outcome once the whole group is durable.

A whole group runs as one synchronous function on the connection's own thread: each
awaited aiosqlite call is a hop between threads (~0.1 ms), and an operation made of a
dozen statements spent its time hopping, not writing. One hop per group instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiosqlite
import anyio

from qjobd.store.errors import StoreError, StoreUnavailable, translate

T = TypeVar("T")

#: a write: a function of the raw connection, run on the connection's thread inside the
#: writer's transaction. It may run again if SQLite rolls back its group's transaction for
#: another operation's error, so it must not act outside the database, nor commit or roll
#: back itself, and it must not block for long (the whole store waits on it).
WriteOp = Callable[[sqlite3.Connection], T]


@dataclass(slots=True)
class _Item(Generic[T]):
    #: a WriteOp here, store/postgres.py's PgWriteOp there
    op: Callable[[Any], Any]
    future: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = None


@dataclass
class WriterStats:
    commits: int = 0
    operations: int = 0
    failed_commits: int = 0
    last_error: str | None = None
    largest_group: int = field(default=0)
    #: wall seconds of the last committed group (its operations and the fsync), and in all
    last_commit_seconds: float = 0.0
    commit_seconds_total: float = 0.0


@dataclass(slots=True)
class _Outcome:
    """What happened to one group, computed on the connection's thread."""

    committed: bool = False
    failed_commit: StoreError | None = None
    #: errors that ended the transaction early (SQLite rolled back by itself), in order
    rollbacks: list[BaseException] = field(default_factory=list)


async def run_on_connection_thread(conn: aiosqlite.Connection,
                                   fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(raw_connection)`` on aiosqlite's own thread, as one hop.

    aiosqlite has no public call for this; ``_execute`` is how its own methods do it
    (version pinned in pyproject; the store's tests exercise every path through here).
    """
    return await conn._execute(lambda: fn(conn._conn))


class GroupWriter:
    """A task that drains a queue of write operations and commits them in groups.

    Whatever is queued while one group commits goes into the next, at most ``max_group``
    operations a group. A subclass commits a group (``_commit``), records each item's
    result or error, then calls :meth:`_committed` if it committed and :meth:`_settle`.
    The SQLite writer (:class:`Writer`) and PostgreSQL's (store/postgres.py) share this.
    """

    def __init__(self, *, max_group: int) -> None:
        self._max_group = max_group
        self._queue: asyncio.Queue[_Item[Any] | None] = asyncio.Queue()
        self._closed = False
        self._done = asyncio.Event()
        self.stats = WriterStats()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def write(self, op: Callable[[Any], Any]) -> Any:
        """Run ``op`` in the next group and return its result once that group is committed."""
        if self._closed:
            raise StoreUnavailable("the store is closing")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
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

    async def _commit(self, group: list[_Item[Any]]) -> None:
        raise NotImplementedError

    def _committed(self, group: list[_Item[Any]], started: float) -> None:
        """Count a committed group (``started``: its ``time.perf_counter()``)."""
        self.stats.commits += 1
        self.stats.operations += len(group)
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        self.stats.last_commit_seconds = time.perf_counter() - started
        self.stats.commit_seconds_total += self.stats.last_commit_seconds

    @staticmethod
    def _settle(group: list[_Item[Any]]) -> None:
        """Give each caller its item's result, or its error."""
        for item in group:
            if item.future.done():
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
            else:
                item.future.set_result(item.result)


class Writer(GroupWriter):
    """Runs write operations in grouped transactions on one SQLite connection."""

    def __init__(self, conn: aiosqlite.Connection, *, max_group: int = 500) -> None:
        super().__init__(max_group=max_group)
        self._conn = conn

    async def _commit(self, group: list[_Item[Any]]) -> None:
        started = time.perf_counter()
        try:
            outcome = await run_on_connection_thread(
                self._conn, lambda raw: _run_group(raw, group, retry=True))
        except (ValueError, sqlite3.Error) as exc:  # the connection itself is gone
            error = StoreUnavailable(f"the database connection failed: {exc}")
            for item in group:
                item.error, item.result = error, None
            outcome = _Outcome(failed_commit=error)
        for error in outcome.rollbacks:
            self.stats.failed_commits += 1
            self.stats.last_error = str(error)
        if outcome.failed_commit is not None:
            self.stats.failed_commits += 1
            self.stats.last_error = str(outcome.failed_commit)
        if outcome.committed:
            self._committed(group, started)
        self._settle(group)


# -- on the connection's thread ---------------------------------------------------------

def _run_group(conn: sqlite3.Connection, group: list[_Item[Any]], *, retry: bool) -> _Outcome:
    """One transaction for the group; every item ends with a result or an error."""
    outcome = _Outcome()
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        _fail(group, translate(exc), outcome)
        _abandon(conn)  # never stay wedged inside a stale transaction
        return outcome
    single = len(group) == 1
    for item in group:
        try:
            if not single:
                conn.execute("SAVEPOINT op")
            item.result = item.op(conn)
            if not single:
                conn.execute("RELEASE op")
        except Exception as exc:
            item.result = None
            item.error = translate(exc) if isinstance(exc, sqlite3.OperationalError) else exc
            if not conn.in_transaction:
                return _rolled_back(conn, group, item, outcome, retry=retry)
            try:
                if single:
                    conn.execute("ROLLBACK")
                    return outcome
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            except sqlite3.Error as rollback_exc:
                _fail(group, translate(rollback_exc), outcome)
                _abandon(conn)
                return outcome
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _fail(group, translate(exc), outcome)
        _abandon(conn)
        return outcome
    outcome.committed = True
    return outcome


def _rolled_back(conn: sqlite3.Connection, group: list[_Item[Any]], culprit: _Item[Any],
                 outcome: _Outcome, *, retry: bool) -> _Outcome:
    """SQLite itself rolled back the whole transaction after ``culprit``'s error.

    SQLITE_FULL, SQLITE_IOERR and the like may end the transaction, savepoints
    included, so the work of the group's other operations is gone too. The culprit
    fails with its own error; the others did nothing wrong and run once more in a
    fresh transaction (once: on a full disk they would most likely fail again).
    """
    assert culprit.error is not None
    outcome.rollbacks.append(culprit.error)
    rest = [item for item in group if item is not culprit]
    if not rest:
        return outcome
    if retry:
        for item in rest:
            item.result = item.error = None
        again = _run_group(conn, rest, retry=False)
        outcome.rollbacks += again.rollbacks
        outcome.failed_commit = again.failed_commit
        outcome.committed = again.committed
        return outcome
    error = culprit.error
    if not isinstance(error, StoreError):
        error = StoreUnavailable(f"the transaction was rolled back: {error}")
    for item in rest:
        item.result, item.error = None, error
    return outcome


def _fail(group: list[_Item[Any]], error: StoreError, outcome: _Outcome) -> None:
    outcome.failed_commit = error
    for item in group:
        item.error, item.result = error, None


def _abandon(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
