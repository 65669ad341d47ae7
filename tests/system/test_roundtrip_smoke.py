"""The round-trip benchmark (``make bench-roundtrip``, bench/roundtrip_bench.py) in
miniature, so it cannot rot: a tiny run produces every figure and rewrites only its own
section of the doc. Not a timed test: two runs on a shared box say nothing of the target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.roundtrip_bench import DOC_BEGIN, DOC_END

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    out, doc = tmp_path / "report.json", tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nprose kept\n\n{DOC_BEGIN}\nold table\n{DOC_END}\n\ntail\n")
    run = subprocess.run(
        [sys.executable, "-m", "bench.roundtrip_bench", "--runs", "2", "--warmup", "1",
         "--out", str(out), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    for side in ("round_trip_ms", "bare_script_ms", "bare_loop_ms"):
        assert 0 < report[side]["p10"] <= report[side]["median"] <= report[side]["p90"]
    assert set(report["round_trip_parts_ms"]) == {"submit", "wait", "results"}
    assert report["ratio"] > 0 and report["ratio_to_loop"] > 0
    assert report["met"] == (report["ratio"] <= report["target_ratio"] == 5.0)
    assert "ratio to the bare script" in run.stdout and "target <= 5" in run.stdout
    text = doc.read_text()
    assert "prose kept" in text and text.endswith("\n\ntail\n") and "old table" not in text
    assert "| round trip / bare script (medians) | <= 5 |" in text
