"""`qjobd migrate-store`: an SQLite store copied into PostgreSQL (store/migrate.py), on real
SQLite files and the suite's own PostgreSQL server (tests/conftest.py).

The source has batches in every kind of state (completed with results, running with
remote ids, queued, canceled, failed), events, and an AUTOINCREMENT high-water mark above
its last event (as retention leaves it). Chunks of 3 rows make a small store many chunks.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from qjobd.daemon.process.service import exclusive
from qjobd.store.errors import StoreError
from qjobd.store.migrate import PAUSE_ENV, Differs, MigrationRefused, Report, migrate
from qjobd.store.models import CircuitRecord, NewBatch
from qjobd.store.postgres import PostgresStore
from qjobd.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.daemon_process import BIN, wait_until
from qjobd.testing.postgres import PostgresServer
from tests.conftest import committed, eventually

CHUNK = 3
TABLES = ("batches", "jobs", "circuits", "results", "batch_job_counts", "events")


def new_batch(labels: tuple[str, ...], *, per_job: int = 1, **extra: Any) -> NewBatch:
    circuits = [CircuitRecord(label, f"OPENQASM 3.0; // {label} ünïcode", 3, 2, 2)
                for label in labels]
    groups = [list(labels[i:i + per_job]) for i in range(0, len(labels), per_job)]
    return NewBatch(owner_uid=1000, backend="local", shots=100, circuits=circuits,
                    groups=groups, **extra)


async def walk(store: Store, job_id: str, *targets: JobState, **last: Any) -> None:
    for i, target in enumerate(targets):
        await store.transition(job_id, target, **(last if i == len(targets) - 1 else {}))


async def fill(store: Store) -> dict[str, str]:
    """Batches in several states; their ids by what they are."""
    S, SUB, RUN, DONE = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.RUNNING,
                         JobState.COMPLETED)
    done, _ = await store.create_batch(new_batch(("bell", "ghz"), per_job=2, name="done",
                                                 tags={"team": "a"}))
    await walk(store, done.jobs[0].id, S, SUB, RUN, remote_id="r-done")
    await walk(store, done.jobs[0].id, DONE, results={"bell": {"00": 51, "11": 49},
                                                      "ghz": {"000": 100}})
    running, _ = await store.create_batch(new_batch(("r0", "r1", "r2"), timeout=3600.5,
                                                    metadata={"z": 1, "a": [1, 2]}))
    await walk(store, running.jobs[0].id, S, SUB, remote_id="r-run-0")
    await walk(store, running.jobs[1].id, S, SUB, RUN, remote_id="r-run-1",
               remote_status="executing", poll_interval=2.5, next_poll_at=time.time() + 2)
    await store.reschedule([(running.jobs[1].id, "still executing", 3.75,
                             time.time() + 3)])
    queued, _ = await store.create_batch(new_batch(
        ("q0", "q1"), idempotency_key="key-1", request_hash="h1",
        warnings=("could not check q1",), options={"noise_model": "aria-1"}))
    canceled, _ = await store.create_batch(new_batch(("c0",)))
    await store.request_cancel(canceled.id)
    await walk(store, canceled.jobs[0].id, JobState.CANCELED)
    failed, _ = await store.create_batch(new_batch(("f0",)))
    await walk(store, failed.jobs[0].id, S, JobState.FAILED, error="rejected: bad circuit")
    await store.log_event("daemon_started", detail={"version": "test"})
    await store.log_event("note")
    return {"done": done.id, "running": running.id, "queued": queued.id,
            "canceled": canceled.id, "failed": failed.id}


def drop_last_event(db: Path) -> int:
    """Delete the newest event, as retention may (AUTOINCREMENT remembers it); its seq."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            [(top,)] = conn.execute("SELECT max(seq) FROM events").fetchall()
            conn.execute("DELETE FROM events WHERE seq = ?", (top,))
        return int(top)
    finally:
        conn.close()


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, str]]]:
    db = tmp_path / "state" / "qjobd.sqlite3"
    store = await Store.open(db)
    try:
        ids = await fill(store)
    finally:
        await store.close()
    drop_last_event(db)
    yield db, ids


