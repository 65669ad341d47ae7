"""The store: every database operation of qjobd, behind one class.

Writes go through the one :class:`~store.writer.Writer` (grouped, FULL-sync commits);
reads use their own connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from qjobd.store import retention
from qjobd.store.errors import (
    CorruptDatabase,
    IdempotencyConflict,
    NotFound,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from qjobd.store.models import Batch, CircuitRecord, Event, Job, NewBatch, Result, new_id
from qjobd.store.schema import MIGRATIONS
from qjobd.store.states import ACTIVE, JobState, batch_state, can_move, illegal
from qjobd.store.writer import WriteOp, Writer, run_on_connection_thread

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # FULL: an acknowledged batch survives power loss, not only a process crash
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)
_ACTIVE_SQL = ", ".join(f"'{s}'" for s in sorted(ACTIVE))

_JOB_COLUMNS = (
    "id, batch_id, position, backend, submission_key, remote_id, state, remote_status, error, "
    "attempts, poll_interval, next_poll_at, created_at, updated_at, finished_at"
)
_BATCH_COLUMNS = (
    "seq, id, owner_uid, backend, shots, name, tags, options, timeout, state, error, "
    "cancel_requested, created_at, updated_at, finished_at, metadata, warnings"
)


class Store:
    """SQLite persistence for batches, circuits, jobs, results and events."""

    def __init__(self, path: Path, writer_conn: aiosqlite.Connection,
                 reader: aiosqlite.Connection) -> None:
        self.path = path
        self._wconn = writer_conn
        self._reader = reader
        self.writer = Writer(writer_conn)
        self._writer_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, check: str = "quick") -> Store:
        """Open (creating if needed) and migrate the database, then start the writer.

        ``check`` is ``"quick"`` (``PRAGMA quick_check``), ``"full"`` (integrity_check)
        or ``"none"``. Refuses a corrupt file and a schema newer than this code.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        wconn = await _connect(path)
        try:
            await _check_integrity(wconn, path, check)
            await _migrate(wconn, path)
            reader = await _connect(path, query_only=True)
        except BaseException:
            await wconn.close()
            raise
        store = cls(path, wconn, reader)
        store._writer_task = asyncio.get_running_loop().create_task(
            store.writer.run(), name="store-writer")
        return store

    async def close(self) -> None:
        """Finish queued writes, then close both connections."""
        try:
            await self.writer.close()
            task = self._writer_task
            if task is not None:
                # wait, not await: a cancelled writer must not make close() look cancelled
                await asyncio.wait([task])
                if not task.cancelled():
                    task.result()  # a crashed writer is a bug: say so
        finally:
            await self._reader.close()
            await self._wconn.close()

    async def write(self, op: WriteOp[Any]) -> Any:
        return await self.writer.write(op)

    # -- writes ----------------------------------------------------------------------

    async def create_batch(self, new: NewBatch) -> tuple[Batch, bool]:
        """Store a batch with its circuits and queued jobs in one transaction.

        Returns the batch and whether it was created; with an idempotency key already
        used for the same request, the existing batch and False.
        """
        batch_id = new_id()

        # The answer is read inside the write: once the write is committed, close() may
        # shut the reader before this caller runs again.
        def op(conn: sqlite3.Connection) -> tuple[Batch, bool]:
            if new.idempotency_key is not None:
                row = conn.execute("SELECT id, request_hash FROM batches "
                                   "WHERE owner_uid = ? AND idempotency_key = ?",
                                   (new.owner_uid, new.idempotency_key)).fetchone()
                if row is not None:
                    if row[1] != new.request_hash:
                        raise IdempotencyConflict(new.idempotency_key, row[0])
                    return _read_batch(conn, str(row[0])), False
            now = time.time()
            conn.execute(
                "INSERT INTO batches (id, owner_uid, backend, shots, name, tags, options, "
                "timeout, state, idempotency_key, request_hash, created_at, updated_at, "
                "metadata, warnings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, new.owner_uid, new.backend, new.shots, new.name,
                 _dumps(new.tags), _dumps(new.options), new.timeout, JobState.QUEUED,
                 new.idempotency_key, new.request_hash, now, now,
                 # as given: the submitter's key order is kept
                 None if new.metadata is None else json.dumps(
                     new.metadata, separators=(",", ":"), ensure_ascii=False),
                 json.dumps(list(new.warnings), ensure_ascii=False) if new.warnings else None))
            job_of: dict[str, str] = {}
            job_rows = []
            for position, labels in enumerate(new.groups):
                job_id = f"{batch_id}-{position}"
                job_rows.append((job_id, batch_id, position, new.backend, f"qjobd-{job_id}",
                                 JobState.QUEUED, now, now))
                job_of.update((label, job_id) for label in labels)
            conn.executemany(
                "INSERT INTO jobs (id, batch_id, position, backend, submission_key, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", job_rows)
            conn.execute("INSERT INTO batch_job_counts (batch_id, state, n) VALUES (?, ?, ?)",
                         (batch_id, JobState.QUEUED, len(job_rows)))
            conn.executemany(
                "INSERT INTO circuits (batch_id, label, position, job_id, source, qasm_version, "
                "num_qubits, num_clbits) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(batch_id, c.label, i, job_of[c.label], c.source, c.qasm_version,
                  c.num_qubits, c.num_clbits) for i, c in enumerate(new.circuits)])
            _event(conn, now, batch_id, None, "batch_created", JobState.QUEUED,
                   {"circuits": len(new.circuits), "jobs": len(job_rows)})
            return _read_batch(conn, batch_id), True

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

        (``epoch``, a job lease's, fences writes of several daemons on one PostgreSQL
        store; one daemon alone on its SQLite file holds every job: it is not checked.)

        All in one transaction: the job row, its results, its event and its batch's state.
        Raises IllegalTransition if the state machine does not allow the move from the
        job's current state. Returns the batch's state afterwards.
        """

        def op(conn: sqlite3.Connection) -> JobState:
            row = conn.execute("SELECT state, batch_id FROM jobs WHERE id = ?",
                               (job_id,)).fetchone()
            if row is None or not can_move(JobState(row[0]), target):
                raise illegal(job_id, None if row is None else row[0], target)
            current, batch_id = JobState(row[0]), str(row[1])
            now = time.time()
            sets = ["state = ?", "updated_at = ?"]
            args: list[Any] = [target, now]
            if target == JobState.SUBMITTING:
                sets.append("attempts = attempts + 1")
            if target == JobState.QUEUED:
                sets.append("remote_id = NULL")
            for column, value in (("remote_id", remote_id), ("remote_status", remote_status),
                                  ("error", error), ("poll_interval", poll_interval),
                                  ("next_poll_at", next_poll_at)):
                if value is not None:
                    sets.append(f"{column} = ?")
                    args.append(value)
            if target.terminal:
                sets.append("finished_at = ?")
                args.append(now)
                sets.append("next_poll_at = NULL")
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
            conn.execute("UPDATE batch_job_counts SET n = n - 1 WHERE batch_id = ? AND state = ?",
                         (batch_id, current))
            conn.execute("INSERT INTO batch_job_counts (batch_id, state, n) VALUES (?, ?, 1) "
                         "ON CONFLICT (batch_id, state) DO UPDATE SET n = n + 1",
                         (batch_id, target))
            if results:
                conn.executemany(
                    "INSERT INTO results (batch_id, label, job_id, counts, shots, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(batch_id, label, job_id, _dumps(counts),
                      shots if shots is not None else sum(counts.values()), now)
                     for label, counts in results.items()])
            event_detail = dict(detail or {})
            if error is not None:
                event_detail.setdefault("error", error)
            if remote_id is not None:
                event_detail.setdefault("remote_id", remote_id)
            if remote_status is not None:
                event_detail.setdefault("remote_status", remote_status)
            _event(conn, now, batch_id, job_id, "job_state", target, event_detail or None)
            return _refresh_batch(conn, batch_id, now)

        return await self.write(op)

    async def reschedule(self, updates: Iterable[tuple[str, str | None, float, float]]) -> None:
        """Record polls that changed no state: (job_id, new_raw_status, interval, next_poll_at).

        ``new_raw_status`` is None when the provider's raw status did not change; a changed
        one (an unknown status included) is stored and logged as an event.
        """
        rows = list(updates)
        if not rows:
            return

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(
                "UPDATE jobs SET poll_interval = ?, next_poll_at = ? "
                f"WHERE id = ? AND state IN ({_ACTIVE_SQL})",
                [(interval, due, job_id) for job_id, _, interval, due in rows])
            for job_id, raw, _, _ in rows:
                if raw is None:
                    continue
                changed = conn.execute(
                    "UPDATE jobs SET remote_status = ?, updated_at = ? "
                    f"WHERE id = ? AND state IN ({_ACTIVE_SQL}) RETURNING batch_id",
                    (raw, now, job_id)).fetchone()
                if changed is not None:
                    _event(conn, now, str(changed[0]), job_id, "remote_status", None,
                           {"remote_status": raw})

        await self.write(op)

    async def record_remote_id(self, job_id: str, remote_id: str, *,
                               epoch: int | None = None) -> None:
        """Keep the id of a job still being created (a multi-request submission)."""

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(
                "UPDATE jobs SET remote_id = ?, updated_at = ? WHERE id = ? AND state = ? "
                "RETURNING batch_id", (remote_id, now, job_id, JobState.SUBMITTING)).fetchone()
            if row is None:
                current = conn.execute("SELECT state FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()
                raise illegal(job_id, None if current is None else current[0],
                              JobState.SUBMITTING)
            _event(conn, now, str(row[0]), job_id, "remote_created", None,
                   {"remote_id": remote_id})

        await self.write(op)

    async def request_cancel(self, batch_id: str) -> bool:
        """Mark a batch for cancellation; False if it was marked already."""

        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            changed = conn.execute(
                "UPDATE batches SET cancel_requested = 1, updated_at = ? "
                "WHERE id = ? AND cancel_requested = 0", (now, batch_id)).rowcount > 0
            if changed:
                _event(conn, now, batch_id, None, "cancel_requested", None, None)
            return changed

        return await self.write(op)

    async def log_event(self, kind: str, *, batch_id: str | None = None,
                        job_id: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None:
        """Append an event that changes no state (e.g. a job run again after a restart)."""

        def op(conn: sqlite3.Connection) -> None:
            _event(conn, time.time(), batch_id, job_id, kind, None, detail)

        await self.write(op)

    async def purge_finished(self, before: float, *,
                             chunk: int = retention.CHUNK_BATCHES) -> retention.Purge:
        """Delete the terminal batches finished before ``before`` (epoch seconds), with
        all their rows and events, in writer transactions of at most ``chunk`` batches.

        Active batches are never deleted. See store/retention.py.
        """
        return await retention.purge_finished(self, before, chunk=chunk)

    # -- reads -----------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the reader's thread: one hop, however many statements."""
        return await run_on_connection_thread(self._reader, fn)

    async def get_batch(self, batch_id: str, *, with_jobs: bool = True) -> Batch:
        """The batch (with its jobs unless told otherwise); NotFound if there is none."""
        return await self._read(lambda c: _read_batch(c, batch_id, with_jobs=with_jobs))

    async def list_batches(
        self, *, owner_uid: int | None = None, state: str | None = None,
        backend: str | None = None, limit: int = 100, before_seq: int | None = None,
    ) -> tuple[list[Batch], int | None]:
        """Batches newest first; returns them and the seq to continue from, if any remain."""
        where, args = [], []
        for clause, value in (("owner_uid = ?", owner_uid), ("state = ?", state),
                              ("backend = ?", backend), ("seq < ?", before_seq)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_BATCH_COLUMNS} FROM batches"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        def read(conn: sqlite3.Connection) -> tuple[list[Batch], int | None]:
            rows = conn.execute(sql, (*args, limit + 1)).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = _jobs_of(conn, [r[1] for r in rows])
            batches = [_batch(r, jobs.get(r[1], ())) for r in rows]
            return batches, (batches[-1].seq if more else None)

        return await self._read(read)

    async def results(self, batch_id: str) -> list[Result]:
        rows = await self._reader.execute_fetchall(
            "SELECT r.label, r.job_id, r.counts, r.shots FROM results r "
            "JOIN circuits c ON c.batch_id = r.batch_id AND c.label = r.label "
            "WHERE r.batch_id = ? ORDER BY c.position", (batch_id,))
        return [Result(label=r[0], job_id=r[1], counts=json.loads(r[2]), shots=r[3])
                for r in rows]

    async def circuits(self, job_id: str) -> list[CircuitRecord]:
        """The circuits one job runs, in submission order."""
        rows = await self._reader.execute_fetchall(
            "SELECT label, source, qasm_version, num_qubits, num_clbits FROM circuits "
            "WHERE job_id = ? ORDER BY position", (job_id,))
        return [CircuitRecord(*r) for r in rows]

    async def active_jobs(self, backend: str | None = None) -> list[Job]:
        """Every job not yet terminal (for resuming after a restart)."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({_ACTIVE_SQL})"
        args: tuple[Any, ...] = ()
        if backend is not None:
            sql += " AND backend = ?"
            args = (backend,)
        rows = await self._reader.execute_fetchall(sql + " ORDER BY batch_id, position", args)
        return [_job(r) for r in rows]

    async def get_job(self, job_id: str) -> Job:
        rows = await self._reader.execute_fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id!r}")
        return _job(next(iter(rows)))

    async def active_batches(self) -> list[Batch]:
        """Non-terminal batches, without their jobs (for deadlines and cancels)."""
        rows = await self._reader.execute_fetchall(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state IN ({_ACTIVE_SQL})")
        return [_batch(r, ()) for r in rows]

    async def counts_by_state(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for table in ("batches", "jobs"):
            rows = await self._reader.execute_fetchall(
                f"SELECT state, count(*) FROM {table} GROUP BY state")
            out[table] = {state: 0 for state in JobState} | {r[0]: r[1] for r in rows}
        return out

    async def metric_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Jobs by (backend, state) and batches by state, in one hop (for GET /metrics).

        One grouped scan of the jobs table (~70 ms for 100,000 jobs); batches are counted
        from their state index. States with no rows are absent.
        """
        def read(conn: sqlite3.Connection) -> tuple[dict[tuple[str, str], int],
                                                    dict[str, int]]:
            jobs = {(r[0], r[1]): r[2] for r in conn.execute(
                "SELECT backend, state, count(*) FROM jobs GROUP BY backend, state")}
            batches = {r[0]: r[1] for r in conn.execute(
                "SELECT state, count(*) FROM batches GROUP BY state")}
            return jobs, batches

        return await self._read(read)

    async def events(self, since: int = 0, *, batch_id: str | None = None,
                     limit: int = 1000) -> list[Event]:
        sql = "SELECT seq, ts, batch_id, job_id, kind, state, detail FROM events WHERE seq > ?"
        args: list[Any] = [since]
        if batch_id is not None:
            sql += " AND batch_id = ?"
            args.append(batch_id)
        rows = await self._reader.execute_fetchall(sql + " ORDER BY seq LIMIT ?", (*args, limit))
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None)
                for r in rows]

