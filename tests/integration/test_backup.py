"""`qjobd backup`: a consistent copy of the live database while it is being written."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import anyio
import pytest

from qjobd.store.backup import backup
from qjobd.store.errors import StoreError
from qjobd.store.models import CircuitRecord, NewBatch
from qjobd.store.states import JobState
from qjobd.store.store import Store


def new_batch(n: int) -> NewBatch:
    circuits = [CircuitRecord(f"c{i}", "OPENQASM 3.0;", 3, 1, 1) for i in range(n)]
    return NewBatch(owner_uid=0, backend="x", shots=10, circuits=circuits,
                    groups=[[c.label] for c in circuits])


async def test_a_backup_during_writes_is_consistent_and_has_everything_committed_before(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "live.sqlite3")
    before = [(await store.create_batch(new_batch(50)))[0].id for _ in range(20)]
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():
            batch, _ = await store.create_batch(new_batch(20))
            await asyncio.gather(*(store.transition(j.id, JobState.SUBMITTING)
                                   for j in batch.jobs))
            n += 1
        return n

    writer = asyncio.create_task(keep_writing())
    size = await anyio.to_thread.run_sync(
        lambda: backup(tmp_path / "live.sqlite3", tmp_path / "copy.sqlite3", pages_per_step=8))
    stop.set()
    assert await writer > 0
    await store.close()

    assert size > 0
    conn = sqlite3.connect(tmp_path / "copy.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = {r[0] for r in conn.execute("SELECT id FROM batches")}
        assert set(before) <= ids
        # every batch in the copy is whole: its circuits and jobs came with it
        for (bid,) in conn.execute("SELECT id FROM batches"):
            jobs = conn.execute("SELECT count(*) FROM jobs WHERE batch_id = ?", (bid,))
            circuits = conn.execute("SELECT count(*) FROM circuits WHERE batch_id = ?", (bid,))
            assert jobs.fetchone()[0] == circuits.fetchone()[0] > 0
    finally:
        conn.close()
    reopened = await Store.open(tmp_path / "copy.sqlite3")  # usable as a database
    assert (await reopened.get_batch(before[0])).id == before[0]
    await reopened.close()
    assert not await anyio.to_thread.run_sync(lambda: list(tmp_path.glob(".*partial")))


def test_a_backup_refuses_to_overwrite_the_live_database(tmp_path: Path) -> None:
    live = tmp_path / "live.sqlite3"
    sqlite3.connect(live).close()
    with pytest.raises(StoreError, match="must not overwrite"):
        backup(live, live)
    with pytest.raises(StoreError, match="no such database"):
        backup(tmp_path / "nope.sqlite3", tmp_path / "x")