async def run_migrate(db: Path, url: str, chunk_rows: int = CHUNK) -> Report:
    return await anyio.to_thread.run_sync(lambda: migrate(db, url, chunk_rows=chunk_rows))


def cli(*args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "qjobd"), "migrate-store", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def rows_in(url: str) -> dict[str, int]:
    return {t: committed(url, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def rows_of(db: Path) -> dict[str, int]:
    return {t: committed(db, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


async def read_everything(store: Store | PostgresStore, ids: list[str]) -> dict[str, Any]:
    """All the daemon can read of the store, through its read API."""
    batches = [await store.get_batch(i) for i in ids]
    return {
        "batches": batches,
        "results": [await store.results(i) for i in ids],
        "circuits": [await store.circuits(j.id) for b in batches for j in b.jobs],
        "events": await store.events(0, limit=100_000),
        "listed": await store.list_batches(limit=1000),
        "active": await store.active_jobs(),
        "active_batches": sorted(b.id for b in await store.active_batches()),
        "counts": await store.counts_by_state(),
    }


async def assert_same_through_both_stores(db: Path, url: str) -> None:
    ids = [str(r[0]) for r in committed(db, "SELECT id FROM batches ORDER BY seq")]
    sqlite = await Store.open(db)
    pg = await PostgresStore.open(url)
    try:
        mine, theirs = await read_everything(sqlite, ids), await read_everything(pg, ids)
    finally:
        await sqlite.close()
        await pg.close()
    assert theirs == mine


# -- copying -------------------------------------------------------------------------------

async def test_every_table_is_copied_and_reads_the_same_through_both_stores(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, ids = source
    report = await run_migrate(db, postgres_url)
    assert report.outcome == "copied"
    assert report.schema == (len(MIGRATIONS), len(POSTGRES_MIGRATIONS))
    expected = rows_of(db)
    assert rows_in(postgres_url) == expected
    assert {t.name: (t.rows, t.copied, t.verified) for t in report.tables} == {
        t: (n, n, n) for t, n in expected.items()}
    await assert_same_through_both_stores(db, postgres_url)
    pg = await PostgresStore.open(postgres_url)
    try:
        done = await pg.get_batch(ids["done"])
        assert done.state == JobState.COMPLETED and done.tags == {"team": "a"}
        assert {r.label: r.counts for r in await pg.results(ids["done"])} == {
            "bell": {"00": 51, "11": 49}, "ghz": {"000": 100}}
        running = await pg.get_batch(ids["running"])
        assert [j.remote_id for j in running.jobs] == ["r-run-0", "r-run-1", None]
        assert running.metadata == {"z": 1, "a": [1, 2]}
        assert list(running.metadata) == ["z", "a"]  # the submitter's key order
        assert (await pg.get_batch(ids["queued"])).warnings == ("could not check q1",)
        assert (await pg.get_batch(ids["canceled"])).cancel_requested is True
    finally:
        await pg.close()


async def test_sequences_continue_past_the_copied_maxima_and_the_deleted_event(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    [(top_event,)] = committed(db, "SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    [(last_row,)] = committed(db, "SELECT max(seq) FROM events")
    assert top_event == last_row + 1  # retention's doing (drop_last_event)
    [(top_batch,)] = committed(db, "SELECT max(seq) FROM batches")
    report = await run_migrate(db, postgres_url)
    assert report.sequences == {"batches.seq": top_batch, "events.seq": top_event}
    pg = await PostgresStore.open(postgres_url)
    try:
        created, _ = await pg.create_batch(new_batch(("after",)))
        assert created.seq == top_batch + 1
        events = await pg.events(last_row)
        # one sequence: the new batch's event follows the copied ones, never reusing a seq
        assert [e.seq for e in events] == [top_event + 1]
        assert events[0].kind == "batch_created"
    finally:
        await pg.close()


@pytest.fixture
def icu_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database whose text sorts as English does ('alpha' < 'Zeta'), not bytewise."""
    name = f"icu_{secrets.token_hex(6)}"
    try:
        postgres_server.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 '
                                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
    except psycopg.Error as exc:
        pytest.skip(f"no ICU collations on this server: {exc}")
    yield postgres_server.url_of(name)
    postgres_server.drop_database(name)


async def test_keys_are_compared_bytewise_whatever_the_databases_collation(
        source: tuple[Path, dict[str, str]], icu_url: str) -> None:
    db, _ = source
    store = await Store.open(db)
    try:
        await store.create_batch(new_batch(("Zeta", "alpha", "Ärger", "beta", "_x", "10", "9")))
    finally:
        await store.close()
    [(sorted_there,)] = committed(icu_url, "SELECT array_agg(x ORDER BY x) FROM "
                                           "unnest(ARRAY['Zeta', 'alpha']) x")
    assert sorted_there == ["alpha", "Zeta"]  # not SQLite's order
    report = await run_migrate(db, icu_url)
    assert {t.name: t.verified for t in report.tables} == rows_of(db)
    await assert_same_through_both_stores(db, icu_url)


async def test_a_rerun_after_a_finished_migration_checks_again_and_changes_nothing(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    await run_migrate(db, postgres_url)
    before = committed(postgres_url, "SELECT * FROM events ORDER BY seq")
    again = await run_migrate(db, postgres_url)
    assert again.outcome == "verified"
    assert again.copied == 0 and all(t.verified == t.rows for t in again.tables)
    assert committed(postgres_url, "SELECT * FROM events ORDER BY seq") == before


async def test_a_target_served_on_since_the_migration_is_left_alone(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    await run_migrate(db, postgres_url)
    pg = await PostgresStore.open(postgres_url)
    try:
        await pg.create_batch(new_batch(("new",)))
    finally:
        await pg.close()
    again = await run_migrate(db, postgres_url)
    assert again.outcome == "in use since" and not again.tables
    assert rows_in(postgres_url)["batches"] == rows_of(db)["batches"] + 1


async def test_a_difference_is_found_and_named_by_table_and_key(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, ids = source
    await run_migrate(db, postgres_url)
    job = f"{ids['running']}-1"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET remote_status = 'tampered' WHERE id = %s", (job,))
    with pytest.raises(Differs) as found:
        await run_migrate(db, postgres_url)
    assert found.value.table == "jobs" and found.value.key == (job,)
    assert "remote_status" in str(found.value) and "'tampered'" in str(found.value)
    r = cli("--from", str(db), "--to", postgres_url)
    assert r.returncode == 3
    assert "table jobs" in r.stderr and job in r.stderr


async def test_a_store_with_an_older_schema_is_brought_up_to_date_first(
        tmp_path: Path, postgres_url: str) -> None:
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    try:
        for step in MIGRATIONS[:3]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    finally:
        conn.close()
    report = await run_migrate(db, postgres_url)
    assert report.outcome == "copied" and report.copied == 0
    assert committed(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]


# -- interrupted ---------------------------------------------------------------------------

def start_paused(db: Path, url: str, chunk: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`qjobd migrate-store` stopped inside chunk ``chunk``'s transaction (test hook)."""
    err = tmp_path / f"paused-{chunk}-{time.monotonic_ns()}.err"
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [str(BIN / "qjobd"), "migrate-store", "--from", str(db), "--to", url,
             "--chunk-rows", str(CHUNK)],
            env={**_env(), PAUSE_ENV: str(chunk)}, stdout=subprocess.DEVNULL, stderr=f)
    wait_until(lambda: "test hook: paused" in err.read_text() or proc.poll() is not None,
               60, f"the migration to pause in chunk {chunk}")
    assert proc.poll() is None, err.read_text()
    return proc


def _env() -> dict[str, str]:
    return dict(os.environ)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def progress(url: str) -> dict[str, tuple[int, bool]]:
    return {t: (n, d) for t, n, d in committed(
        url, "SELECT table_name, rows, done FROM qjobd_migration_progress")}


async def test_kill_9_mid_copy_twice_then_a_rerun_gives_a_complete_verified_copy(
        source: tuple[Path, dict[str, str]], postgres_url: str, tmp_path: Path) -> None:
    db, _ = source
    expected = rows_of(db)
    # chunk 2: the second chunk of batches, written but not committed when killed
    kill_9(start_paused(db, postgres_url, 2, tmp_path))
    assert rows_in(postgres_url)["batches"] == CHUNK  # only the committed chunk
    assert progress(postgres_url) == {"batches": (CHUNK, False)}
    # the rerun resumes after it; killed again further on (its 6th chunk: circuits)
    kill_9(start_paused(db, postgres_url, 6, tmp_path))
    partial = rows_in(postgres_url)
    assert partial["batches"] == expected["batches"] and partial["events"] == 0
    assert all(n % CHUNK == 0 or done for n, done in progress(postgres_url).values())
    r = cli("--from", str(db), "--to", postgres_url, "--chunk-rows", str(CHUNK))
    assert r.returncode == 0, r.stderr
    assert "resumed:" in r.stdout
    assert rows_in(postgres_url) == expected
    await assert_same_through_both_stores(db, postgres_url)
    assert all(done for _, done in progress(postgres_url).values())
    assert committed(postgres_url, "SELECT count(*) FROM qjobd_migration "
                                   "WHERE finished_at IS NOT NULL") == [(1,)]


def add_events(db: Path, n: int) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany("INSERT INTO events (ts, batch_id, job_id, kind, state, detail) "
                         "VALUES (?, NULL, NULL, 'note', NULL, ?)",
                         ((time.time(), json.dumps({"i": i})) for i in range(n)))
    conn.close()


def copied_rows(url: str) -> int:
    try:
        return int(committed(url, "SELECT coalesce(sum(rows), 0) FROM "
                                  "qjobd_migration_progress")[0][0])
    except psycopg.errors.UndefinedTable:
        return 0


def all_copied(url: str) -> bool:
    try:
        return committed(url, "SELECT count(*) FROM qjobd_migration_progress "
                              "WHERE done")[0][0] == len(TABLES)
    except psycopg.errors.UndefinedTable:
        return False


def kill_9_when(args: tuple[str, ...], when: Callable[[], bool], what: str) -> None:
    proc = subprocess.Popen([str(BIN / "qjobd"), "migrate-store", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: when() or proc.poll() is not None, 60, what)
    kill_9(proc)


async def test_kill_9_wherever_it_lands_then_a_rerun_gives_a_complete_verified_copy(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    """No hook: killed once this many rows are recorded, wherever the process is then
    (mostly inside a chunk's COPY), and once every table is copied (in the check)."""
    db, _ = source
    add_events(db, 60_000)
    args = ("--from", str(db), "--to", postgres_url, "--chunk-rows", "500")
    for when, what in ((lambda: copied_rows(postgres_url) >= 1_000, "1,000 rows"),
                       (lambda: copied_rows(postgres_url) >= 30_000, "30,000 rows"),
                       (lambda: all_copied(postgres_url), "every table copied")):
        kill_9_when(args, when, what)
        assert committed(postgres_url, "SELECT count(*) FROM qjobd_migration "
                                       "WHERE finished_at IS NOT NULL") == [(0,)]
        assert rows_in(postgres_url)["events"] == progress(postgres_url)["events"][0]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert rows_in(postgres_url) == rows_of(db)
    await assert_same_through_both_stores(db, postgres_url)


def waiting_for_advisory_locks(url: str) -> int:
    return int(committed(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                              "AND NOT granted")[0][0])


async def test_a_daemon_starting_during_the_copy_waits_for_its_end(
        source: tuple[Path, dict[str, str]], postgres_url: str, tmp_path: Path) -> None:
    """One that does not take the daemon lock (several daemons on one database) waits in
    its schema step, then opens the complete copy."""
    db, ids = source
    proc = start_paused(db, postgres_url, 4, tmp_path)
    opening = asyncio.create_task(PostgresStore.open(postgres_url))
    try:
        await eventually(lambda: waiting_for_advisory_locks(postgres_url) == 1, 30)
        assert not opening.done()
        proc.send_signal(signal.SIGUSR1)  # the hook lets the migration go on
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60)) == 0
        with anyio.fail_after(30):
            pg = await opening
    finally:
        if proc.poll() is None:
            kill_9(proc)
    try:
        assert sorted(b.id for b in (await pg.list_batches())[0]) == sorted(ids.values())
    finally:
        await pg.close()


async def test_a_database_with_a_live_node_is_refused(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    pg = await PostgresStore.open(postgres_url)
    await pg.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO nodes (name, started_at, heartbeat_at) VALUES "
                     "('login-2', 0, extract(epoch from clock_timestamp()) - 3), "
                     "('gone', 0, 0)")
    with pytest.raises(MigrationRefused, match=r"serving on .*\(node login-2 seen 3 s ago\)"):
        await run_migrate(db, postgres_url)


async def test_a_store_changed_after_an_interrupted_run_is_copied_again_from_the_start(
        source: tuple[Path, dict[str, str]], postgres_url: str, tmp_path: Path) -> None:
    db, _ = source
    kill_9(start_paused(db, postgres_url, 4, tmp_path))
    store = await Store.open(db)  # the daemon ran on it again meanwhile
    try:
        await store.create_batch(new_batch(("later",)))
    finally:
        await store.close()
    report = await run_migrate(db, postgres_url)
    assert report.outcome == "restarted"
    assert rows_in(postgres_url) == rows_of(db)
    await assert_same_through_both_stores(db, postgres_url)


async def test_a_half_copied_target_a_daemon_served_on_is_refused_not_wiped(
        source: tuple[Path, dict[str, str]], postgres_url: str, tmp_path: Path) -> None:
    db, _ = source
    kill_9(start_paused(db, postgres_url, 3, tmp_path))
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as a daemon would
        conn.execute("INSERT INTO events (ts, kind) VALUES (1, 'daemon_started')")
    before = rows_in(postgres_url)
    with pytest.raises(MigrationRefused,
                       match=r"table events holds 1 rows, but the migration there copied 0"):
        await run_migrate(db, postgres_url)
    assert rows_in(postgres_url) == before


# -- refused -------------------------------------------------------------------------------

async def test_a_target_with_a_daemons_own_data_is_refused_saying_what_it_holds(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    pg = await PostgresStore.open(postgres_url)
    try:
        await pg.create_batch(new_batch(("theirs",)))
    finally:
        await pg.close()
    before = rows_in(postgres_url)
    with pytest.raises(MigrationRefused, match=r"already holds qjobd data.*1 batches"):
        await run_migrate(db, postgres_url)
    r = cli("--from", str(db), "--to", postgres_url)
    assert r.returncode == 1 and "already holds qjobd data" in r.stderr
    assert rows_in(postgres_url) == before


async def test_a_target_holding_a_migration_of_another_store_is_refused(
        source: tuple[Path, dict[str, str]], postgres_url: str, tmp_path: Path) -> None:
    db, _ = source
    other = tmp_path / "other.sqlite3"
    store = await Store.open(other)
    await store.close()
    await run_migrate(other, postgres_url)
    with pytest.raises(MigrationRefused, match=f"a migration of another store, {other}"):
        await run_migrate(db, postgres_url)


async def test_a_target_with_foreign_tables_of_qjobds_names_is_refused(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id serial, what text)")
    with pytest.raises(MigrationRefused, match="not a qjobd database"):
        await run_migrate(db, postgres_url)


async def test_a_target_with_an_empty_qjobd_schema_is_accepted(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    pg = await PostgresStore.open(postgres_url)  # a daemon started once, given nothing
    await pg.close()
    report = await run_migrate(db, postgres_url)
    assert report.outcome == "copied"
    assert rows_in(postgres_url) == rows_of(db)


async def test_a_daemon_serving_on_the_store_is_refused_and_nothing_is_written(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    with exclusive(db):  # what `qjobd serve` holds while it runs
        with pytest.raises(MigrationRefused, match=f"a qjobd is serving on {db}"):
            await run_migrate(db, postgres_url)
        r = cli("--from", str(db), "--to", postgres_url)
        assert r.returncode == 1
        assert "a qjobd is serving on" in r.stderr and "stop it first" in r.stderr
    assert committed(postgres_url, "SELECT count(*) FROM information_schema.tables "
                                   "WHERE table_schema = 'public'") == [(0,)]


async def test_a_daemon_serving_on_the_target_is_refused(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    pg = await PostgresStore.open(postgres_url, exclusive=True)
    try:
        with pytest.raises(MigrationRefused, match="a qjobd is serving on postgresql://"):
            await run_migrate(db, postgres_url)
    finally:
        await pg.close()


async def test_no_such_store_is_refused(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(MigrationRefused, match="no such database"):
        await run_migrate(tmp_path / "missing.sqlite3", postgres_url)
    assert not (tmp_path / "missing.sqlite3").exists()


# -- the command ---------------------------------------------------------------------------

async def test_the_command_prints_a_summary_per_table_and_never_the_password(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, _ = source
    secret = "pw-never-shown-9"  # the suite's server trusts local connections
    url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    first = cli("--from", str(db), "--to", url)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    for table, n in rows_of(db).items():
        [line] = [x for x in lines if x.startswith(f"{table} ")]
        assert line.split()[1:4] == [f"{n:,}"] * 3  # rows, copied now, verified
    assert "copied:" in first.stdout and "rows/s" in first.stdout
    again = cli("--from", str(db), "--to", url)
    assert again.returncode == 0 and "verified:" in again.stdout
    for out in (first, again):
        assert secret not in out.stdout + out.stderr
        assert url.replace(secret, "***") in out.stdout
    assert "keep it in $PGPASSWORD" in first.stderr


def test_the_command_wants_a_postgresql_url_and_an_sqlite_source(tmp_path: Path) -> None:
    r = cli("--from", str(tmp_path / "x.sqlite3"), "--to", str(tmp_path / "y.sqlite3"))
    assert r.returncode == 2 and "must be a postgresql:// URL" in r.stderr
    r = cli("--to", "postgresql://u@h/db",
            env={**_env(), "QJOBD_DATABASE": "postgresql://u:secret-pw@h/db"})
    assert r.returncode == 2 and "--from PATH" in r.stderr and "secret-pw" not in r.stderr


async def test_a_value_postgresql_cannot_hold_is_named_with_its_row_and_column(
        source: tuple[Path, dict[str, str]], postgres_url: str) -> None:
    db, ids = source
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE circuits SET source = 'h q[0];' || char(0) WHERE label = 'r1'")
    conn.close()
    with pytest.raises(StoreError, match=rf"key \('{ids['running']}', 'r1'\).*column source"):
        await run_migrate(db, postgres_url)
    with sqlite3.connect(db) as conn:  # fixed, the rerun goes on from the refused chunk
        conn.execute("UPDATE circuits SET source = 'h q[0];' WHERE label = 'r1'")
    conn.close()
    assert (await run_migrate(db, postgres_url)).outcome == "resumed"
    await assert_same_through_both_stores(db, postgres_url)


def test_values_postgresql_cannot_hold_exactly_are_named() -> None:
    from qjobd.store.migrate import _cast, _Columns, _to_int, _to_text

    cols = _Columns("circuits", ("batch_id", "label", "source"), ("batch_id", "label"),
                    (_to_text, _to_text, _to_text), (True, True))
    assert _cast(("b", "l", "x"), cols) == ("b", "l", "x")
    with pytest.raises(StoreError, match=r"key \('b', 'l'\).*column source.*NUL"):
        _cast(("b", "l", "a\x00b"), cols)
    with pytest.raises(ValueError):
        _to_int(1.5)