# -- helpers ---------------------------------------------------------------------------

async def _connect(path: Path, *, query_only: bool = False) -> aiosqlite.Connection:
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path}: cannot open the database: {exc}") from exc
    try:
        for pragma in _PRAGMAS + (("PRAGMA query_only=ON",) if query_only else ()):
            await conn.execute(pragma)
    except BaseException as exc:
        # an unclosed connection's (non-daemon) thread would keep the process from exiting
        await conn.close()
        if isinstance(exc, sqlite3.DatabaseError) and _is_corrupt(exc):
            raise _corrupt(path, exc) from exc
        if isinstance(exc, sqlite3.Error):
            raise StoreUnavailable(f"{path}: cannot open the database: {exc}") from exc
        raise
    return conn


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or any(
        words in str(exc) for words in ("not a database", "malformed"))


def _corrupt(path: Path, why: object) -> CorruptDatabase:
    return CorruptDatabase(
        f"{path}: the database is corrupt ({why}); refusing to run on it. "
        "Restore a backup or move the file aside.")


async def _check_integrity(conn: aiosqlite.Connection, path: Path, check: str) -> None:
    if check == "none":
        return
    pragma = "integrity_check" if check == "full" else "quick_check"
    try:
        rows = await conn.execute_fetchall(f"PRAGMA {pragma}")
    except sqlite3.DatabaseError as exc:
        if _is_corrupt(exc):
            raise _corrupt(path, exc) from exc
        # e.g. locked by another process: not a reason to tell anyone to restore a backup
        raise StoreUnavailable(f"{path}: cannot check the database: {exc}") from exc
    problems = [r[0] for r in rows if r[0] != "ok"]
    if problems:
        raise _corrupt(path, "; ".join(problems[:5]))


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    row = await _one(conn, "PRAGMA user_version", ())
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"{path}: schema version {version} is newer than this qjobd knows "
            f"({len(MIGRATIONS)}); upgrade qjobd or use another database")
    for step in range(version, len(MIGRATIONS)):
        # executescript commits any open transaction first, so the step opens its own
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise StoreError(f"{path}: migration {step + 1} failed: {exc}") from exc


