"""The scale benchmark (``make bench-scale``, bench/scale_bench.py) in miniature, so it cannot rot.

Not a timed test: one tiny run of every phase (300 jobs, a 200-circuit batch, 100 single
batches, polling compressed to a 1 s cap) must produce every figure; the targets are
never checked (such sizes say nothing about them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.scale_bench import (
    DOC_BEGIN,
    DOC_END,
    figures_for,
    max_in_window,
    settings_of,
)
from bench.scale_bench import parse_args as scale_args

ROOT = Path(__file__).resolve().parents[2]


def test_max_in_window_counts_the_busiest_second() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # 0.5 .. 1.2
    assert max_in_window([0.0, 1.0, 2.0]) == 1  # a window is [t, t + 1)
    assert max_in_window([3.0, 1.0, 2.0]) == 1


def test_quick_mode_and_flags_set_the_sizes() -> None:
    quick = settings_of(scale_args(["--quick", "--jobs", "777"]))
    assert quick.jobs == 777 and quick.big_batch == 2_000
    assert settings_of(scale_args([])).jobs == 100_000


def test_a_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nprose kept\n\n{DOC_BEGIN}\nold table\n{DOC_END}\n\ntail\n")
    run = subprocess.run(
        [sys.executable, "-m", "bench.scale_bench", "--jobs", "300", "--big-batch", "200",
         "--big-repeats", "1", "--singles", "100", "--clients", "8", "--settle", "1",
         "--window", "2", "--restart-observe", "1", "--initial-interval", "0.5",
         "--max-interval", "1", "--bare-runs", "1", "--out", str(out), "--doc", str(doc),
         "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1 and report["machine"]["ram_gb"] > 0
    figures = report["figures"]
    assert set(figures) == set(figures_for(settings_of(scale_args([]))))
    for key, figure in figures.items():
        assert figure["measured"] is not None, key
        if figure["target"] is not None:
            assert figure["met"] in (True, False), key
    assert report["steady"]["status_requests"] > 0
    assert report["submit"]["singles_acked"] == 100
    text = doc.read_text()
    assert "prose kept" in text and "tail" in text and "old table" not in text
    assert "scheduling lag p99" in text and "scheduling lag p99" in run.stdout
