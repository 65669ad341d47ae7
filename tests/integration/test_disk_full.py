"""A full disk: submissions fail with 507 and store nothing, the rest keeps going, and the
daemon recovers by itself when space returns.

The full disk is SQLite's own SQLITE_FULL, raised by capping the file's page count
(``PRAGMA max_page_count``): the same error, path and rollback as a full filesystem.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import BELL2, TEST_STORE, Daemon, count_rows, eventually

pytestmark = pytest.mark.skipif(TEST_STORE != "sqlite",
                                reason="SQLite's own full disk (QJOBD_TEST_STORE=postgresql)")


async def cap_growth(d: Daemon, extra_pages: int = 0) -> None:
    pages = (await d.store._wconn.execute_fetchall("PRAGMA page_count"))[0][0]
    await d.store._wconn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def event_batches(db: Path) -> set[str]:
    """The batches the event log has rows for, read through a fresh connection."""
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT batch_id FROM events "
                                            "WHERE batch_id IS NOT NULL")}
    finally:
        conn.close()


async def lift_cap(d: Daemon) -> None:
    await d.store._wconn.execute("PRAGMA max_page_count = 1073741823")


async def test_a_full_disk_rejects_submissions_with_507_and_recovers(daemon: Daemon) -> None:
    running = (await daemon.client.post("/v1/batches", json={
        "backend": "held", "circuits": {"a": BELL2}})).json()

    async def submitted() -> bool:
        got = await daemon.client.get(f"/v1/batches/{running['id']}")
        return got.json()["jobs"][0]["state"] == "submitted"
    await eventually(submitted)
    before = count_rows(daemon.db)
    await cap_growth(daemon)
    big = {f"c{i}": BELL2 for i in range(300)}
    r = await daemon.client.post("/v1/batches", json={"backend": "fake", "circuits": big})
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "disk_full"
    assert "full" in r.json()["error"]["message"]
    # nothing half-stored: no row of the rejected batch anywhere (the running batch may
    # still log events of its own, e.g. its first remote status, while this goes on)
    after = count_rows(daemon.db)
    assert {t: n for t, n in after.items() if t != "events"} == \
        {t: n for t, n in before.items() if t != "events"}
    assert event_batches(daemon.db) == {running["id"]}
    # reads and the rest of the daemon still work
    assert (await daemon.client.get(f"/v1/batches/{running['id']}")).status_code == 200
    health = (await daemon.client.get("/v1/health")).json()
    assert "full" in (health["store"]["last_error"] or "")
    # polling goes on: the held job keeps being asked about while the disk is full
    held = daemon.backends["held"]
    calls = held.status_calls
    await eventually(lambda: held.status_calls > calls + 3)

    await lift_cap(daemon)  # space returns: no restart needed
    r = await daemon.client.post("/v1/batches", json={"backend": "fake", "circuits": big})
    assert r.status_code == 201
    await eventually(lambda: count_rows(daemon.db)["batches"] == before["batches"] + 1)


async def test_a_job_finishing_while_the_disk_is_full_is_stored_once_space_returns(
        daemon: Daemon) -> None:
    b = (await daemon.client.post("/v1/batches", json={
        "backend": "held", "circuits": {"a": BELL2}, "shots": 5000})).json()
    held = daemon.backends["held"]
    await eventually(lambda: len(held.jobs) == 1)
    await cap_growth(daemon)
    remote_id = next(iter(held.jobs))
    # counts big enough that storing them needs pages the capped file cannot get
    wide = {format(i, "020b"): 1 for i in range(held.jobs[remote_id].request.shots)}
    held.finish(remote_id, {"a": wide})

    async def state() -> str:
        return (await daemon.client.get(f"/v1/batches/{b['id']}")).json()["state"]
    calls = held.status_calls
    await eventually(lambda: held.status_calls > calls + 2)  # seen completed, not storable
    assert await state() != "completed"
    await lift_cap(daemon)

    async def completed() -> bool:
        return await state() == "completed"
    await eventually(completed)
    results = (await daemon.client.get(f"/v1/batches/{b['id']}/results")).json()["results"]
    assert results["a"]["counts"] == wide
