"""The benchmark (``make bench``, bench/ionq_bench.py) in miniature, so it cannot rot.

Not a timed test: it checks that one tiny run of both sides completes and produces every
figure, never the targets (20 jobs at K = 400 say nothing about either).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ionq_bench import DOC_BEGIN, DOC_END, ROWS, helper_schedule, percentile

ROOT = Path(__file__).resolve().parents[2]

needs_ionq_core = pytest.mark.skipif(
    importlib.util.find_spec("ionq_core") is None,
    reason="ionq-core (the benchmark's baseline) is not installed: pip install -e '.[test]'")


def test_helper_schedule_matches_the_helper_code() -> None:
    # ionq_core.polling: a poll at once, then 1 s, x1.5, capped at 30 s; polls at
    # 0, 1, 2.5, 4.75, ..., 74.9, then every 30 s: a 300 s job is seen at 314.9 s
    polls, latency = helper_schedule(300.0)
    assert polls == 18
    assert latency == pytest.approx(14.89, abs=0.01)
    assert helper_schedule(0.0) == (1, 0.0)
    assert helper_schedule(1.0) == (2, 0.0)


def test_percentile_interpolates() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 50))


@needs_ionq_core
def test_a_tiny_run_of_both_sides_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nprose kept\n\n{DOC_BEGIN}\nold table\n{DOC_END}\n\ntail\n")
    run = subprocess.run(
        [sys.executable, "-m", "bench.ionq_bench", "--n", "20", "--scale", "400",
         "--side-timeout", "60", "--out", str(out), "--doc", str(doc), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1
    (result,) = report["results"]
    for side in ("helper", "qjobd"):
        figures = result[side]
        assert figures["completed"] == 20, result[f"{side}_notes"]
        assert figures["finished"] is True
        for row in ROWS:
            assert figures[row.key] is not None and figures[row.key] > 0, (side, row.key)
    for row in ROWS:
        if row.key != "cpu_per_1000_jobs":  # the schedule is a model: it has no CPU
            assert result["schedule"][row.key] is not None, row.key
    # the doc's generated section was replaced, the prose around it kept
    text = doc.read_text()
    assert "prose kept" in text and "tail" in text and "old table" not in text
    assert "requests per completed job" in text
    assert "requests per completed job" in run.stdout
