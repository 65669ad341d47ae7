"""The store on PostgreSQL: the same interface and promises as :class:`~store.store.Store`.

``[daemon] database = "postgresql://USER@HOST/DB"`` selects it (store/factory.py). The
password is libpq's business ($PGPASSWORD, ``.pgpass``), never the configuration's; one
given in the URL anyway is used, but masked wherever the URL is shown.

Writes go through one writer, as with SQLite: a task that drains a queue of operations
and runs whatever is queued meanwhile as one transaction (one WAL flush for the group),
each operation in its own savepoint, so that one operation's failure rolls back that
operation only. One writer per daemon also keeps the event log's ``seq`` in commit order,
so a reader following the log from a cursor never skips an event committed late. Reads
run on the other connections of the pool (autocommit: each statement sees what is
committed).

Rows are locked as several daemons on one database will need (batch row, then job row),
but until leases exist (issue 15) a daemon holds a session lock on its database, and a
second one refuses to start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import structlog
from psycopg_pool import AsyncConnectionPool

from qjobd.store import retention
from qjobd.store.errors import (
    DiskFull,
    IdempotencyConflict,
    LeaseLost,
    NotFound,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from qjobd.store.factory import mask_url, url_password
from qjobd.store.models import Batch, CircuitRecord, Event, Job, NewBatch, Result, new_id
from qjobd.store.schema import POSTGRES_MIGRATIONS
from qjobd.store.states import ACTIVE, TERMINAL, JobState, can_move, illegal
from qjobd.store.store import _BATCH_COLUMNS, _JOB_COLUMNS, _batch, _dumps, _job, batch_outcome
from qjobd.store.writer import GroupWriter, _Item

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
#: a write: an async function of the writer's connection, run inside the writer's
#: transaction (in a savepoint of its own), in pipeline mode: a statement's rowcount is
#: unknown until its rows are read (use RETURNING). It must not commit or roll back, nor
#: act outside the database; it may run again after a deadlock.
PgWriteOp = Callable[[Conn], Awaitable[T]]

log = structlog.get_logger("qjobd.store")

_ACTIVE_SQL = ", ".join(f"'{s}'" for s in sorted(ACTIVE))
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
#: pg_try_advisory_lock's key for "a daemon serves this database" ('qjobd' in ASCII)
DAEMON_LOCK = 0x716A6F6264
#: pg_advisory_xact_lock's key while migrating
MIGRATION_LOCK = DAEMON_LOCK + 1
#: pg_advisory_xact_lock's key of the event log: a transaction that logs an event holds it
#: until it commits, so ``seq`` is in commit order across every node (a reader following
#: the log from a cursor never skips an event another node committed late)
EVENT_LOCK = DAEMON_LOCK + 2
#: seconds a read or a write group waits for a connection when the server cannot be
#: reached, before it fails (StoreUnavailable: the engine retries later, the API says 503)
POOL_TIMEOUT = 10.0
#: deadlock and serialization failures: the operation is run again, at most this often
_RETRIES = 3
_RETRY_STATES = frozenset({"40001", "40P01"})


class PostgresStore:
    """PostgreSQL persistence for batches, circuits, jobs, results and events."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Conn],
                 lock: Conn | None = None) -> None:
        self.url = url
        #: what health and logs show of the database: the URL, its password masked
        self.path = mask_url(url)
        self._pool = pool
        self._lock = lock
        self.writer = PgWriter(pool, self.mask)
        self._writer_task: asyncio.Task[None] | None = None
        #: this daemon's node (store/cluster.py), once it joined: the jobs of the batches
        #: it stores are leased to it, and its writes for a job are fenced by their epoch
        self.node: str | None = None
        self.lease_seconds = 15.0

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, check: str = "quick", exclusive: bool = False,
                   pool_size: int = 4, lock_wait: float = 5.0) -> PostgresStore:
        """Connect, migrate the schema, then start the writer.

        ``check`` is accepted for the SQLite store's sake (PostgreSQL checks its own pages).
        ``exclusive``: hold a session lock on the database for as long as the store is
        open, and refuse to open if another holder keeps it for ``lock_wait`` seconds (one
        daemon per database; a daemon killed a moment ago holds it until the server sees
        its connection close).
        Refuses a schema newer than this code.
        """
        masked = mask_url(url)
        if url_password(url) is not None:
            log.warning("the database URL holds a password: keep it in $PGPASSWORD or "
                        "~/.pgpass instead", database=masked)
        first: Conn | None = None
        pool: AsyncConnectionPool[Conn] | None = None
        try:
            # one connection first: a database that cannot be reached fails at once, and
            # the schema is current before the pool's connections exist
            first = await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                          connect_timeout=30)
            if exclusive and not await _take_lock(first, lock_wait):
                raise StoreUnavailable(
                    f"another qjobd is already serving on database {masked} (several "
                    "daemons on one PostgreSQL database need leases, not there yet)")
            await _migrate(first, masked)
            # check: a connection the server dropped (a restart, a failover, an idle
            # timeout) is replaced when taken, not found dead by the write that uses it
            pool = AsyncConnectionPool(url, min_size=2, max_size=max(2, pool_size), open=False,
                                       configure=_configure, name="qjobd-store",
                                       timeout=POOL_TIMEOUT,
                                       check=AsyncConnectionPool.check_connection)
            await pool.open(wait=True, timeout=30)
        except BaseException as exc:
            if pool is not None:
                await pool.close()
            if first is not None:
                await first.close()
            if isinstance(exc, psycopg.Error):  # PoolTimeout included
                raise StoreUnavailable(
                    f"{masked}: cannot open the database: {_safe(exc, url)}") from None
            raise
        lock = first if exclusive else None
        if lock is None:
            await first.close()
        store = cls(url, pool, lock)
        store._writer_task = asyncio.get_running_loop().create_task(
            store.writer.run(), name="store-writer")
        return store

    async def close(self) -> None:
        """Finish queued writes, then close every connection."""
        try:
            await self.writer.close()
            task = self._writer_task
            if task is not None:
                await asyncio.wait([task])
                if not task.cancelled():
                    task.result()
        finally:
            await self._pool.close()
            if self._lock is not None:
                await self._lock.close()

    async def write(self, op: PgWriteOp[Any]) -> Any:
        return await self.writer.write(op)

    def mask(self, text: str) -> str:
        """``text`` without the database URL's password."""
        return _safe(text, self.url)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One statement in a transaction of its own, outside the writer (the cluster's
        heartbeats and leases: they must not wait behind a group of job writes)."""
        await self.execute_returning(sql, args, rows=False)

    async def execute_returning(self, sql: str, args: Sequence[Any] = (), *,
                                rows: bool = True) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, args or None)
                return list(await cur.fetchall()) if rows else []
        except psycopg.Error as exc:
            raise _translate(exc, self.mask) from None

    async def labels_of(self, job_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Each job's circuit labels, in submission order."""
        labels: dict[str, list[str]] = {}
        for job_id, label in await self.fetchall(
                "SELECT job_id, label FROM circuits WHERE job_id = ANY(%s) "
                "ORDER BY job_id, position", (list(job_ids),)):
            labels.setdefault(str(job_id), []).append(str(label))
        return {k: tuple(v) for k, v in labels.items()}

    # -- writes ----------------------------------------------------------------------

    async def create_batch(self, new: NewBatch) -> tuple[Batch, bool]:
        """Store a batch with its circuits and queued jobs in one transaction.

        Returns the batch and whether it was created; with an idempotency key already
        used for the same request, the existing batch and False.
        """
        batch_id = new_id()

        async def existing(conn: Conn) -> tuple[Batch, bool] | None:
            row = await _one(conn, "SELECT id, request_hash FROM batches "
                                   "WHERE owner_uid = %s AND idempotency_key = %s",
                             (new.owner_uid, new.idempotency_key))
            if row is None:
                return None
            if row[1] != new.request_hash:
                raise IdempotencyConflict(new.idempotency_key or "", str(row[0]))
            return await _read_batch(conn, str(row[0])), False

        async def op(conn: Conn) -> tuple[Batch, bool]:
            if new.idempotency_key is not None:
                found = await existing(conn)
                if found is not None:
                    return found
            now = time.time()
            # another daemon may insert the same key meanwhile: its row wins, once committed
            inserted = await _one(
                conn,
                "INSERT INTO batches (id, owner_uid, backend, shots, name, tags, options, "
                "timeout, state, idempotency_key, request_hash, created_at, updated_at, "
                "metadata, warnings) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s) ON CONFLICT (owner_uid, idempotency_key) DO NOTHING RETURNING id",
                (batch_id, new.owner_uid, new.backend, new.shots, new.name,
                 _dumps(new.tags), _dumps(new.options), new.timeout, JobState.QUEUED,
                 new.idempotency_key, new.request_hash, now, now,
                 None if new.metadata is None else json.dumps(
                     new.metadata, separators=(",", ":"), ensure_ascii=False),
                 json.dumps(list(new.warnings), ensure_ascii=False) if new.warnings else None))
            if inserted is None:
                found = await existing(conn)
                assert found is not None
                return found
            job_of: dict[str, str] = {}
            job_rows = []
            # the submitting node drives the batch's jobs: leased to it from the start
            lease = (self.node, 1 if self.node is not None else 0)
            for position, labels in enumerate(new.groups):
                job_id = f"{batch_id}-{position}"
                job_rows.append((job_id, batch_id, position, new.backend, f"qjobd-{job_id}",
                                 JobState.QUEUED, now, now, *lease))
                job_of.update((label, job_id) for label in labels)
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO jobs (id, batch_id, position, backend, submission_key, state, "
                    "created_at, updated_at, lease_node, lease_epoch) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", job_rows)
                await cur.execute(
                    "INSERT INTO batch_job_counts (batch_id, state, n) VALUES (%s, %s, %s)",
                    (batch_id, JobState.QUEUED, len(job_rows)))
                await cur.executemany(
                    "INSERT INTO circuits (batch_id, label, position, job_id, source, "
                    "qasm_version, num_qubits, num_clbits) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(batch_id, c.label, i, job_of[c.label], c.source, c.qasm_version,
                      c.num_qubits, c.num_clbits) for i, c in enumerate(new.circuits)])
            await _event(conn, now, batch_id, None, "batch_created", JobState.QUEUED,
                         {"circuits": len(new.circuits), "jobs": len(job_rows)})
            return await _read_batch(conn, batch_id), True

        return await self.write(op)

    async def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        remote_id: str | None = None,
        remote_status: str | None = None,
        error: str | None = None,
        poll_interval: float | None = None,
        next_poll_at: float | None = None,
        results: Mapping[str, Mapping[str, int]] | None = None,
        shots: int | None = None,
        detail: Mapping[str, Any] | None = None,
        epoch: int | None = None,
    ) -> JobState:
        """Move a job to ``target`` and record why, with its results when it completed.

        All in one transaction: the job row, its results, its event and its batch's state.
        Raises IllegalTransition if the state machine does not allow the move from the
        job's current state. Returns the batch's state afterwards. ``epoch``: the lease
        the caller holds (store/cluster.py); LeaseLost, changing nothing, if this node
        holds it no more.
        """
        # before the transaction: counts that cannot be stored fail here, changing nothing
        result_rows = [(label, _dumps(counts),
                        shots if shots is not None else sum(counts.values()))
                       for label, counts in (results or {}).items()]

        async def op(conn: Conn) -> JobState:
            # the batch row first, then the job's: every move of one batch waits its turn,
            # so each sees the others' counts
            row = await _one(conn, "SELECT j.state, j.batch_id, b.cancel_requested, b.state, "
                                   "j.lease_node, j.lease_epoch "
                                   "FROM jobs j JOIN batches b ON b.id = j.batch_id "
                                   "WHERE j.id = %s FOR UPDATE OF b, j", (job_id,))
            if row is not None:
                self._fence(job_id, row[4], row[5], epoch)
            if row is None or not can_move(JobState(row[0]), target):
                raise illegal(job_id, None if row is None else row[0], target)
            current, batch_id = JobState(row[0]), str(row[1])
            now = time.time()
            sets = ["state = %s", "updated_at = %s"]
            args: list[Any] = [target, now]
            if target == JobState.SUBMITTING:
                sets.append("attempts = attempts + 1")
            if target == JobState.QUEUED:
                sets.append("remote_id = NULL")
            for column, value in (("remote_id", remote_id), ("remote_status", remote_status),
                                  ("error", error), ("poll_interval", poll_interval),
                                  # a terminal move stops polling (below), whatever was asked
                                  ("next_poll_at", None if target.terminal else next_poll_at)):
                if value is not None:
                    sets.append(f"{column} = %s")
                    args.append(value)
            if target.terminal:
                sets.append("finished_at = %s")
                args.append(now)
                sets.append("next_poll_at = NULL")
            async with conn.cursor() as cur:
                await cur.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = %s",
                                  (*args, job_id))
                # current != target: no move stays in its state
                await cur.execute(
                    "INSERT INTO batch_job_counts (batch_id, state, n) "
                    "VALUES (%s, %s, -1), (%s, %s, 1) ON CONFLICT (batch_id, state) "
                    "DO UPDATE SET n = batch_job_counts.n + EXCLUDED.n",
                    (batch_id, current, batch_id, target))
                if result_rows:
                    await cur.executemany(
                        "INSERT INTO results (batch_id, label, job_id, counts, shots, "
                        "created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                        [(batch_id, label, job_id, counts, n, now)
                         for label, counts, n in result_rows])
            event_detail = dict(detail or {})
            if error is not None:
                event_detail.setdefault("error", error)
            if remote_id is not None:
                event_detail.setdefault("remote_id", remote_id)
            if remote_status is not None:
                event_detail.setdefault("remote_status", remote_status)
            await _event(conn, now, batch_id, job_id, "job_state", target, event_detail or None)
            # at commit: long-polls and event streams of every node wake (store/cluster.py)
            await conn.execute("SELECT pg_notify('qjobd_batch', %s)",
                               (f"{self.node or ''}|{batch_id}",))
            return await _refresh_batch(conn, batch_id, JobState(row[3]), bool(row[2]), now)

        return await self.write(op)

    async def reschedule(self, updates: Iterable[tuple[str, str | None, float, float]]) -> None:
        """Record polls that changed no state: (job_id, new_raw_status, interval, next_poll_at).

        ``new_raw_status`` is None when the provider's raw status did not change; a changed
        one (an unknown status included) is stored and logged as an event.
        """
        # in id order: two writers never lock the same jobs in opposite orders
        rows = sorted(updates, key=lambda u: u[0])
        if not rows:
            return

        async def op(conn: Conn) -> None:
            now = time.time()
            async with conn.cursor() as cur:
                # a node writes the schedule of the jobs it holds only
                mine = "AND lease_node IS NOT DISTINCT FROM %s"
                await cur.executemany(
                    "UPDATE jobs SET poll_interval = %s, next_poll_at = %s "
                    f"WHERE id = %s AND state IN ({_ACTIVE_SQL}) {mine}",
                    [(interval, due, job_id, self.node) for job_id, _, interval, due in rows])
                for job_id, raw, _, _ in rows:
                    if raw is None:
                        continue
                    await cur.execute(
                        "UPDATE jobs SET remote_status = %s, updated_at = %s "
                        f"WHERE id = %s AND state IN ({_ACTIVE_SQL}) {mine} RETURNING batch_id",
                        (raw, now, job_id, self.node))
                    changed = await cur.fetchone()
                    if changed is not None:
                        await _event(conn, now, str(changed[0]), job_id, "remote_status", None,
                                     {"remote_status": raw})

        await self.write(op)

    async def record_remote_id(self, job_id: str, remote_id: str, *,
                               epoch: int | None = None) -> None:
        """Keep the id of a job still being created (a multi-request submission)."""

        async def op(conn: Conn) -> None:
            now = time.time()
            lease = await _one(conn, "SELECT lease_node, lease_epoch FROM jobs WHERE id = %s "
                                     "FOR UPDATE", (job_id,))
            if lease is not None:
                self._fence(job_id, lease[0], lease[1], epoch)
            row = await _one(
                conn, "UPDATE jobs SET remote_id = %s, updated_at = %s WHERE id = %s "
                      "AND state = %s RETURNING batch_id",
                (remote_id, now, job_id, JobState.SUBMITTING))
            if row is None:
                current = await _one(conn, "SELECT state FROM jobs WHERE id = %s", (job_id,))
                raise illegal(job_id, None if current is None else current[0],
                              JobState.SUBMITTING)
            await _event(conn, now, str(row[0]), job_id, "remote_created", None,
                         {"remote_id": remote_id})

        await self.write(op)

    async def request_cancel(self, batch_id: str) -> bool:
        """Mark a batch for cancellation; False if it was marked already."""

        async def op(conn: Conn) -> bool:
            now = time.time()
            changed = await _one(
                conn, "UPDATE batches SET cancel_requested = true, updated_at = %s "
                      "WHERE id = %s AND NOT cancel_requested RETURNING id",
                (now, batch_id)) is not None
            if changed:
                await _event(conn, now, batch_id, None, "cancel_requested", None, None)
                # at commit: the nodes that hold the batch's jobs cancel them
                await conn.execute("SELECT pg_notify('qjobd_cancel', %s)",
                                   (f"{self.node or ''}|{batch_id}",))
            return changed

        return await self.write(op)

    async def log_event(self, kind: str, *, batch_id: str | None = None,
                        job_id: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None:
        """Append an event that changes no state (e.g. a job run again after a restart)."""

        async def op(conn: Conn) -> None:
            await _event(conn, time.time(), batch_id, job_id, kind, None, detail)

        await self.write(op)

    async def purge_finished(self, before: float, *,
                             chunk: int = retention.CHUNK_BATCHES) -> retention.Purge:
        """Delete the terminal batches finished before ``before`` (epoch seconds), with
        all their rows and events, in writer transactions of at most ``chunk`` batches.

        Active batches are never deleted (store/retention.py says what goes).
        """
        if chunk < 1:
            raise ValueError(f"limit must be >= 1, got {chunk}")
        started = time.monotonic()
        batches = events = chunks = 0
        while True:
            done = await self.write(_purge_chunk(before, chunk))
            batches, events, chunks = batches + done.batches, events + done.events, chunks + 1
            if not done.more or done.batches == 0:
                break
            await asyncio.sleep(0)
        return retention.Purge(batches, events, chunks, time.monotonic() - started)

    def _fence(self, job_id: str, node: str | None, held: int, epoch: int | None) -> None:
        """LeaseLost unless this node holds the job's lease at ``epoch`` (no check for a
        caller that names no epoch: the API, a tool, a daemon alone on its database)."""
        if epoch is None or self.node is None:
            return
        if node != self.node or int(held) != epoch:
            raise LeaseLost(f"job {job_id} is leased to {node or 'no node'} (epoch {held}), "
                            f"not to {self.node} (epoch {epoch})")

    # -- reads -----------------------------------------------------------------------

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run a read on a pooled connection (autocommit: what is committed)."""
        try:
            async with self._pool.connection() as conn:
                return await fn(conn)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"database read failed: {self.mask(str(exc))}") from None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query, on a pooled connection (for tests and tools)."""

        async def read(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, args or None)
            return list(await cur.fetchall())

        return await self._read(read)

    async def get_batch(self, batch_id: str, *, with_jobs: bool = True) -> Batch:
        """The batch (with its jobs unless told otherwise); NotFound if there is none."""
        return await self._read(lambda c: _read_batch(c, batch_id, with_jobs=with_jobs))

    async def list_batches(
        self, *, owner_uid: int | None = None, state: str | None = None,
        backend: str | None = None, limit: int = 100, before_seq: int | None = None,
    ) -> tuple[list[Batch], int | None]:
        """Batches newest first; returns them and the seq to continue from, if any remain."""
        where, args = [], []
        for clause, value in (("owner_uid = %s", owner_uid), ("state = %s", state),
                              ("backend = %s", backend), ("seq < %s", before_seq)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_BATCH_COLUMNS} FROM batches"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT %s"

        async def read(conn: Conn) -> tuple[list[Batch], int | None]:
            rows = await _all(conn, sql, (*args, limit + 1))
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = await _jobs_of(conn, [r[1] for r in rows])
            batches = [_batch(r, jobs.get(r[1], ())) for r in rows]
            return batches, (batches[-1].seq if more else None)

        return await self._read(read)

    async def results(self, batch_id: str) -> list[Result]:
        rows = await self._read(lambda c: _all(
            c, "SELECT r.label, r.job_id, r.counts, r.shots FROM results r "
               "JOIN circuits c ON c.batch_id = r.batch_id AND c.label = r.label "
               "WHERE r.batch_id = %s ORDER BY c.position", (batch_id,)))
        return [Result(label=r[0], job_id=r[1], counts=json.loads(r[2]), shots=r[3])
                for r in rows]

    async def circuits(self, job_id: str) -> list[CircuitRecord]:
        """The circuits one job runs, in submission order."""
        rows = await self._read(lambda c: _all(
            c, "SELECT label, source, qasm_version, num_qubits, num_clbits FROM circuits "
               "WHERE job_id = %s ORDER BY position", (job_id,)))
        return [CircuitRecord(*r) for r in rows]

    async def active_jobs(self, backend: str | None = None) -> list[Job]:
        """Every job not yet terminal (for resuming after a restart)."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({_ACTIVE_SQL})"
        args: tuple[Any, ...] = ()
        if backend is not None:
            sql += " AND backend = %s"
            args = (backend,)
        rows = await self._read(lambda c: _all(c, sql + " ORDER BY batch_id, position", args))
        return [_job(r) for r in rows]

    async def get_job(self, job_id: str) -> Job:
        rows = await self._read(lambda c: _all(
            c, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)))
        if not rows:
            raise NotFound(f"no job {job_id!r}")
        return _job(rows[0])

    async def active_batches(self) -> list[Batch]:
        """Non-terminal batches, without their jobs (for deadlines and cancels)."""
        rows = await self._read(lambda c: _all(
            c, f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state IN ({_ACTIVE_SQL})", ()))
        return [_batch(r, ()) for r in rows]

    async def counts_by_state(self) -> dict[str, dict[str, int]]:
        async def read(conn: Conn) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for table in ("batches", "jobs"):
                rows = await _all(conn, f"SELECT state, count(*) FROM {table} GROUP BY state",
                                  ())
                out[table] = {state: 0 for state in JobState} | {r[0]: r[1] for r in rows}
            return out

        return await self._read(read)

    async def metric_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Jobs by (backend, state) and batches by state (for GET /metrics)."""

        async def read(conn: Conn) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
            jobs = {(r[0], r[1]): r[2] for r in await _all(
                conn, "SELECT backend, state, count(*) FROM jobs GROUP BY backend, state", ())}
            batches = {r[0]: r[1] for r in await _all(
                conn, "SELECT state, count(*) FROM batches GROUP BY state", ())}
            return jobs, batches

        return await self._read(read)

    async def events(self, since: int = 0, *, batch_id: str | None = None,
                     limit: int = 1000) -> list[Event]:
        sql = ("SELECT seq, ts, batch_id, job_id, kind, state, detail FROM events "
               "WHERE seq > %s")
        args: list[Any] = [since]
        if batch_id is not None:
            sql += " AND batch_id = %s"
            args.append(batch_id)
        rows = await self._read(lambda c: _all(c, sql + " ORDER BY seq LIMIT %s",
                                               (*args, limit)))
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None)
                for r in rows]


