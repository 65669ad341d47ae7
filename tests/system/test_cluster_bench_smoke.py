"""The cluster benchmark (``make bench-cluster``, bench/cluster_bench.py) in miniature, so it
cannot rot.

Not a timed test: one tiny run (200 jobs in batches of 25; 1, 2 and 3 nodes on one
database of its own PostgreSQL server; a 3 s window; kill -9 of a node with leases of 5 s
and 3 s) must produce every figure, the table, the failover figures, the plot and the doc
section; what the figures are is never checked (such sizes say nothing about them).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster_bench import DOC_BEGIN, DOC_END, cpu_between, update_doc

ROOT = Path(__file__).resolve().parents[2]


def _need_postgres() -> None:
    """Skip without PostgreSQL (as tests/conftest.py's fixtures do); under CI, fail."""
    from qjobd.testing.postgres import PostgresNotFound, find_bindir

    try:
        import psycopg  # noqa: F401

        find_bindir()
    except (ImportError, PostgresNotFound) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI is set: the PostgreSQL tests must not skip)", pytrace=False)
        pytest.skip(str(exc))


def test_cpu_between_counts_a_process_born_in_the_window_from_zero() -> None:
    assert cpu_between({1: 1.0, 2: 5.0}, {1: 1.5, 2: 5.0, 3: 0.25}) == pytest.approx(0.75)


def test_the_fake_logs_each_polled_id_only_when_asked() -> None:
    import time

    import httpx

    from qjobd.testing.fake_ionq import FakeIonQ

    for on in (False, True):
        with FakeIonQ(api_key="k", duration=60.0, log_polled_ids=on) as fake:
            ids = fake.plant(3, "OPENQASM 3.0;\nqubit q;\nbit c;\nc = measure q;\n")
            before = time.monotonic()
            r = httpx.get(f"{fake.base_url}/jobs", params=[("ids", i) for i in ids[:2]],
                          headers=fake.auth_headers)
            assert r.status_code == 200, r.text
            polls = fake.polls_after(before)
            assert [p[1] for p in polls] == (ids[:2] if on else [])
            assert all(p[0] >= before for p in polls)


def test_update_doc_adds_the_section_once_and_then_replaces_it(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose kept\n")
    update_doc(doc, f"{DOC_BEGIN}\nfirst\n{DOC_END}")
    update_doc(doc, f"{DOC_BEGIN}\nsecond\n{DOC_END}")
    text = doc.read_text()
    assert text.count("## Several daemons") == 1 and text.count(DOC_BEGIN) == 1
    assert "prose kept" in text and "second" in text and "first" not in text


@pytest.mark.timeout(900)
def test_a_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    _need_postgres()
    out, png, doc = tmp_path / "cluster.json", tmp_path / "cluster.png", tmp_path / "b.md"
    doc.write_text(f"# Benchmarks\n\nprose kept\n\n{DOC_BEGIN}\nold table\n{DOC_END}\n\ntail\n")
    run = subprocess.run(
        [sys.executable, "-m", "bench.cluster_bench", "--quick", "--out", str(out),
         "--plot", str(png), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1 and len(report["load_at_start"]) == 3
    steady = report["steady"]
    # 1, 2 and 3 nodes at the quick lease, and 3 nodes at the short one
    assert [(r["nodes"], r["lease_seconds"]) for r in steady] == [(1, 5.0), (2, 5.0),
                                                                 (3, 5.0), (3, 3.0)]
    for r in steady:
        assert r["in_flight"] == 200, r
        assert r["job_polls"] > 0 and r["status_requests"] > 0, r
        assert r["distinct_jobs_polled"] > 0, r
        for key in ("job_polls_per_s", "status_requests_per_s", "daemon_cpu_us_per_poll",
                    "daemon_cpu_ms_per_request", "postgres_cpu_us_per_poll",
                    "scheduled_polls_per_s", "created_s"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert r["daemon_cpu_s"] > 0, r
        # every node holds leases, and the health's counts add up to the jobs
        assert len(r["leases"]) == r["nodes"] and sum(r["leases"].values()) == 200, r
        assert sum(r["lease_shares"].values()) == pytest.approx(1.0)
        assert set(r["log_problems"]) == {"warnings_or_errors", "lease_rounds_failed",
                                          "deadlocks"}
    fails = report["failover"]
    assert [f["lease_seconds"] for f in fails] == [5.0, 3.0]
    for f in fails:
        assert f["held"] > 0 and f["polled_again"] == f["held"], f
        assert f["taken_over"] == f["held"], f
        for key in ("poll_p50_s", "poll_max_s", "taken_p50_s", "taken_max_s", "seen_dead_s",
                    "bound_s"):
            assert f[key] is not None and f[key] > 0, (key, f)
        assert len(f["poll_times"]) == f["held"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = doc.read_text()
    assert "prose kept" in text and "tail" in text and "old table" not in text
    assert "daemons' CPU per poll (us)" in text and "polled again: p50 / max (s)" in text
    assert "Why:" in text and "load average" in text
    assert "daemons' CPU per poll (us)" in run.stdout and "report:" in run.stdout
