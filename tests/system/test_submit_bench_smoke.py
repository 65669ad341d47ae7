"""The submit benchmark (``make bench-submit``, bench/submit_bench.py) in miniature, and
the submit path's promises that need a real daemon process: a small Qoro batch, half
OpenQASM 3, completes end to end; SIGTERM during a validation exits in seconds and
stores nothing."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from qjobd.testing.daemon_process import DaemonProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_produces_every_figure_and_completes_its_qoro_batch(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, "-m", "bench.submit_bench", "--quick", "--quiet",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=110)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert figures["notes"] == []  # the Qoro batch and every IonQ job completed
    assert figures["seconds_to_201"] > 0 and len(figures["qiskit_seconds"]) == 2
    assert figures["health_samples"] > 0 and figures["health_p99_ms"] < 1000
    assert figures["jobs"] == 20 and figures["cpu_ms_per_job"] > 0
    # the floor beside it: the same HTTP work from bare httpx and bare uvicorn + Starlette,
    # the guarantees' transactions from bare aiosqlite
    assert figures["floor_provider_ms"] > 0 and figures["floor_api_ms"] > 0
    assert figures["floor_store_ms"] > 0
    # every job's writes were committed: at least its four (create, intent, id, result),
    # in at most as many transactions
    assert figures["writes_per_job"] >= 4 and 0 < figures["commits_per_job"] <= figures[
        "writes_per_job"]
    assert figures["seconds_to_completed"] >= figures["seconds_to_201"]


#: a circuit only the reference path reads (U, reset): seconds of work for a parse worker
SLOW = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nreset q;\n'
        + "U(pi/2, 0, pi) q[0];\n" * 15000 + "c = measure q;\n")


def test_sigterm_during_a_validation_exits_within_5_s_and_stores_nothing() -> None:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="qjobd-term-"))
    daemon = DaemonProcess(root, '[daemon]\nlog_level = "info"\n[backends.local]\n'
                                 'type = "local"\nworkers = 1\n')
    daemon.start()
    answers: list[object] = []

    def submit() -> None:
        try:
            with daemon.http(timeout=60) as client:
                answers.append(client.post("/v1/batches", json={
                    "backend": "local", "circuits": {"a": SLOW, "b": SLOW, "c": SLOW}}))
        except httpx.HTTPError as exc:
            answers.append(exc)

    try:
        with daemon.http() as client:  # the parse workers are up
            ok = client.post("/v1/batches", json={"backend": "local", "circuits": {
                "bell": SLOW.replace("U(pi/2, 0, pi) q[0];\n" * 15000, "h q[0];\n")}})
            assert ok.status_code == 201, ok.text
        thread = threading.Thread(target=submit)
        thread.start()
        time.sleep(1.5)  # the body is in; the workers are on it
        assert not answers, "the validation ended before the signal"
        started = time.monotonic()
        assert daemon.signal(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 5
        thread.join(10)
        (answer,) = answers
        if isinstance(answer, httpx.Response):
            assert answer.status_code == 503, answer.text
        with sqlite3.connect(daemon.database) as db:
            (batches,) = db.execute("SELECT count(*) FROM batches").fetchone()
        assert batches == 1  # the Bell batch only
        wait_until(lambda: "stopped" in daemon.log.read_text(), 5, "the daemon's last line")
    finally:
        daemon.stop()