# -- the writer --------------------------------------------------------------------------

class PgWriter(GroupWriter):
    """Runs write operations in grouped transactions on one pooled connection.

    The counterpart of :class:`store.writer.Writer`, on the same queue, group, close and
    cancellation machinery (:class:`store.writer.GroupWriter`). At most ``max_group``
    operations share a transaction: each is a subtransaction, and PostgreSQL's snapshots
    slow down past 64 of those.
    """

    def __init__(self, pool: AsyncConnectionPool[Conn], mask: Callable[[str], str], *,
                 max_group: int = 64) -> None:
        super().__init__(max_group=max_group)
        self._pool = pool
        self._mask = mask

    async def _commit(self, group: list[_Item[Any]]) -> None:
        started = time.perf_counter()
        committed = False
        try:
            async with self._pool.connection() as conn:
                # pipeline mode: statements whose answers an operation does not read go
                # out without waiting for them; each savepoint's end is a sync point, so
                # an error still belongs to the operation that caused it
                async with conn.pipeline(), conn.transaction():
                    await self._run_group(conn, group)
                committed = True
        except psycopg.Error as exc:  # the commit, or the connection itself, failed
            error = _translate(exc, self._mask)
            for item in group:
                item.error, item.result = error, None
            self.stats.failed_commits += 1
            self.stats.last_error = str(error)
        if committed:
            self._committed(group, started)
        self._settle(group)

    async def _run_group(self, conn: Conn, group: list[_Item[Any]]) -> None:
        """Each item in a savepoint of its own; a deadlock or serialization failure runs
        the item again, a few times."""
        for item in group:
            for attempt in range(_RETRIES + 1):
                item.result = item.error = None
                try:
                    async with conn.transaction():  # a savepoint
                        item.result = await item.op(conn)
                    break
                except Exception as exc:
                    item.result = None
                    if isinstance(exc, psycopg.OperationalError):
                        item.error = _translate(exc, self._mask)
                        self.stats.last_error = str(item.error)
                    else:
                        item.error = exc
                    if not (isinstance(exc, psycopg.Error) and _retryable(exc)) \
                            or attempt == _RETRIES:
                        break