async def _one(conn: aiosqlite.Connection, sql: str, args: Sequence[Any]) -> Any:
    async with conn.execute(sql, args) as cursor:
        return await cursor.fetchone()


def _read_batch(conn: sqlite3.Connection, batch_id: str, *, with_jobs: bool = True) -> Batch:
    row = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?",
                       (batch_id,)).fetchone()
    if row is None:
        raise NotFound(f"no batch {batch_id!r}")
    if not with_jobs:
        return _batch(row, ())
    return _batch(row, _jobs_of(conn, [batch_id]).get(batch_id, ()))


def _jobs_of(conn: sqlite3.Connection, batch_ids: Sequence[str]) -> dict[str, tuple[Job, ...]]:
    if not batch_ids:
        return {}
    marks = ", ".join("?" for _ in batch_ids)
    labels: dict[str, list[str]] = {}
    for job_id, label in conn.execute(
            f"SELECT job_id, label FROM circuits WHERE batch_id IN ({marks}) "
            "ORDER BY position", tuple(batch_ids)):
        labels.setdefault(job_id, []).append(label)
    out: dict[str, list[Job]] = {}
    for r in conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE batch_id IN ({marks}) "
                          "ORDER BY batch_id, position", tuple(batch_ids)):
        job = _job(r, tuple(labels.get(r[0], ())))
        out.setdefault(job.batch_id, []).append(job)
    return {k: tuple(v) for k, v in out.items()}


