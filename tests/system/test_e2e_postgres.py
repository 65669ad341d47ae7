"""End to end on PostgreSQL: `qjobd serve` as a real subprocess with its store in a
database of the suite's own PostgreSQL server (tests/conftest.py), killed with -9."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from qjobd.testing.daemon_process import BIN, TERMINAL, wait_until
from qjobd.testing.daemon_process import DaemonProcess as Daemon
from tests.conftest import EXAMPLES, short_tmpdir
from tests.system.test_e2e import LOCAL_CONFIG, SLOW


@pytest.fixture
def qjobd(postgres_url: str) -> Iterator[Daemon]:
    d = Daemon(short_tmpdir(), LOCAL_CONFIG, env={"QJOBD_DATABASE": postgres_url})
    d.start()
    yield d
    d.stop()


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]


def batch(d: Daemon, batch_id: str) -> dict:
    with d.http() as c:
        return c.get(f"/v1/batches/{batch_id}").json()


def test_kill_9_mid_batch_then_restart_completes_it_from_postgresql(
        qjobd: Daemon, postgres_url: str) -> None:
    with qjobd.http() as c:
        health = c.get("/v1/health").json()
    assert health["database"] == postgres_url  # no password in it to mask
    assert not qjobd.database.exists()  # nothing went to an SQLite file
    done = qjobd.ctl("--json", "submit", str(EXAMPLES / "bell.qasm"), "--backend", "local",
                     "--shots", "300", "--wait")
    assert done.returncode == 0, done.stderr
    before = json.loads(done.stdout)
    assert sum(before["results"]["results"]["bell"]["counts"].values()) == 300
    with qjobd.http() as c:
        r = c.post("/v1/batches", json={"backend": "local", "shots": 64,
                                        "circuits": {f"s{i}": SLOW for i in range(4)}})
    assert r.status_code == 201
    batch_id = r.json()["id"]
    wait_until(lambda: any(j["state"] in ("submitted", "running")
                           for j in batch(qjobd, batch_id)["jobs"]), 30, "a running job")

    assert qjobd.signal(signal.SIGKILL) == -signal.SIGKILL
    [(state,)] = query(postgres_url, "SELECT state FROM batches WHERE id = %s", batch_id)
    assert state not in TERMINAL

    qjobd.start()  # the killed daemon's lock on the database is released with its connection
    r = qjobd.ctl("--json", "wait", batch_id, "--timeout", "120", timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    finished = batch(qjobd, batch_id)
    assert finished["state"] == "completed"
    assert any(j["attempts"] >= 2 for j in finished["jobs"])  # a lost local job ran again
    with qjobd.http() as c:
        results = c.get(f"/v1/batches/{batch_id}/results").json()["results"]
        old = c.get(f"/v1/batches/{before['batch']['id']}/results").json()
    assert len(results) == 4 and all(sum(v["counts"].values()) == 64 for v in results.values())
    assert old == before["results"]  # completed results survive the crash unchanged
    details = [d for (d,) in query(postgres_url, "SELECT detail FROM events WHERE "
                                                 "batch_id = %s ORDER BY seq", batch_id) if d]
    assert any("running it again" in d for d in details)
    [(n,)] = query(postgres_url, "SELECT count(*) FROM results WHERE batch_id = %s", batch_id)
    assert n == 4


def test_a_second_daemon_with_the_same_node_name_refuses_to_start(
        qjobd: Daemon, postgres_url: str) -> None:
    # several daemons share a database, each as a node of its own name: the fixture's
    # is named after its host and socket; a second one given that very name is refused
    with qjobd.http() as c:
        node = c.get("/v1/health").json()["cluster"]["node"]
    other = Daemon(short_tmpdir(), LOCAL_CONFIG, env={"QJOBD_DATABASE": postgres_url,
                                                      "QJOBD_NODE": node})
    r = subprocess.run([str(BIN / "qjobd"), "serve"], env=other.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert f"another qjobd runs as node {node!r}" in r.stderr and postgres_url in r.stderr
    with qjobd.http() as c:  # the first one is unharmed
        assert c.get("/v1/health").status_code == 200


def test_a_password_in_the_url_works_but_is_never_shown(postgres_url: str) -> None:
    # the suite's server trusts local connections: any password is accepted, and must
    # appear nowhere
    secret = "pw-never-shown-7"
    url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    d = Daemon(short_tmpdir(), LOCAL_CONFIG, env={"QJOBD_DATABASE": url})
    d.start()
    try:
        with d.http() as c:
            health = c.get("/v1/health").json()
        assert health["database"] == url.replace(secret, "***")
        checked = subprocess.run([str(BIN / "qjobd"), "check-config", "--get",
                                  "daemon.database"], env=d.env, capture_output=True,
                                 text=True, timeout=60)
        assert checked.stdout.strip() == url.replace(secret, "***")
    finally:
        d.stop()
    log = d.log.read_text()
    assert "keep it in $PGPASSWORD" in log and secret not in log