# -- helpers -----------------------------------------------------------------------------

async def _configure(conn: Conn) -> None:
    # reads see each statement's committed state; the writer opens its own transactions
    await conn.set_autocommit(True)


async def _one(conn: Conn, sql: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
    cur = await conn.execute(sql, args)
    return await cur.fetchone()


async def _all(conn: Conn, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, args)
    return list(await cur.fetchall())


async def _take_lock(conn: Conn, wait: float) -> bool:
    """Take the daemon's session lock on the database, trying for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        held = await _one(conn, "SELECT pg_try_advisory_lock(%s)", (DAEMON_LOCK,))
        if held is not None and held[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def _migrate(conn: Conn, where: str) -> None:
    """Apply the missing steps of POSTGRES_MIGRATIONS, all in one transaction."""
    try:
        async with conn.transaction():
            # two daemons starting at once: one migrates, the other then finds it done
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(b"CREATE TABLE IF NOT EXISTS qjobd_schema "
                               b"(version INTEGER NOT NULL)")
            row = await _one(conn, "SELECT version FROM qjobd_schema", ())
            if row is None:
                await conn.execute(b"INSERT INTO qjobd_schema (version) VALUES (0)")
            version = int(row[0]) if row else 0
            if version > len(POSTGRES_MIGRATIONS):
                raise SchemaTooNew(
                    f"{where}: schema version {version} is newer than this qjobd knows "
                    f"({len(POSTGRES_MIGRATIONS)}); upgrade qjobd or use another database")
            for step in range(version, len(POSTGRES_MIGRATIONS)):
                try:
                    await conn.execute(POSTGRES_MIGRATIONS[step].encode())
                except psycopg.Error as exc:
                    raise StoreError(f"{where}: migration {step + 1} failed: {exc}") from exc
                await conn.execute("UPDATE qjobd_schema SET version = %s", (step + 1,))
    except psycopg.Error as exc:
        raise StoreUnavailable(f"{where}: cannot migrate the database: {exc}") from exc


async def _read_batch(conn: Conn, batch_id: str, *, with_jobs: bool = True) -> Batch:
    row = await _one(conn, f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = %s", (batch_id,))
    if row is None:
        raise NotFound(f"no batch {batch_id!r}")
    if not with_jobs:
        return _batch(row, ())
    return _batch(row, (await _jobs_of(conn, [batch_id])).get(batch_id, ()))


async def _jobs_of(conn: Conn, batch_ids: Sequence[str]) -> dict[str, tuple[Job, ...]]:
    if not batch_ids:
        return {}
    ids = list(batch_ids)
    labels: dict[str, list[str]] = {}
    for job_id, label in await _all(
            conn, "SELECT job_id, label FROM circuits WHERE batch_id = ANY(%s) "
                  "ORDER BY position", (ids,)):
        labels.setdefault(job_id, []).append(label)
    out: dict[str, list[Job]] = {}
    for r in await _all(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE batch_id = ANY(%s) "
                              "ORDER BY batch_id, position", (ids,)):
        job = _job(r, tuple(labels.get(r[0], ())))
        out.setdefault(job.batch_id, []).append(job)
    return {k: tuple(v) for k, v in out.items()}


async def _event(conn: Conn, ts: float, batch_id: str | None, job_id: str | None,
                 kind: str, state: str | None, detail: Mapping[str, Any] | None) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
    await conn.execute(
        "INSERT INTO events (ts, batch_id, job_id, kind, state, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (ts, batch_id, job_id, kind, state, _dumps(detail) if detail else None))


async def _refresh_batch(conn: Conn, batch_id: str, old: JobState, cancel_requested: bool,
                         now: float) -> JobState:
    """Recompute a batch's state from its job counts; log and store it if it changed.

    The caller holds the batch's row lock, so ``old`` and ``cancel_requested`` are current.
    """
    counts = {JobState(state): n for state, n in await _all(
        conn, "SELECT state, n FROM batch_job_counts WHERE batch_id = %s AND n > 0",
        (batch_id,))}
    new, error = batch_outcome(counts, cancel_requested=cancel_requested)
    if new != old:
        await conn.execute(
            "UPDATE batches SET state = %s, updated_at = %s, error = %s, finished_at = %s "
            "WHERE id = %s",
            (new, now, error, now if new.terminal else None, batch_id))
        await _event(conn, now, batch_id, None, "batch_state", new, None)
    return new


def _purge_chunk(cutoff: float, limit: int) -> PgWriteOp[retention.Chunk]:
    """Delete up to ``limit`` terminal batches finished before ``cutoff`` (set-wise: no
    per-batch loop, so no time budget is needed to keep the chunk short)."""

    async def op(conn: Conn) -> retention.Chunk:
        due = [str(r[0]) for r in await _all(
            conn,
            "SELECT b.id FROM batches b "
            f"WHERE b.finished_at < %s AND b.state IN ({_TERMINAL_SQL}) "
            "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id "
            f"AND j.state IN ({_ACTIVE_SQL})) "
            "ORDER BY b.finished_at LIMIT %s FOR UPDATE OF b", (cutoff, limit))]
        events = batches = 0
        if due:
            events = await _deleted(conn, "DELETE FROM events WHERE batch_id = ANY(%s)", (due,))
            batches = await _deleted(conn, "DELETE FROM batches WHERE id = ANY(%s)", (due,))
        more = len(due) == limit
        if not more:  # the last chunk: events of no batch, by age
            events += await _deleted(
                conn, "DELETE FROM events WHERE batch_id IS NULL AND ts < %s", (cutoff,))
        return retention.Chunk(batches, events, more)

    return op


async def _deleted(conn: Conn, delete: str, args: Sequence[Any]) -> int:
    """How many rows ``delete`` removed (counted by the server: in pipeline mode a
    cursor's rowcount is not known until its result is read)."""
    row = await _one(conn, f"WITH gone AS ({delete} RETURNING 1) SELECT count(*) FROM gone",
                     args)
    return int(row[0]) if row else 0


def _retryable(exc: psycopg.Error) -> bool:
    return exc.sqlstate in _RETRY_STATES


def _translate(exc: psycopg.Error, mask: Callable[[str], str]) -> StoreError:
    """The StoreError for a psycopg error raised by a write."""
    text = mask(str(exc).strip())
    if isinstance(exc, psycopg.errors.DiskFull):
        return DiskFull(f"database write failed: {text}")
    return StoreUnavailable(f"database write failed: {text}")


def _safe(exc: object, url: str) -> str:
    """``exc``'s text without the URL's password."""
    text = str(exc).strip()
    password = url_password(url)
    if password:
        text = text.replace(password, "***")
    return text
