"""A batch's optional ``metadata`` object (beyond SPEC's core interface; README "Batch
metadata"): stored with the batch by migration 4, returned in every batch object, limited
by ``[daemon] max_metadata_bytes``. The toolkit adapters (qjobd.qiskit) keep their result
layout there, so another process can rebuild a result from the batch id alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from qjobd.daemon.config import parse_config
from qjobd.store.schema import MIGRATIONS
from qjobd.store.store import Store
from tests.conftest import BELL2, Daemon, count_rows
from tests.integration.served import served

EMPTY = {"batches": 0, "jobs": 0, "circuits": 0, "results": 0, "events": 0}
LAYOUT = {"qjobd.qiskit": {"kind": "sampler", "pubs": [
    {"shape": [2, 3], "shots": 100, "registers": [["meas", 2], ["extra", 3]]}]},
    "zeta": 1, "alpha": None, "unicode": "θ"}


async def test_metadata_is_stored_and_returned_as_given(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={
        "backend": "fake", "circuits": {"a": BELL2}, "metadata": LAYOUT})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["metadata"] == LAYOUT
    # the submitter's key order is kept
    assert list(created["metadata"]) == list(LAYOUT)
    shown = (await daemon.client.get(f"/v1/batches/{created['id']}")).json()
    assert shown["metadata"] == LAYOUT and list(shown["metadata"]) == list(LAYOUT)
    listed = (await daemon.client.get("/v1/batches")).json()["batches"]
    assert listed[0]["metadata"] == LAYOUT
    stored = await daemon.store.get_batch(created["id"])
    assert stored.metadata == LAYOUT


async def test_without_metadata_a_batch_says_null(daemon: Daemon) -> None:
    for extra in ({}, {"metadata": None}):
        r = await daemon.client.post("/v1/batches", json={
            "backend": "fake", "circuits": {"a": BELL2}, **extra})
        assert r.status_code == 201, r.text
        assert r.json()["metadata"] is None


async def test_metadata_is_part_of_the_idempotent_request(daemon: Daemon) -> None:
    body = {"backend": "fake", "circuits": {"a": BELL2}, "metadata": {"run": 1}}
    first = await daemon.client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k"})
    again = await daemon.client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["metadata"] == {"run": 1}
    other = await daemon.client.post("/v1/batches", json={**body, "metadata": {"run": 2}},
                                     headers={"Idempotency-Key": "k"})
    assert other.status_code == 409


@pytest.mark.parametrize("value", [[1, 2], "text", 3, True])
async def test_metadata_that_is_not_an_object_is_a_400_naming_it(daemon: Daemon, value) -> None:
    r = await daemon.client.post("/v1/batches", json={
        "backend": "fake", "circuits": {"a": BELL2}, "metadata": value})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["details"]["field"] == "metadata" and "'metadata'" in error["message"]
    assert count_rows(daemon.db) == EMPTY


async def test_metadata_over_64_kib_is_a_400_naming_field_limit_and_setting(
        daemon: Daemon) -> None:
    # the fixture's body limit is 200,000 bytes: this is refused for the metadata's size
    r = await daemon.client.post("/v1/batches", json={
        "backend": "fake", "circuits": {"a": BELL2}, "metadata": {"blob": "x" * 70_000}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large"
    assert error["details"] == {"field": "metadata", "limit": 65536,
                                "setting": "max_metadata_bytes"}
    assert "max_metadata_bytes" in error["message"] and "65536" in error["message"]
    assert count_rows(daemon.db) == EMPTY
    # just under the limit is taken
    r = await daemon.client.post("/v1/batches", json={
        "backend": "fake", "circuits": {"a": BELL2}, "metadata": {"blob": "x" * 65_000}})
    assert r.status_code == 201


def test_the_limit_is_configurable_and_0_refuses_any_metadata() -> None:
    assert parse_config({}).daemon.max_metadata_bytes == 64 * 1024
    assert parse_config({"daemon": {"max_metadata_bytes": 10}}).daemon.max_metadata_bytes == 10
    with served({"max_metadata_bytes": 0}) as d, d.client() as c:
        r = c.post("/v1/batches", json={"backend": "fake", "circuits": {"a": BELL2},
                                        "metadata": {}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_large"
        assert c.post("/v1/batches", json={"backend": "fake",
                                           "circuits": {"a": BELL2}}).status_code == 201


def _schema_3(path: Path) -> None:
    """A database as qjobd made it before migration 4, with one batch in it."""
    with sqlite3.connect(path) as conn:
        for step, script in enumerate(MIGRATIONS[:3], start=1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {step}; COMMIT;")
        conn.execute(
            "INSERT INTO batches (id, owner_uid, backend, shots, name, tags, options, state, "
            "created_at, updated_at) VALUES ('old', 1000, 'local', 10, NULL, '{}', '{}', "
            "'queued', 1.0, 1.0)")
    conn.close()


async def test_an_old_database_upgrades_and_keeps_its_batches(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    _schema_3(path)
    store = await Store.open(path)
    try:
        old = await store.get_batch("old")
        assert old.metadata is None and old.shots == 10
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 4
        columns = [r[1] for r in conn.execute("PRAGMA table_info(batches)")]
        assert "metadata" in columns
    conn.close()


def test_the_client_sends_metadata_and_reads_it_back() -> None:
    from qjobd.client import Client

    with served() as d, Client(d.socket) as client:
        batch = client.submit({"a": BELL2}, "fake", metadata=LAYOUT)
        assert batch.metadata == LAYOUT
        assert client.get(batch.id).metadata == LAYOUT
        assert client.submit({"a": BELL2}, "fake").metadata is None
