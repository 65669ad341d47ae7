"""End to end: `qjobd serve` as a real subprocess, driven by `qjobctl` and raw HTTP."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qjobd.testing.daemon_process import BIN, TERMINAL, wait_until
from qjobd.testing.daemon_process import DaemonProcess as Daemon
from tests.conftest import EXAMPLES, short_tmpdir

# slow enough to still be running when the daemon is killed: ~1 s of statevector work each
SLOW = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[18];
creg c[18];
""" + "".join(f"h q[{i}];\n" for i in range(18)) + "".join(
    f"cx q[{i}], q[{(i + 1) % 18}];\nrz(0.{i + 1}) q[{i}];\n" for i in range(18)) * 6 + \
    "".join(f"h q[{i}];\n" for i in range(18)) + "measure q -> c;\n"


LOCAL_CONFIG = ('[backends.local]\ntype = "local"\nworkers = 2\n'
                '[backends.local.polling]\ninitial_interval = 0.05\nmax_interval = 0.5\n')


@pytest.fixture
def qjobd() -> Iterator[Daemon]:
    d = Daemon(short_tmpdir(), LOCAL_CONFIG)
    d.start()
    yield d
    d.stop()


def batch_state(d: Daemon, batch_id: str) -> dict:
    with d.http() as c:
        return c.get(f"/v1/batches/{batch_id}").json()


def test_submit_wait_prints_results_with_the_right_counts(qjobd: Daemon) -> None:
    r = qjobd.ctl("--json", "submit", str(EXAMPLES / "bell.qasm"), str(EXAMPLES / "ghz3.qasm"),
                  "--backend", "local", "--shots", "2000", "--wait")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    results = out["results"]["results"]
    assert set(results) == {"bell", "ghz3"}
    assert sum(results["bell"]["counts"].values()) == 2000
    assert set(results["bell"]["counts"]) <= {"00", "11"}
    assert sum(results["ghz3"]["counts"].values()) == 2000
    assert set(results["ghz3"]["counts"]) <= {"000", "111"}
    # the human form prints them too
    human = qjobd.ctl("results", out["batch"]["id"])
    assert human.returncode == 0 and "bell" in human.stdout and "ghz3" in human.stdout


def test_socket_is_0660_and_answers_plain_http(qjobd: Daemon) -> None:
    assert stat.S_IMODE(qjobd.socket.stat().st_mode) == 0o660
    r = subprocess.run(["curl", "-s", "--unix-socket", str(qjobd.socket),
                        "http://localhost/v1/health"], capture_output=True, text=True,
                       timeout=30) if _have("curl") else None
    if r is not None:
        assert json.loads(r.stdout)["status"] == "ok"
    with qjobd.http() as c:
        assert c.get("/v1/health").json()["backends"]["local"]["type"] == "local"


def test_the_daemon_runs_on_uvloop(qjobd: Daemon) -> None:
    """Its event loop is uvloop's (benchmarks.md: about 10% less CPU per job than asyncio's)."""
    assert qjobd.proc is not None
    maps = Path(f"/proc/{qjobd.proc.pid}/maps").read_text()
    assert "/uvloop/loop." in maps


def test_qjobctl_reports_invalid_qasm_with_label_and_line(qjobd: Daemon) -> None:
    bad = qjobd.root / "broken.qasm"
    bad.write_text("OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[1];\nfoo q[0];\n")
    r = qjobd.ctl("submit", str(bad), "--backend", "local")
    assert r.returncode == 1
    assert "broken" in r.stderr and "line 4" in r.stderr
    with qjobd.http() as c:
        assert c.get("/v1/batches").json()["batches"] == []