def _event(conn: sqlite3.Connection, ts: float, batch_id: str | None, job_id: str | None,
           kind: str, state: str | None, detail: Mapping[str, Any] | None) -> None:
    conn.execute(
        "INSERT INTO events (ts, batch_id, job_id, kind, state, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (ts, batch_id, job_id, kind, state, _dumps(detail) if detail else None))


def _refresh_batch(conn: sqlite3.Connection, batch_id: str, now: float) -> JobState:
    """Recompute a batch's state from its job counts; log and store it if it changed."""
    row = conn.execute("SELECT state, cancel_requested FROM batches WHERE id = ?",
                       (batch_id,)).fetchone()
    counts = {JobState(state): n for state, n in conn.execute(
        "SELECT state, n FROM batch_job_counts WHERE batch_id = ? AND n > 0", (batch_id,))}
    new, error = batch_outcome(counts, cancel_requested=bool(row[1]))
    if new != row[0]:
        conn.execute(
            "UPDATE batches SET state = ?, updated_at = ?, error = ?, finished_at = ? "
            "WHERE id = ?",
            (new, now, error, now if new.terminal else None, batch_id))
        _event(conn, now, batch_id, None, "batch_state", new, None)
    return new


def batch_outcome(counts: Mapping[JobState, int], *,
                  cancel_requested: bool) -> tuple[JobState, str | None]:
    """A batch's state from its jobs' counts by state, and its error if it ended badly
    (shared with store/postgres.py)."""
    new = batch_state(counts, cancel_requested=cancel_requested)
    error = None
    if new.terminal and new != JobState.COMPLETED:
        total = sum(counts.values())
        failed = total - counts.get(JobState.COMPLETED, 0)
        error = f"{failed} of {total} job(s) did not complete"
    return new, error


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _job(r: Sequence[Any], labels: tuple[str, ...] = ()) -> Job:
    return Job(id=r[0], batch_id=r[1], position=r[2], backend=r[3], submission_key=r[4],
               remote_id=r[5], state=JobState(r[6]), remote_status=r[7], error=r[8],
               attempts=r[9], poll_interval=r[10], next_poll_at=r[11], created_at=r[12],
               updated_at=r[13], finished_at=r[14], labels=labels)


def _batch(r: Sequence[Any], jobs: tuple[Job, ...]) -> Batch:
    return Batch(seq=r[0], id=r[1], owner_uid=r[2], backend=r[3], shots=r[4], name=r[5],
                 tags=json.loads(r[6]), options=json.loads(r[7]), timeout=r[8],
                 state=JobState(r[9]), error=r[10], cancel_requested=bool(r[11]),
                 created_at=r[12], updated_at=r[13], finished_at=r[14], jobs=jobs,
                 metadata=None if r[15] is None else json.loads(r[15]),
                 warnings=tuple(json.loads(r[16])) if r[16] else ())
