"""Retention (store/retention.py, ``[daemon] retention_days``): old finished batches go
with every row they own, nothing else is touched, and the file stops growing without
VACUUM. Real SQLite files, and the tests taking ``database`` run on PostgreSQL too (its
store deletes by the same rules); waits are on conditions with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from qjobd.daemon.config import ConfigError, load_config, parse_config
from qjobd.daemon.process.main import main as qjobd_main
from qjobd.store import retention
from qjobd.store.errors import NotFound, StoreUnavailable
from qjobd.store.factory import open_store
from qjobd.store.models import Batch, CircuitRecord, NewBatch
from qjobd.store.retention import DAY, RetentionStats, cutoff_for, purge_chunk, run_periodically
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.daemon_process import DaemonProcess, wait_until
from tests.conftest import BELL2, Daemon, committed, eventually, short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
Q, SING, SUB, RUN = JobState.QUEUED, JobState.SUBMITTING, JobState.SUBMITTED, JobState.RUNNING
DONE, FAIL, CANC = JobState.COMPLETED, JobState.FAILED, JobState.CANCELED
#: every table holding rows of a batch, and the column that says which
OWNED = {"batches": "id", "jobs": "batch_id", "circuits": "batch_id", "results": "batch_id",
         "batch_job_counts": "batch_id", "events": "batch_id"}


# -- helpers ---------------------------------------------------------------------------

def new_batch(n: int = 2, *, owner: int = 1000, size: int = 0, name: str | None = None
              ) -> NewBatch:
    labels = [f"c{i}" for i in range(n)]
    return NewBatch(owner_uid=owner, backend="local", shots=100,
                    circuits=[CircuitRecord(label, BELL2 + "//" + "x" * size, 2, 2, 2)
                              for label in labels],
                    groups=[[label] for label in labels], name=name)


def counts_for(label: str, outcomes: int = 2) -> dict[str, int]:
    return {format(i, "08b"): 10 + len(label) + i for i in range(outcomes)}


async def finish(store: Store, batch: Batch, end: JobState = DONE, *, outcomes: int = 2
                 ) -> None:
    """Run every job of ``batch`` to ``end`` (with results when it completes)."""
    for job in batch.jobs:
        await store.transition(job.id, SING)
        await store.transition(job.id, SUB, remote_id=f"r-{job.id}")
        if end == DONE:
            await store.transition(job.id, DONE, results={
                label: counts_for(label, outcomes) for label in job.labels})
        else:
            await store.transition(job.id, end, error="over")


async def make(store: Store, end: JobState | None = DONE, **kw: Any) -> Batch:
    batch, _ = await store.create_batch(new_batch(**kw))
    if end is not None:
        await finish(store, batch, end)
    return await store.get_batch(batch.id)


async def set_finished(store: Any, batch_id: str, finished_at: float, *,
                       state: str | None = None) -> None:
    """Age a batch (only the store's one writer writes, as in the daemon)."""
    await execute(store, "UPDATE batches SET finished_at = ? WHERE id = ?", finished_at, batch_id)
    if state is not None:
        await execute(store, "UPDATE batches SET state = ? WHERE id = ?", state, batch_id)


async def execute(store: Any, sql: str, *args: Any) -> None:
    """One statement (``?`` placeholders) through the store's writer, SQLite's or
    PostgreSQL's."""
    if isinstance(store, Store):
        await store.write(lambda conn: conn.execute(sql, args))
        return

    async def op(conn: Any) -> None:
        await conn.execute(sql.replace("?", "%s"), args)

    await store.write(op)


def rows_of(db: Path | str, batch_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a batch owns, table by table, as a fresh connection sees them."""
    out = {t: committed(db, f"SELECT * FROM {t} WHERE {c} = ? ORDER BY 1, 2", (batch_id,))
           for t, c in OWNED.items()}
    out["events_of_jobs"] = committed(db, "SELECT * FROM events WHERE job_id LIKE ? "
                                          "ORDER BY seq", (f"{batch_id}-%",))
    return out


def orphans(db: Path | str) -> dict[str, int]:
    """Rows whose batch is gone, by table (all zero in a consistent store)."""
    return {t: committed(db, f"SELECT count(*) FROM {t} WHERE {c} IS NOT NULL AND {c} "
                             "NOT IN (SELECT id FROM batches)")[0][0]
            for t, c in OWNED.items() if t != "batches"}


@pytest.fixture
async def any_store(database: Path | str) -> Any:
    """The store on ``database``: once on SQLite, once on PostgreSQL."""
    s = await open_store(database)
    yield s
    await s.close()


def pages(db: Path) -> tuple[int, int]:
    """(page_count, freelist_count) as a fresh connection sees them (WAL included)."""
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("PRAGMA page_count").fetchone()[0],
                conn.execute("PRAGMA freelist_count").fetchone()[0])
    finally:
        conn.close()


# -- what goes and what stays ----------------------------------------------------------

async def test_old_terminal_batches_go_with_every_row_and_nothing_else_moves(any_store,
                                                                             database):
    store, db_path = any_store, database
    old = time.time() - 200 * DAY
    old_done = await make(store, DONE)
    old_failed = await make(store, FAIL)
    old_canceled = await make(store, CANC)
    recent_done = await make(store, DONE)
    old_active = await make(store, None)  # queued
    said_running = await make(store, DONE)
    running, _ = await store.create_batch(new_batch(2))
    await store.transition(running.jobs[0].id, SING)
    await store.transition(running.jobs[0].id, SUB, remote_id="r")
    await store.transition(running.jobs[0].id, RUN)
    for b in (old_done, old_failed, old_canceled):
        await set_finished(store, b.id, old)
    await set_finished(store, recent_done.id, time.time() - 179 * DAY)
    # an active batch never goes, whatever its timestamps say: not by its state...
    await set_finished(store, old_active.id, old)
    await set_finished(store, said_running.id, old, state="running")
    # ... nor while one of its jobs is still running, whatever the batch row says
    await set_finished(store, running.id, old, state="completed")
    gone = {old_done.id, old_failed.id, old_canceled.id}
    kept = {recent_done.id, old_active.id, said_running.id, running.id}
    for b in gone:
        assert all(rows_of(db_path, b)[t] for t in ("batches", "jobs", "circuits", "events"))
    assert rows_of(db_path, old_done.id)["results"]
    events_gone = sum(len(rows_of(db_path, b)["events"]) for b in gone)
    before = {b: rows_of(db_path, b) for b in kept}
    results_before = {b: await store.results(b) for b in kept}

    purge = await store.purge_finished(cutoff_for(180))

    assert purge.batches == 3
    assert purge.events == events_gone > 0
    for b in gone:
        assert all(not rows for rows in rows_of(db_path, b).values()), b
        with pytest.raises(NotFound):
            await store.get_batch(b)
        assert await store.results(b) == []
    for b in kept:
        assert rows_of(db_path, b) == before[b], b
        assert await store.results(b) == results_before[b]
    assert orphans(db_path) == {t: 0 for t in OWNED if t != "batches"}
    assert len(results_before[recent_done.id]) == 2
    # a second run finds nothing more
    assert (await store.purge_finished(cutoff_for(180))).batches == 0


async def test_old_events_of_no_batch_go_too_and_recent_ones_stay(any_store):
    store = any_store
    await store.log_event("old note", detail={"n": 1})
    await store.log_event("new note", detail={"n": 2})
    await execute(store, "UPDATE events SET ts = ? WHERE kind = 'old note'",
                  time.time() - 40 * DAY)

    purge = await store.purge_finished(cutoff_for(30))

    assert (purge.batches, purge.events) == (0, 1)
    assert [e.kind for e in await store.events()] == ["new note"]


async def test_cleanup_refuses_to_run_without_the_cascade(store, db_path):
    b = await make(store, DONE)
    await set_finished(store, b.id, 0.0)
    await store._wconn.execute("PRAGMA foreign_keys=OFF")
    try:
        with pytest.raises(StoreUnavailable, match="foreign_keys"):
            await store.purge_finished(cutoff_for(1))
    finally:
        await store._wconn.execute("PRAGMA foreign_keys=ON")
    assert all(rows_of(db_path, b.id)[t] for t in ("batches", "jobs", "results"))


async def test_cleanup_runs_in_chunks_oldest_first(any_store):
    store = any_store
    batches = [await make(store, DONE) for _ in range(7)]
    now = time.time()
    for i, b in enumerate(batches):
        await set_finished(store, b.id, now - (100 - i) * DAY)
    commits = store.writer.stats.commits

    purge = await store.purge_finished(now - 94 * DAY, chunk=2)

    assert purge.batches == 6  # finished 100 .. 95 days ago; the 94-day one stays
    assert purge.chunks == 3 + 1  # 2+2+2, then one that finds none left
    assert store.writer.stats.commits - commits == purge.chunks  # one transaction each
    remaining, _ = await store.list_batches()
    assert [b.id for b in remaining] == [batches[6].id]


async def test_a_chunk_stops_early_once_its_time_is_up(store):
    batches = [await make(store, DONE) for _ in range(3)]
    for b in batches:
        await set_finished(store, b.id, 1000.0)

    chunk = await store.write(purge_chunk(2000.0, limit=500, budget=0.0))

    assert (chunk.batches, chunk.more) == (1, True)  # always progress, never more than due
    assert (await store.purge_finished(2000.0)).batches == 2


async def test_a_deleted_batch_is_404_like_any_unknown_id(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"a": BELL2}, "shots": 5})
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]

    async def done() -> bool:
        return (await daemon.store.get_batch(batch_id)).state == DONE

    await eventually(done)
    assert (await daemon.client.get(f"/v1/batches/{batch_id}/results")).status_code == 200
    await set_finished(daemon.store, batch_id, time.time() - 31 * DAY)

    assert (await daemon.store.purge_finished(cutoff_for(30))).batches == 1

    for path in (f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results"):
        r = await daemon.client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    assert (await daemon.client.get("/v1/batches")).json()["batches"] == []


# -- the periodic task ---------------------------------------------------------------

async def test_the_periodic_task_runs_at_start_and_again_every_interval(store):
    first = await make(store, DONE)
    await set_finished(store, first.id, time.time() - 2 * DAY)
    stats = RetentionStats()
    task = asyncio.create_task(run_periodically(store, lambda: (1.0, 0.02), stats))
    try:
        await eventually(lambda: stats.removed_batches == 1)
        with pytest.raises(NotFound):
            await store.get_batch(first.id)
        second = await make(store, DONE)
        await set_finished(store, second.id, time.time() - 2 * DAY)
        await eventually(lambda: stats.removed_batches == 2)  # a later run took it
        assert stats.runs >= 2 and stats.failures == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()  # it stops when told, and only then


async def test_retention_zero_keeps_everything(store, db_path):
    b = await make(store, DONE)
    await set_finished(store, b.id, 0.0)  # finished in 1970
    before = rows_of(db_path, b.id)
    stats = RetentionStats()
    task = asyncio.create_task(run_periodically(store, lambda: (0.0, 0.01), stats))
    try:
        await eventually(lambda: stats.checks >= 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert stats.runs == 0
    assert rows_of(db_path, b.id) == before


async def test_a_failed_cleanup_is_logged_and_retried_without_ending_the_task(store):
    b = await make(store, DONE)
    await set_finished(store, b.id, time.time() - 10 * DAY)
    # a read-only database: the cleanup's deletes fail as a StoreError from the writer
    await store._wconn.execute("PRAGMA query_only=ON")
    stats = RetentionStats()
    task = asyncio.create_task(run_periodically(store, lambda: (1.0, 0.02), stats))
    try:
        await eventually(lambda: stats.failures >= 2)
        assert not task.done()
        assert "readonly" in (stats.last_error or "")
        assert (await store.get_batch(b.id)).id == b.id
        await store._wconn.execute("PRAGMA query_only=OFF")  # writable again
        await eventually(lambda: stats.removed_batches == 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(NotFound):
        await store.get_batch(b.id)


# -- the file reaches a steady size ------------------------------------------------------

async def test_the_file_stops_growing_without_vacuum(db_path):
    """Insert, complete, age and clean up many times: freed pages are reused, so the
    file settles at about one cycle's worth (what is kept plus what one cycle adds)."""
    cycles, per_cycle = 12, 15
    history: list[tuple[int, int]] = []
    store = await Store.open(db_path)
    try:
        for cycle in range(cycles):
            made = []
            for _ in range(per_cycle):
                batch, _ = await store.create_batch(new_batch(3, size=1500))
                await finish(store, batch, DONE, outcomes=60)
                made.append(batch)
            for batch in made:
                await set_finished(store, batch.id, (cycle + 1) * DAY)
            purge = await store.purge_finished((cycle + 1) * DAY + 1)  # this cycle's too
            assert purge.batches == per_cycle
            history.append(pages(db_path))
    finally:
        await store.close()  # the last connection checkpoints the WAL into the file
    counts = [p for p, _ in history]
    assert all(free > 0 for _, free in history)  # the cleanup freed pages ...
    settled = counts[2:]
    # ... and the next cycle took them back: flat within a few pages, not 12x one cycle
    assert max(settled) - min(settled) <= max(4, counts[1] // 50), counts
    assert counts[-1] < 1.5 * counts[0], counts
    conn = sqlite3.connect(db_path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # truly no vacuum
    finally:
        conn.close()
    assert db_path.stat().st_size <= max(settled) * page_size


# -- configuration ---------------------------------------------------------------------

def test_retention_is_off_by_default_and_hourly():
    cfg = parse_config({})
    assert cfg.daemon.retention_days == 0
    assert cfg.daemon.retention_interval == retention.DEFAULT_INTERVAL == 3600


def test_retention_settings_are_read():
    cfg = parse_config({"daemon": {"retention_days": 180, "retention_interval": 600}})
    assert (cfg.daemon.retention_days, cfg.daemon.retention_interval) == (180.0, 600.0)
    assert parse_config({"daemon": {"retention_days": 0.5}}).daemon.retention_days == 0.5


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[daemon]\nretention_days = -1\n", "[daemon] retention_days: must be >= 0"),
        ('[daemon]\nretention_days = "180"\n', "[daemon] retention_days: must be a finite"),
        ("[daemon]\nretention_days = true\n", "[daemon] retention_days: must be a finite"),
        ("[daemon]\nretention_days = inf\n", "[daemon] retention_days: must be a finite"),
        ("[daemon]\nretention_interval = 0\n", "[daemon] retention_interval: must be > 0"),
        ("[daemon]\nretention_interval = -5\n", "[daemon] retention_interval: must be > 0"),
        ("[daemon]\nretention = 5\n", "[daemon]: unknown key(s) retention;"),
    ],
)
def test_bad_retention_settings_name_file_and_key(tmp_path, toml, expected):
    path = tmp_path / "q.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_check_config_shows_retention(tmp_path, capsys):
    path = tmp_path / "q.toml"
    path.write_text("[daemon]\nretention_days = 30\n")
    assert qjobd_main(["check-config", "--config", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["daemon"]["retention_days"] == 30.0
    assert doc["daemon"]["retention_interval"] == 3600.0


def test_the_example_service_config_offers_180_days_but_keeps_everything_unasked(tmp_path):
    example = (ROOT / "systemd" / "qjobd.toml").read_text()
    assert load_config(ROOT / "systemd" / "qjobd.toml").daemon.retention_days == 0
    assert "\n#retention_days = 180\n" in example
    turned_on = tmp_path / "q.toml"
    turned_on.write_text(example.replace("\n#retention_days = 180\n", "\nretention_days = 180\n"))
    assert load_config(turned_on).daemon.retention_days == 180


# -- the real daemon ------------------------------------------------------------------

async def _seed(db: Path, *, age_days: float) -> str:
    """A completed batch of this uid, finished ``age_days`` ago, stored before the daemon
    starts (so a daemon that never cleans up keeps it)."""
    store = await Store.open(db)
    try:
        batch = await make(store, DONE, owner=os.getuid())
        await set_finished(store, batch.id, time.time() - age_days * DAY)
        return batch.id
    finally:
        await store.close()


def test_the_daemon_cleans_up_at_start_and_then_every_interval():
    root = short_tmpdir()
    proc = DaemonProcess(root, "[daemon]\nretention_days = 7\nretention_interval = 0.2\n"
                               '[backends.local]\ntype = "local"\nworkers = 1\n')
    proc.database.parent.mkdir(parents=True)
    old = asyncio.run(_seed(proc.database, age_days=8))
    recent = asyncio.run(_seed(proc.database, age_days=1))
    try:
        proc.start()
        with proc.http() as http:
            wait_until(lambda: http.get(f"/v1/batches/{old}").status_code == 404, 30,
                       "the old batch to be cleaned up")
            assert http.get(f"/v1/batches/{recent}").status_code == 200
            assert http.get(f"/v1/batches/{recent}/results").status_code == 200
            # the recent batch ages while the daemon runs: a later run takes it
            with sqlite3.connect(proc.database, timeout=10) as conn:
                conn.execute("UPDATE batches SET finished_at = ? WHERE id = ?",
                             (time.time() - 8 * DAY, recent))
            conn.close()
            wait_until(lambda: http.get(f"/v1/batches/{recent}").status_code == 404, 30,
                       "the aged batch to be cleaned up by a later run")
        assert proc.signal(signal.SIGTERM) == 0
        log = proc.log.read_text()
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert "retention cleanup done" in log and "removed_batches" in log
    assert "Traceback" not in log


# -- the benchmark, in miniature --------------------------------------------------------

def test_the_store_growth_benchmark_prints_every_figure(tmp_path, capsys):
    from bench import store_growth

    out = tmp_path / "growth.json"
    assert store_growth.main(["--batches", "20", "--circuits", "2", "--outcomes", "200",
                              "--cycles", "4", "--retain", "1", "--json", str(out)]) == 0

    text = capsys.readouterr().out
    for label in store_growth.FIGURES:
        assert f"{label}" in text, label
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == set(store_growth.FIGURES)
    for label in (store_growth.CIRCUIT_BELL, store_growth.CIRCUIT_Q20,
                  store_growth.RESULT_FEW, store_growth.RESULT_MANY, store_growth.STEADY):
        assert figures[label] > 0, label
    assert figures[store_growth.CIRCUIT_Q20] > figures[store_growth.CIRCUIT_BELL]
    assert [c["cycle"] for c in report["cycles"]] == [1, 2, 3, 4]
    assert all(c["batches_kept"] == 20 for c in report["cycles"])  # one cycle retained


def test_the_store_growth_benchmark_has_help(capsys):
    from bench import store_growth

    with pytest.raises(SystemExit) as exited:
        store_growth.main(["--help"])
    assert exited.value.code == 0
    assert "bytes per stored circuit" in capsys.readouterr().out.lower()
