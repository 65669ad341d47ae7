"""The store, on real databases: what it keeps, and what it promises about it.

Every test taking ``store`` or ``database`` runs twice: on an SQLite file and on a
PostgreSQL database of its own (a throwaway server the suite starts, tests/conftest.py).
The tests of SQLite's own machinery (pragmas, corrupt files, a full disk) take
``sqlite_store`` or ``db_path``; PostgreSQL's migrations have tests of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import qjobd.store.store as store_module
from qjobd.store.errors import (
    CorruptDatabase,
    DiskFull,
    IdempotencyConflict,
    NotFound,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from qjobd.store.factory import open_store
from qjobd.store.models import CircuitRecord, NewBatch
from qjobd.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS
from qjobd.store.states import IllegalTransition, JobState
from qjobd.store.store import Store
from tests.conftest import committed

if TYPE_CHECKING:
    from qjobd.store.factory import AnyStore

Q, SING, SUB, RUN = JobState.QUEUED, JobState.SUBMITTING, JobState.SUBMITTED, JobState.RUNNING
DONE, FAIL, CANC, TIME = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED,
                          JobState.TIMED_OUT)
TABLES = ("batches", "jobs", "circuits", "results", "events")


# -- the two stores ------------------------------------------------------------------------

@pytest.fixture
async def store(database: Path | str) -> AsyncIterator[AnyStore]:
    s = await open_store(database)
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(db_path)
    yield s
    await s.close()


def is_sqlite(store: Any) -> bool:
    return isinstance(store, Store)


async def rows(store: Any, sql: str) -> list[tuple[Any, ...]]:
    """A query's rows through the store's own reader."""
    if is_sqlite(store):
        return [tuple(r) for r in await store._reader.execute_fetchall(sql)]
    return await store.fetchall(sql)




# -- helpers ---------------------------------------------------------------------------

def new_batch(labels: tuple[str, ...] = ("a", "b"), groups: list[list[str]] | None = None, *,
              owner: int = 1000, backend: str = "local", key: str | None = None,
              body: str = "body-1", source_size: int = 0, **extra: Any) -> NewBatch:
    circuits = [CircuitRecord(label, f"OPENQASM 3.0; // {label}" + "x" * source_size, 3, 2, 2)
                for label in labels]
    return NewBatch(owner_uid=owner, backend=backend, shots=100, circuits=circuits,
                    groups=groups if groups is not None else [[label] for label in labels],
                    idempotency_key=key, request_hash=body if key else None, **extra)


async def walk(store: Store, job_id: str, *targets: JobState, **changes: Any) -> JobState:
    """Move a job through ``targets`` in order; the last move gets ``changes``."""
    state = None
    for i, target in enumerate(targets):
        state = await store.transition(job_id, target,
                                       **(changes if i == len(targets) - 1 else {}))
    assert state is not None
    return state


async def snapshot(store: Store) -> dict[str, list[Any]]:
    """Every row of every table, as the reader sees it."""
    return {t: await rows(store, f"SELECT * FROM {t} ORDER BY 1, 2") for t in TABLES}


async def counts(store: Store) -> dict[str, int]:
    return {t: (await rows(store, f"SELECT count(*) FROM {t}"))[0][0] for t in TABLES}


@contextlib.contextmanager
def plain(path: Path) -> Iterator[sqlite3.Connection]:
    """An independent stdlib connection: sees only what was committed."""
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


def sqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


async def assert_no_thread_left(before: set[threading.Thread]) -> None:
    """aiosqlite's worker threads are not daemons: one left behind blocks the process's exit."""
    for _ in range(200):
        if not sqlite_threads() - before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"connection threads left running: {sqlite_threads() - before}")


class Gate:
    """A write that holds the writer inside a transaction until released, so that the
    writes issued meanwhile are known to form the next group."""

    def __init__(self, store: AnyStore) -> None:
        self.entered = asyncio.Event()
        self._released, self._async_released = threading.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def op(conn: Any) -> None:
            # SQLite's write ops run on the connection's thread: block it there
            loop.call_soon_threadsafe(self.entered.set)
            self._released.wait(timeout=30)

        async def pg_op(conn: Any) -> None:
            self.entered.set()
            with anyio.fail_after(30):
                await self._async_released.wait()

        self.task = asyncio.create_task(store.write(op if is_sqlite(store) else pg_op))

    def release(self) -> None:
        self._released.set()
        self._async_released.set()

    async def __aenter__(self) -> Gate:
        await self.entered.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        await self.task


# -- opening -----------------------------------------------------------------------------

async def test_open_creates_the_database_file_and_missing_directories(tmp_path):
    path = tmp_path / "var" / "lib" / "qjobd" / "db.sqlite3"
    s = await Store.open(path)
    await s.close()
    assert path.is_file()


async def test_both_connections_use_wal_full_sync_foreign_keys_and_a_busy_timeout(
        sqlite_store):
    store = sqlite_store
    for conn in (store._wconn, store._reader):
        assert (await conn.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await conn.execute_fetchall("PRAGMA synchronous"))[0][0] == 2  # FULL
        assert (await conn.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
        assert (await conn.execute_fetchall("PRAGMA busy_timeout"))[0][0] > 0
    assert (await store._reader.execute_fetchall("PRAGMA query_only"))[0][0] == 1
    assert (await store._wconn.execute_fetchall("PRAGMA query_only"))[0][0] == 0


async def test_a_new_database_is_migrated_to_the_latest_schema(sqlite_store, db_path):
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # stored in the file
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    assert set(TABLES) <= tables


async def test_reopening_keeps_the_data_and_does_not_run_migrations_again(db_path):
    s = await Store.open(db_path)
    batch, _ = await s.create_batch(new_batch())
    await s.close()

    s = await Store.open(db_path)  # re-running step 1 would fail: its tables exist
    try:
        assert await s.get_batch(batch.id) == batch
        assert (await s._reader.execute_fetchall("PRAGMA user_version"))[0][0] == len(MIGRATIONS)
    finally:
        await s.close()


async def test_a_new_migration_step_is_applied_once_to_an_existing_database(db_path, monkeypatch):
    s = await Store.open(db_path)
    batch, _ = await s.create_batch(new_batch())
    await s.close()

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x);"])
    for _ in range(2):  # the second open must not try to create the table again
        s = await Store.open(db_path)
        await s.close()
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert conn.execute("SELECT count(*) FROM extra").fetchone()[0] == 0
        assert conn.execute("SELECT id FROM batches").fetchall() == [(batch.id,)]


async def test_a_failing_migration_step_changes_nothing(db_path, monkeypatch):
    s = await Store.open(db_path)
    await s.close()
    broken = "CREATE TABLE extra (x); CREATE TABLE batches (y);"  # the second fails
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken])
    before = sqlite_threads()

    with pytest.raises(StoreError, match=f"migration {len(MIGRATIONS) + 1} failed"):
        await Store.open(db_path)

    await assert_no_thread_left(before)
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'extra'").fetchall() == []


async def test_a_database_from_a_newer_qjobd_is_refused_untouched(db_path):
    with plain(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = sqlite_threads()

    with pytest.raises(SchemaTooNew, match=f"schema version {len(MIGRATIONS) + 1} is newer"):
        await Store.open(db_path)

    await assert_no_thread_left(before)
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0


async def _filled_database(path: Path) -> int:
    """A real database of several pages, closed (its WAL checkpointed); its page size."""
    s = await Store.open(path)
    await asyncio.gather(*(s.create_batch(new_batch(("a", "b", "c"), source_size=500))
                           for _ in range(20)))
    page_size = (await s._reader.execute_fetchall("PRAGMA page_size"))[0][0]
    await s.close()
    assert _file_size(path) >= 8 * page_size
    assert _file_size(path.with_name(path.name + "-wal")) == 0  # all of it in the main file
    return int(page_size)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _scribble(path: Path, offset: int, length: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(length))


@pytest.mark.parametrize("check", ["quick", "full"])
async def test_garbage_over_a_databases_pages_is_refused_as_corrupt(db_path, check):
    page = await _filled_database(db_path)
    _scribble(db_path, page, db_path.stat().st_size - page)  # every page but the first
    before = sqlite_threads()

    with pytest.raises(CorruptDatabase) as info:
        await Store.open(db_path, check=check)

    assert str(db_path) in str(info.value)
    assert "the database is corrupt" in str(info.value)
    assert "Restore a backup" in str(info.value)
    await assert_no_thread_left(before)


async def test_garbage_over_the_schema_page_is_refused_as_corrupt(db_path):
    page = await _filled_database(db_path)
    _scribble(db_path, 100, page - 100)  # keep the 100-byte header, lose the schema
    before = sqlite_threads()

    with pytest.raises(CorruptDatabase, match="the database is corrupt"):
        await Store.open(db_path)

    await assert_no_thread_left(before)


@pytest.mark.parametrize("content", [b"not a database\n" * 500, os.urandom(8192), b"abc"])
async def test_a_file_that_is_not_a_database_is_refused_as_corrupt(db_path, content):
    db_path.write_bytes(content)
    before = sqlite_threads()

    with pytest.raises(CorruptDatabase) as info:
        await Store.open(db_path)

    assert str(info.value).startswith(f"{db_path}: the database is corrupt (")
    assert "refusing to run on it" in str(info.value)
    assert db_path.read_bytes() == content  # left for the operator to inspect
    await assert_no_thread_left(before)


# -- PostgreSQL: its schema, its lock, its URL ---------------------------------------------

def _pg_tables(url: str) -> dict[str, list[str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        out: dict[str, list[str]] = {}
        for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"):
            out.setdefault(table, []).append(column)
        return out


async def test_postgresql_a_new_database_is_migrated_and_reopening_keeps_the_data(postgres_url):
    s = await open_store(postgres_url)
    batch, _ = await s.create_batch(new_batch())
    await s.close()

    s = await open_store(postgres_url)  # re-running step 1 would fail: its tables exist
    try:
        assert await s.get_batch(batch.id) == batch
        assert await rows(s, "SELECT version FROM qjobd_schema") == [
            (len(POSTGRES_MIGRATIONS),)]
    finally:
        await s.close()
    assert set(TABLES) <= set(_pg_tables(postgres_url))


async def test_postgresql_a_new_migration_step_is_applied_once(postgres_url, monkeypatch):
    s = await open_store(postgres_url)
    batch, _ = await s.create_batch(new_batch())
    await s.close()

    monkeypatch.setattr("qjobd.store.postgres.POSTGRES_MIGRATIONS",
                        [*POSTGRES_MIGRATIONS, "CREATE TABLE extra (x INTEGER)"])
    for _ in range(2):  # the second open must not try to create the table again
        s = await open_store(postgres_url)
        await s.close()
    assert committed(postgres_url, "SELECT version FROM qjobd_schema") == [
        (len(POSTGRES_MIGRATIONS) + 1,)]
    assert committed(postgres_url, "SELECT count(*) FROM extra") == [(0,)]
    assert committed(postgres_url, "SELECT id FROM batches") == [(batch.id,)]


async def test_postgresql_a_failing_migration_step_changes_nothing(postgres_url, monkeypatch):
    s = await open_store(postgres_url)
    await s.close()
    broken = "CREATE TABLE extra (x INTEGER); CREATE TABLE batches (y INTEGER);"
    monkeypatch.setattr("qjobd.store.postgres.POSTGRES_MIGRATIONS",
                        [*POSTGRES_MIGRATIONS, broken])

    with pytest.raises(StoreError, match=f"migration {len(POSTGRES_MIGRATIONS) + 1} failed"):
        await open_store(postgres_url)

    assert committed(postgres_url, "SELECT version FROM qjobd_schema") == [
        (len(POSTGRES_MIGRATIONS),)]
    assert "extra" not in _pg_tables(postgres_url)


async def test_postgresql_a_database_from_a_newer_qjobd_is_refused_untouched(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE qjobd_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO qjobd_schema VALUES (%s)", (len(POSTGRES_MIGRATIONS) + 1,))

    with pytest.raises(SchemaTooNew,
                       match=f"schema version {len(POSTGRES_MIGRATIONS) + 1} is newer"):
        await open_store(postgres_url)

    assert set(_pg_tables(postgres_url)) == {"qjobd_schema"}


async def test_the_two_schemas_have_the_same_tables_and_columns(sqlite_store, postgres_url):
    s = await open_store(postgres_url)
    await s.close()
    pg = _pg_tables(postgres_url)
    lite = {t: [r[1] for r in await rows(sqlite_store, f"PRAGMA table_info({t})")]
            for (t,) in await rows(sqlite_store, "SELECT name FROM sqlite_schema WHERE "
                                                 "type = 'table' AND name NOT LIKE 'sqlite_%'")}
    # what only PostgreSQL has so far: the schema's version (SQLite's user_version) and
    # what several daemons on one database will need
    assert pg.pop("qjobd_schema") == ["version"]
    assert pg.pop("nodes") == ["name", "started_at", "heartbeat_at", "detail", "lease_until"]
    pg["jobs"] = [c for c in pg["jobs"] if not c.startswith("lease_")]
    assert {t: sorted(c) for t, c in pg.items()} == {t: sorted(c) for t, c in lite.items()}
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        pg_indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'")}
    lite_indexes = {r[0] for r in await rows(
        sqlite_store, "SELECT name FROM sqlite_schema WHERE type = 'index' "
                      "AND name NOT LIKE 'sqlite_autoindex%'")}
    assert pg_indexes == lite_indexes


async def test_postgresql_one_database_is_served_by_one_daemon(postgres_url):
    from qjobd.store.postgres import PostgresStore

    first = await open_store(postgres_url, exclusive=True)
    try:
        with pytest.raises(StoreUnavailable, match="another qjobd is already serving"):
            await PostgresStore.open(postgres_url, exclusive=True, lock_wait=0.3)
        other = await open_store(postgres_url)  # a tool's own, not a daemon's
        await other.close()
    finally:
        await first.close()
    again = await open_store(postgres_url, exclusive=True)  # released with the first
    await again.close()


async def test_postgresql_a_password_in_the_url_is_never_shown(postgres_server):
    # nothing listens on port 1: the connection fails, and its error names the database
    url = "postgresql://qjobd:s3cret-pass@127.0.0.1:1/qjobd"
    with pytest.raises(StoreUnavailable) as info:
        await open_store(url, exclusive=True)
    assert "s3cret-pass" not in str(info.value)
    assert "postgresql://qjobd:***@127.0.0.1:1/qjobd" in str(info.value)


async def test_postgresql_the_store_outlives_its_connections_being_cut(postgres_url):
    s = await open_store(postgres_url)
    try:
        batch, _ = await s.create_batch(new_batch(("a",)))
        cut = committed(postgres_url, "SELECT count(pg_terminate_backend(pid)) FROM "
                                      "pg_stat_activity WHERE datname = current_database() "
                                      "AND pid <> pg_backend_pid()")
        assert cut[0][0] >= 2  # the pool's connections, the writer's among them

        assert await s.transition(batch.jobs[0].id, SING) == SING
        again, created = await s.create_batch(new_batch(("b",)))
        assert created and (await s.get_batch(again.id)).jobs[0].state == Q
    finally:
        await s.close()


# -- creating batches ---------------------------------------------------------------------

async def test_create_batch_stores_the_batch_its_circuits_queued_jobs_and_an_event(store):
    new = new_batch(("a", "b", "c"), [["a", "b"], ["c"]], name="bell", tags={"team": "x"},
                    options={"noise": False}, timeout=60.0)

    batch, created = await store.create_batch(new)

    assert created
    assert (batch.owner_uid, batch.backend, batch.shots, batch.name) == (1000, "local", 100, "bell")
    assert (batch.tags, batch.options, batch.timeout) == ({"team": "x"}, {"noise": False}, 60.0)
    assert batch.state == Q and not batch.cancel_requested
    assert batch.finished_at is None and batch.error is None
    assert batch.deadline == batch.created_at + 60.0
    assert [(j.position, j.labels, j.state) for j in batch.jobs] == [
        (0, ("a", "b"), Q), (1, ("c",), Q)]
    for job in batch.jobs:
        assert job.batch_id == batch.id and job.backend == "local"
        assert (job.remote_id, job.attempts, job.next_poll_at, job.finished_at) == (
            None, 0, None, None)
        assert job.id in job.submission_key
    assert len({j.submission_key for j in batch.jobs}) == 2
    assert await store.circuits(batch.jobs[0].id) == list(new.circuits[:2])
    assert await store.circuits(batch.jobs[1].id) == [new.circuits[2]]
    [event] = await store.events(batch_id=batch.id)
    assert (event.kind, event.state, event.job_id) == ("batch_created", Q, None)
    assert event.detail == {"circuits": 3, "jobs": 2}
    assert await store.get_batch(batch.id) == batch


async def test_get_batch_can_leave_out_the_jobs(store):
    batch, _ = await store.create_batch(new_batch())
    slim = await store.get_batch(batch.id, with_jobs=False)
    assert slim.jobs == () and slim.id == batch.id and slim.state == batch.state


async def test_unknown_batches_and_jobs_are_not_found(store):
    with pytest.raises(NotFound):
        await store.get_batch("nope")
    with pytest.raises(NotFound):
        await store.get_job("nope")


async def test_a_retry_with_the_same_key_and_body_returns_the_existing_batch(store):
    first, created = await store.create_batch(new_batch(key="k1", body="h1"))
    rows = await counts(store)

    again, created_again = await store.create_batch(new_batch(key="k1", body="h1"))

    assert created and not created_again
    assert again == first
    assert await counts(store) == rows


async def test_the_same_key_with_another_body_is_a_conflict_and_stores_nothing(store):
    first, _ = await store.create_batch(new_batch(key="k1", body="h1"))
    rows = await counts(store)

    with pytest.raises(IdempotencyConflict) as info:
        await store.create_batch(new_batch(("z",), key="k1", body="h2"))

    assert (info.value.key, info.value.batch_id) == ("k1", first.id)
    assert await counts(store) == rows


async def test_idempotency_keys_belong_to_their_owner(store):
    mine, _ = await store.create_batch(new_batch(owner=1000, key="k1"))
    theirs, created = await store.create_batch(new_batch(owner=2000, key="k1", body="other"))
    assert created and theirs.id != mine.id


async def test_without_a_key_every_submission_is_a_new_batch(store):
    a, _ = await store.create_batch(new_batch())
    b, created = await store.create_batch(new_batch())
    assert created and a.id != b.id


async def test_concurrent_retries_with_one_key_create_one_batch(store):
    answers = await asyncio.gather(*(store.create_batch(new_batch(key="k", body="h"))
                                     for _ in range(10)))
    assert len({batch.id for batch, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1
    assert (await counts(store))["batches"] == 1


# -- transitions --------------------------------------------------------------------------

async def test_a_job_moves_through_its_states_recording_each_move(store):
    batch, _ = await store.create_batch(new_batch(("a",)))
    job_id = batch.jobs[0].id

    await store.transition(job_id, SING)
    submitting = await store.get_job(job_id)
    await store.transition(job_id, SUB, remote_id="r-1", remote_status="QUEUED",
                           poll_interval=2.0, next_poll_at=1234.5)
    submitted = await store.get_job(job_id)
    await store.transition(job_id, RUN, remote_status="RUNNING")
    running = await store.get_job(job_id)

    assert (submitting.state, submitting.attempts, submitting.remote_id) == (SING, 1, None)
    assert (submitted.state, submitted.remote_id, submitted.remote_status) == (
        SUB, "r-1", "QUEUED")
    assert (submitted.poll_interval, submitted.next_poll_at) == (2.0, 1234.5)
    # what is not passed is kept
    assert (running.state, running.remote_id, running.remote_status) == (RUN, "r-1", "RUNNING")
    assert running.next_poll_at == 1234.5 and running.finished_at is None
    assert submitting.updated_at <= submitted.updated_at <= running.updated_at
    moves = [(e.state, e.detail) for e in await store.events(batch_id=batch.id)
             if e.kind == "job_state"]
    assert moves == [
        (SING, None),
        (SUB, {"remote_id": "r-1", "remote_status": "QUEUED"}),
        (RUN, {"remote_status": "RUNNING"}),
    ]
    assert all(e.job_id == job_id for e in await store.events(batch_id=batch.id)
               if e.kind == "job_state")


async def test_the_batch_state_follows_its_jobs(store):
    batch, _ = await store.create_batch(new_batch(("a", "b")))
    j0, j1 = (j.id for j in batch.jobs)

    assert await walk(store, j0, SING) == SING
    assert await walk(store, j0, SUB, RUN) == RUN
    assert await walk(store, j1, SING, SUB) == RUN  # the most advanced job sets the pace
    assert await store.transition(j0, DONE, results={"a": {"00": 100}}) == RUN
    middle = await store.get_batch(batch.id)
    assert await store.transition(j1, DONE, results={"b": {"11": 100}}) == DONE
    done = await store.get_batch(batch.id)

    assert (middle.state, middle.finished_at) == (RUN, None)
    assert (done.state, done.error) == (DONE, None)
    assert done.finished_at is not None and done.finished_at >= done.created_at
    batch_moves = [e.state for e in await store.events(batch_id=batch.id)
                   if e.kind == "batch_state"]
    assert batch_moves == [SING, SUB, RUN, DONE]


async def test_a_batch_with_a_failed_job_ends_failed_and_says_why(store):
    batch, _ = await store.create_batch(new_batch(("a", "b")))
    j0, j1 = (j.id for j in batch.jobs)

    await walk(store, j0, SING, SUB, DONE, results={"a": {"0": 1}})
    state = await walk(store, j1, SING, FAIL, error="rejected by the provider")

    ended = await store.get_batch(batch.id)
    assert state == ended.state == FAIL
    assert ended.error == "1 of 2 job(s) did not complete"
    assert ended.finished_at is not None
    assert ended.jobs[1].error == "rejected by the provider"


async def test_a_terminal_move_stamps_finished_at_and_stops_polling(store):
    batch, _ = await store.create_batch(new_batch(("a",)))
    job_id = batch.jobs[0].id
    await walk(store, job_id, SING, SUB, remote_id="r", next_poll_at=99.0, poll_interval=1.0)

    await store.transition(job_id, TIME, next_poll_at=123.0)

    job = await store.get_job(job_id)
    assert job.state == TIME and job.finished_at is not None
    assert job.next_poll_at is None
    assert await store.active_jobs() == []


@pytest.mark.parametrize(("path", "target"), [
    ([SING, SUB, DONE], RUN),   # completed -> running
    ([], SUB),                  # queued -> submitted
    ([FAIL], DONE),             # failed -> completed
    ([SING, CANC], Q),          # canceled -> queued
    ([SING], SING),             # submitting -> submitting
])
async def test_an_illegal_move_raises_and_changes_nothing(store, path, target):
    batch, _ = await store.create_batch(new_batch(("a", "b")))
    job_id = batch.jobs[0].id
    for state in path:
        await store.transition(job_id, state,
                               results={"a": {"00": 1}} if state == DONE else None)
    before = await snapshot(store)
    current = (await store.get_job(job_id)).state

    with pytest.raises(IllegalTransition) as info:
        await store.transition(job_id, target, remote_id="r-9", error="x",
                               results={"a": {"11": 5}})

    assert (info.value.job_id, info.value.current, info.value.target) == (job_id, current, target)
    assert await snapshot(store) == before


async def test_moving_an_unknown_job_raises_illegal_transition(store):
    with pytest.raises(IllegalTransition, match="does not exist"):
        await store.transition("no-such-job", SING)


async def test_results_are_stored_with_the_completion_and_served_in_circuit_order(store):
    batch, _ = await store.create_batch(new_batch(("c0", "c1", "c2"), [["c2", "c0"], ["c1"]]))
    j0, j1 = (j.id for j in batch.jobs)
    await walk(store, j1, SING, SUB)
    await walk(store, j0, SING, SUB)

    await store.transition(j1, DONE, results={"c1": {"01": 7, "10": 3}})
    assert [r.label for r in await store.results(batch.id)] == ["c1"]
    # given in another order than the circuits': served in circuit order anyway
    await store.transition(j0, DONE, results={"c2": {"1": 4}, "c0": {"0": 1}}, shots=10)

    results = await store.results(batch.id)
    assert [(r.label, r.job_id) for r in results] == [("c0", j0), ("c1", j1), ("c2", j0)]
    assert [dict(r.counts) for r in results] == [{"0": 1}, {"01": 7, "10": 3}, {"1": 4}]
    assert [r.shots for r in results] == [10, 10, 10]  # given, else the sum of the counts


async def test_a_completion_whose_results_cannot_be_stored_does_not_happen(store):
    batch, _ = await store.create_batch(new_batch(("a",)))
    job_id = batch.jobs[0].id
    await walk(store, job_id, SING, SUB, RUN)
    before = await snapshot(store)

    with pytest.raises(TypeError):  # counts that cannot be stored as JSON
        await store.transition(job_id, DONE, results={"a": {"00": {1, 2}}})  # type: ignore[dict-item]

    assert await snapshot(store) == before
    assert (await store.get_job(job_id)).state == RUN


async def test_moving_back_to_queued_forgets_the_remote_id_and_attempts_count_submissions(store):
    batch, _ = await store.create_batch(new_batch(("a",)))
    job_id = batch.jobs[0].id

    await walk(store, job_id, SING, SUB, remote_id="r-1")
    await store.transition(job_id, Q, detail={"reason": "provider does not know it"})
    requeued = await store.get_job(job_id)
    await walk(store, job_id, SING, SUB, RUN, remote_id="r-2")
    again = await store.get_job(job_id)

    assert (requeued.state, requeued.remote_id, requeued.attempts) == (Q, None, 1)
    assert (again.state, again.remote_id, again.attempts) == (RUN, "r-2", 2)
    requeue_event = [e for e in await store.events(batch_id=batch.id) if e.state == Q
                     and e.kind == "job_state"]
    assert [e.detail for e in requeue_event] == [{"reason": "provider does not know it"}]


# -- the writer: group commit, failures, durability, shutdown --------------------------------

async def test_concurrent_writes_share_commits(store):
    batches = await asyncio.gather(*(store.create_batch(new_batch(tuple("abcdefghij")))
                                     for _ in range(50)))
    job_ids = [job.id for batch, _ in batches for job in batch.jobs]
    assert len(job_ids) == 500
    commits, operations = store.writer.stats.commits, store.writer.stats.operations

    states = await asyncio.gather(*(store.transition(j, SING) for j in job_ids))

    assert states == [SING] * 500
    assert store.writer.stats.operations - operations == 500
    assert store.writer.stats.commits - commits < 500 / 10
    assert {(j.state, j.attempts) for j in await store.active_jobs()} == {(SING, 1)}


async def test_a_failing_write_does_not_roll_back_the_others_in_its_group(store):
    batch, _ = await store.create_batch(new_batch(tuple("abcdef")))
    ok, bad = [j.id for j in batch.jobs[:5]], batch.jobs[5].id
    events = len(await store.events())

    def broken(conn: Any) -> None:
        conn.execute("INSERT INTO events (ts, kind) VALUES (0, 'half-done')")
        raise RuntimeError("the op failed halfway")

    async def pg_broken(conn: Any) -> None:
        await conn.execute("INSERT INTO events (ts, kind) VALUES (0, 'half-done')")
        raise RuntimeError("the op failed halfway")

    async with Gate(store):
        commits = store.writer.stats.commits
        tasks = [asyncio.create_task(store.transition(j, SING)) for j in ok[:3]]
        tasks.append(asyncio.create_task(store.transition(bad, SUB)))  # queued -> submitted
        tasks.append(asyncio.create_task(store.write(broken if is_sqlite(store) else pg_broken)))
        tasks += [asyncio.create_task(store.transition(j, SING)) for j in ok[3:]]
        await asyncio.sleep(0)
        assert store.writer.backlog == len(tasks)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert store.writer.stats.commits - commits == 2  # the gate's, then all of these at once
    assert isinstance(outcomes[3], IllegalTransition)
    assert isinstance(outcomes[4], RuntimeError)
    assert [o for i, o in enumerate(outcomes) if i not in (3, 4)] == [SING] * 5
    jobs = {j.id: j.state for j in (await store.get_batch(batch.id)).jobs}
    assert [jobs[j] for j in ok] == [SING] * 5 and jobs[bad] == Q
    kinds = [e.kind for e in (await store.events())[events:]]
    assert kinds.count("job_state") == 5 and "half-done" not in kinds


async def test_an_acknowledged_write_is_committed(store, database):
    batch, _ = await store.create_batch(new_batch(("a",)))
    assert committed(database, "SELECT state FROM batches WHERE id = ?",
                     (batch.id,)) == [("queued",)]

    await walk(store, batch.jobs[0].id, SING, SUB, remote_id="r-1")

    assert committed(database, "SELECT state, remote_id FROM jobs WHERE id = ?",
                     (batch.jobs[0].id,)) == [("submitted", "r-1")]


async def test_close_finishes_the_queued_writes_and_answers_their_callers(database):
    s = await open_store(database)
    batch, _ = await s.create_batch(new_batch(("a",)))
    creates = [asyncio.create_task(s.create_batch(new_batch(name=f"n{i}"))) for i in range(5)]
    move = asyncio.create_task(s.transition(batch.jobs[0].id, SING))
    await asyncio.sleep(0)  # each task ran up to its first await: its write is queued

    await s.close()

    answers = [t.result() for t in creates]  # answered, though the store closed meanwhile
    assert [(b.name, created) for b, created in answers] == [(f"n{i}", True) for i in range(5)]
    assert move.result() == SING
    s = await open_store(database)
    try:
        for b, _ in answers:
            assert await s.get_batch(b.id) == b
        assert (await s.get_job(batch.jobs[0].id)).state == SING
        assert len((await s.list_batches())[0]) == 6
    finally:
        await s.close()


async def test_writes_after_close_are_refused(database):
    s = await open_store(database)
    batch, _ = await s.create_batch(new_batch(("a",)))
    await s.close()
    await s.close()  # closing twice is harmless

    with pytest.raises(StoreUnavailable):
        await s.create_batch(new_batch())
    with pytest.raises(StoreUnavailable):
        await s.transition(batch.jobs[0].id, SING)


async def test_a_cancelled_writer_fails_its_callers_instead_of_stranding_them(database):
    s = await open_store(database)
    batch, _ = await s.create_batch(new_batch(("a",)))
    gate = Gate(s)
    await gate.entered.wait()
    queued = asyncio.create_task(s.transition(batch.jobs[0].id, SING))
    await asyncio.sleep(0)

    assert s._writer_task is not None
    s._writer_task.cancel()
    # the gate's op is running on the connection's thread, where nothing can interrupt it
    gate.release()

    async with asyncio.timeout(5):
        with pytest.raises(StoreUnavailable):
            await gate.task
        with pytest.raises(StoreUnavailable):
            await queued
        with pytest.raises(StoreUnavailable):
            await s.log_event("late")
        await s.close()
    assert committed(database, "SELECT state FROM jobs") == [("queued",)]


# -- disk full ----------------------------------------------------------------------------

async def _cap_growth(store: Store, extra_pages: int = 0) -> None:
    """Let the database grow by at most ``extra_pages``: past them SQLite reports
    SQLITE_FULL, "database or disk is full", as on a full disk."""
    pages = (await store._wconn.execute_fetchall("PRAGMA page_count"))[0][0]
    await store._wconn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


async def _uncap_growth(store: Store) -> None:
    await store._wconn.execute("PRAGMA max_page_count = 1000000000")


def _big_batch() -> NewBatch:
    return new_batch(tuple(f"c{i}" for i in range(200)), source_size=4000, name="big")


async def test_a_write_that_does_not_fit_raises_disk_full_and_leaves_nothing(sqlite_store,
                                                                             db_path):
    store = sqlite_store
    await store.create_batch(new_batch(("a",)))
    rows = await counts(store)
    failed = store.writer.stats.failed_commits
    await _cap_growth(store)

    with pytest.raises(DiskFull, match="database or disk is full"):
        await store.create_batch(_big_batch())

    assert await counts(store) == rows
    assert store.writer.stats.failed_commits == failed + 1
    assert "full" in (store.writer.stats.last_error or "")
    await _uncap_growth(store)
    batch, created = await store.create_batch(_big_batch())  # the writer recovered
    assert created and len(batch.jobs) == 200
    with plain(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone() == (2,)


async def test_disk_full_fails_only_the_write_that_did_not_fit(sqlite_store):
    store = sqlite_store
    batch, _ = await store.create_batch(new_batch(("a", "b")))
    j0, j1 = (j.id for j in batch.jobs)
    rows = await counts(store)
    await _cap_growth(store, extra_pages=16)  # room for small writes, not a big batch

    async with Gate(store):
        first = asyncio.create_task(store.transition(j0, SING))
        big = asyncio.create_task(store.create_batch(_big_batch()))
        last = asyncio.create_task(store.transition(j1, SING))
        await asyncio.sleep(0)
    results = await asyncio.gather(first, big, last, return_exceptions=True)

    assert isinstance(results[1], DiskFull)
    assert results[0] == results[2] == SING
    assert {j.state for j in (await store.get_batch(batch.id)).jobs} == {SING}
    after = await counts(store)
    assert after["batches"] == rows["batches"] and after["circuits"] == rows["circuits"]
    assert after["events"] == rows["events"] + 3  # two job moves and the batch's


# -- listing -------------------------------------------------------------------------------

async def test_list_batches_pages_newest_first_through_every_batch_once(store):
    made = [(await store.create_batch(new_batch(name=f"b{i}")))[0] for i in range(7)]
    newest_first = [b.id for b in reversed(made)]

    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        page, cursor = await store.list_batches(limit=3, before_seq=cursor)
        pages.append(len(page))
        seen += [b.id for b in page]
        if cursor is None:
            break

    assert seen == newest_first
    assert pages == [3, 3, 1]
    everything, rest = await store.list_batches(limit=7)
    assert [b.id for b in everything] == newest_first and rest is None
    assert [len(b.jobs) for b in everything] == [2] * 7  # with their jobs


async def test_list_batches_filters_by_owner_backend_and_state(store):
    a, _ = await store.create_batch(new_batch(("x",), owner=1, backend="ionq"))
    b, _ = await store.create_batch(new_batch(("x",), owner=1, backend="local"))
    c, _ = await store.create_batch(new_batch(("x",), owner=2, backend="ionq"))
    await walk(store, c.jobs[0].id, SING, SUB, DONE, results={"x": {"0": 1}})

    async def ids(**filters: Any) -> list[str]:
        return [x.id for x in (await store.list_batches(**filters))[0]]

    assert await ids(owner_uid=1) == [b.id, a.id]
    assert await ids(backend="ionq") == [c.id, a.id]
    assert await ids(state="completed") == [c.id]
    assert await ids(state="queued", backend="ionq") == [a.id]
    assert await ids(owner_uid=2, state="queued") == []
    page, cursor = await store.list_batches(backend="ionq", limit=1)
    assert [x.id for x in page] == [c.id]
    assert await ids(backend="ionq", before_seq=cursor) == [a.id]


async def test_active_jobs_batches_and_counts(store):
    a, _ = await store.create_batch(new_batch(("x", "y"), backend="ionq"))
    b, _ = await store.create_batch(new_batch(("x",), backend="local"))
    await walk(store, b.jobs[0].id, SING, FAIL)

    assert [j.id for j in await store.active_jobs()] == [j.id for j in a.jobs]
    assert await store.active_jobs("local") == []
    assert [x.id for x in await store.active_batches()] == [a.id]
    by_state = await store.counts_by_state()
    assert by_state["jobs"]["queued"] == 2 and by_state["jobs"]["failed"] == 1
    assert by_state["batches"]["queued"] == 1 and by_state["batches"]["failed"] == 1
    assert by_state["batches"]["running"] == 0


# -- polls, cancels, events -----------------------------------------------------------------

async def test_reschedule_records_polls_that_changed_no_state(store):
    batch, _ = await store.create_batch(new_batch(("a", "b", "c")))
    j0, j1, j2 = (j.id for j in batch.jobs)
    await walk(store, j0, SING, SUB, remote_id="r0", remote_status="QUEUED")
    await walk(store, j1, SING, SUB, remote_id="r1", remote_status="QUEUED")
    await walk(store, j2, SING, SUB, DONE, results={"c": {"0": 1}})
    ended = await store.get_job(j2)
    events = len(await store.events())

    await store.reschedule([
        (j0, None, 4.0, 1000.0),            # same raw status
        (j1, "CALIBRATING", 8.0, 2000.0),   # a raw status nobody knows: stored and logged
        (j2, "RUNNING", 1.0, 5.0),          # terminal: left alone
    ])

    first, second = await store.get_job(j0), await store.get_job(j1)
    assert (first.poll_interval, first.next_poll_at, first.remote_status) == (
        4.0, 1000.0, "QUEUED")
    assert (second.poll_interval, second.next_poll_at, second.remote_status) == (
        8.0, 2000.0, "CALIBRATING")
    assert first.state == second.state == SUB
    assert await store.get_job(j2) == ended
    new_events = (await store.events())[events:]
    assert [(e.kind, e.job_id, e.state, e.detail) for e in new_events] == [
        ("remote_status", j1, None, {"remote_status": "CALIBRATING"})]


async def test_reschedule_of_nothing_writes_nothing(store):
    commits, operations = store.writer.stats.commits, store.writer.stats.operations
    await store.reschedule([])
    assert (store.writer.stats.commits, store.writer.stats.operations) == (commits, operations)


async def test_request_cancel_marks_a_batch_once(store):
    batch, _ = await store.create_batch(new_batch(("a", "b")))

    assert await store.request_cancel(batch.id) is True
    assert await store.request_cancel(batch.id) is False

    assert (await store.get_batch(batch.id)).cancel_requested
    kinds = [e.kind for e in await store.events(batch_id=batch.id)]
    assert kinds.count("cancel_requested") == 1
    j0, j1 = (j.id for j in batch.jobs)
    await walk(store, j0, SING, SUB, TIME)
    assert await store.transition(j1, CANC) == CANC  # the user's cancel wins over the timeout


async def test_events_are_read_from_a_cursor(store):
    batch, _ = await store.create_batch(new_batch(("a",)))
    other, _ = await store.create_batch(new_batch(("a",)))
    [created] = await store.events(batch_id=batch.id)
    await store.log_event("resumed", batch_id=batch.id, job_id=batch.jobs[0].id,
                          detail={"after": "restart"})
    await store.transition(batch.jobs[0].id, SING)

    later = await store.events(since=created.seq, batch_id=batch.id)
    everything = await store.events()

    assert [(e.kind, e.state) for e in later] == [
        ("resumed", None), ("job_state", SING), ("batch_state", SING)]
    assert later[0].detail == {"after": "restart"} and later[0].job_id == batch.jobs[0].id
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    assert other.id in {e.batch_id for e in everything}
    assert await store.events(since=everything[-1].seq) == []
    assert len(await store.events(limit=2)) == 2
