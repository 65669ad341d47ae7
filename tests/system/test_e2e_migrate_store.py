"""End to end: a daemon on SQLite killed mid-batch, its store moved with `qjobd
migrate-store`, then `qjobd serve` on the PostgreSQL database finishes the batch."""

from __future__ import annotations

import json
import subprocess

from qjobd.testing.daemon_process import BIN, TERMINAL, wait_until
from qjobd.testing.daemon_process import DaemonProcess as Daemon
from tests.conftest import EXAMPLES, committed, short_tmpdir
from tests.system.test_e2e import LOCAL_CONFIG, SLOW


def migrate_store(d: Daemon, url: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it: the daemon's own configuration (its store)."""
    return subprocess.run([str(BIN / "qjobd"), "migrate-store", "--to", url], env=d.env,
                          capture_output=True, text=True, timeout=300)


def batch(d: Daemon, batch_id: str) -> dict:
    with d.http() as c:
        return c.get(f"/v1/batches/{batch_id}").json()


def events(d: Daemon) -> list[dict]:
    with d.http() as c:
        text = c.get("/v1/events", params={"since": 0}).text
    return [json.loads(line) for line in text.splitlines() if line]


def test_migrate_a_killed_sqlite_daemons_store_then_serve_it_from_postgresql(
        postgres_url: str) -> None:
    sqlite = Daemon(short_tmpdir(), LOCAL_CONFIG)
    sqlite.start()
    try:
        done = sqlite.ctl("--json", "submit", str(EXAMPLES / "bell.qasm"), "--backend",
                          "local", "--shots", "300", "--wait")
        assert done.returncode == 0, done.stderr
        before = json.loads(done.stdout)
        with sqlite.http() as c:
            canceled = c.post("/v1/batches", json={
                "backend": "local", "shots": 10, "circuits": {"c": SLOW}}).json()["id"]
            assert c.post(f"/v1/batches/{canceled}/cancel").status_code in (200, 202)
        wait_until(lambda: batch(sqlite, canceled)["state"] == "canceled", 30, "the cancel")
        refused = migrate_store(sqlite, postgres_url)  # the daemon still serves
        assert refused.returncode == 1
        assert "a qjobd is serving on" in refused.stderr, refused.stderr
        with sqlite.http() as c:
            r = c.post("/v1/batches", json={"backend": "local", "shots": 64,
                                            "circuits": {f"s{i}": SLOW for i in range(4)}})
        assert r.status_code == 201
        busy = r.json()["id"]
        wait_until(lambda: any(j["state"] in ("submitted", "running")
                               for j in batch(sqlite, busy)["jobs"]), 30, "a running job")
        sqlite.kill()
    finally:
        sqlite.stop()
    assert batch_state_in(sqlite, busy) not in TERMINAL
    old_events = committed(sqlite.database, "SELECT seq, batch_id, kind FROM events "
                                            "ORDER BY seq")

    moved = migrate_store(sqlite, postgres_url)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "copied:" in moved.stdout

    pg = Daemon(short_tmpdir(), LOCAL_CONFIG, env={"QJOBD_DATABASE": postgres_url})
    pg.start()
    try:
        with pg.http() as c:
            assert c.get("/v1/health").json()["database"] == postgres_url
            listed = {b["id"]: b["state"] for b in c.get("/v1/batches").json()["batches"]}
        assert listed == {before["batch"]["id"]: "completed", busy: listed[busy],
                          canceled: "canceled"}
        r = pg.ctl("--json", "wait", busy, "--timeout", "120", timeout=150)
        assert r.returncode == 0, r.stdout + r.stderr
        finished = batch(pg, busy)
        assert finished["state"] == "completed"
        with pg.http() as c:
            results = c.get(f"/v1/batches/{busy}/results").json()["results"]
            old = c.get(f"/v1/batches/{before['batch']['id']}/results").json()
        assert len(results) == 4
        assert all(sum(v["counts"].values()) == 64 for v in results.values())
        assert old == before["results"]  # kept as they were
        now = events(pg)
    finally:
        pg.stop()
    # one event stream: the old events kept their seqs, the new ones follow them
    assert [(e["seq"], e["batch_id"], e["kind"]) for e in now[:len(old_events)]] == old_events
    seqs = [e["seq"] for e in now]
    assert seqs == sorted(set(seqs)) and len(now) > len(old_events)
    assert not pg.database.exists()  # nothing went to an SQLite file


def batch_state_in(d: Daemon, batch_id: str) -> str:
    [(state,)] = committed(d.database, "SELECT state FROM batches WHERE id = ?", (batch_id,))
    return str(state)