def test_kill_9_mid_batch_then_restart_completes_it_and_keeps_old_results(
        qjobd: Daemon) -> None:
    done = json.loads(qjobd.ctl("--json", "submit", str(EXAMPLES / "bell.qasm"),
                                "--backend", "local", "--shots", "300", "--wait").stdout)
    before = done["results"]
    slow = {f"s{i}": SLOW for i in range(4)}
    with qjobd.http() as c:
        r = c.post("/v1/batches", json={"backend": "local", "circuits": slow, "shots": 64})
    assert r.status_code == 201
    batch_id = r.json()["id"]
    wait_until(lambda: any(j["state"] in ("submitted", "running")
                           for j in batch_state(qjobd, batch_id)["jobs"]), 30, "a running job")
    assert qjobd.signal(signal.SIGKILL) == -signal.SIGKILL
    assert batch_state_offline(qjobd, batch_id) not in TERMINAL

    qjobd.start()
    r = qjobd.ctl("--json", "wait", batch_id, "--timeout", "120", timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    finished = batch_state(qjobd, batch_id)
    assert finished["state"] == "completed"
    with qjobd.http() as c:
        res = c.get(f"/v1/batches/{batch_id}/results").json()["results"]
        events = c.get("/v1/batches/" + batch_id).json()
        old = c.get(f"/v1/batches/{done['batch']['id']}/results").json()
    assert all(sum(v["counts"].values()) == 64 for v in res.values()) and len(res) == 4
    assert old == before  # completed results survive the crash unchanged
    assert any(j["attempts"] >= 2 for j in events["jobs"])  # a lost local job ran again
    log = _events(qjobd, batch_id)
    assert any("running it again" in json.dumps(e.get("detail") or {}) for e in log)


def test_sigterm_stops_within_seconds_and_removes_the_socket(qjobd: Daemon) -> None:
    with qjobd.http() as c:
        c.post("/v1/batches", json={"backend": "local", "circuits": {"s": SLOW}, "shots": 16})
    started = time.monotonic()
    assert qjobd.signal(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert not qjobd.socket.exists()
    assert "stopped" in qjobd.log.read_text()


def test_a_second_daemon_on_the_same_socket_refuses_to_start(qjobd: Daemon) -> None:
    r = subprocess.run([str(BIN / "qjobd"), "serve"], env=qjobd.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "already serving" in r.stderr


def batch_state_offline(d: Daemon, batch_id: str) -> str:
    import sqlite3

    conn = sqlite3.connect(d.database)
    try:
        return conn.execute("SELECT state FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]
    finally:
        conn.close()


def _events(d: Daemon, batch_id: str) -> list[dict]:
    import sqlite3

    conn = sqlite3.connect(d.database)
    try:
        rows = conn.execute("SELECT kind, state, detail FROM events WHERE batch_id = ? "
                            "ORDER BY seq", (batch_id,)).fetchall()
    finally:
        conn.close()
    return [{"kind": k, "state": s, "detail": json.loads(dt) if dt else None}
            for k, s, dt in rows]


def _have(program: str) -> bool:
    from shutil import which

    return which(program) is not None


def test_qjobd_backup_copies_the_live_database_while_the_daemon_runs(qjobd: Daemon) -> None:
    r = qjobd.ctl("--json", "submit", str(EXAMPLES / "bell.qasm"), "--backend", "local",
                  "--shots", "100", "--wait")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    dest = qjobd.root / "backups" / "copy.sqlite3"
    # the daemon keeps running and writing while the copy is taken
    with qjobd.http() as c:
        busy = c.post("/v1/batches", json={"backend": "local", "circuits": {"s": SLOW},
                                           "shots": 16}).json()
    out = subprocess.run([str(BIN / "qjobd"), "backup", str(dest)], env=qjobd.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(dest) in out.stdout
    assert qjobd.accepts() and qjobd.proc is not None and qjobd.proc.poll() is None
    # the copy is a database of its own: a daemon started on it serves the same results
    copy = Daemon(short_tmpdir(), LOCAL_CONFIG)
    copy.database.parent.mkdir(parents=True)
    dest.replace(copy.database)
    copy.start()
    try:
        with copy.http() as c:
            results = c.get(f"/v1/batches/{done['batch']['id']}/results").json()
            assert results == done["results"]
            assert c.get(f"/v1/batches/{busy['id']}").status_code == 200
    finally:
        copy.stop()
    # a destination that cannot be written is a clear error, not a traceback
    bad = subprocess.run([str(BIN / "qjobd"), "backup", "/proc/qjobd-backup.sqlite3"],
                         env=qjobd.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.startswith("qjobd: ") and "Traceback" not in bad.stderr
