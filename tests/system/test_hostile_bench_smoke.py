"""bench/hostile_requests.py in miniature, so it cannot rot: each case it runs is answered
as the API promises (not a timed test; the figures are in docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import hostile_requests


def test_the_hostile_requests_bench_runs_and_each_case_is_refused(tmp_path: Path,
                                                                  capsys) -> None:
    out = tmp_path / "figures.json"
    assert hostile_requests.main(["--quick", "--cases",
                                  "valid,deep,duplicates-small", "--json", str(out)]) == 0
    figures = {f["case"]: f for f in json.loads(out.read_text())["figures"]}
    assert figures["valid"]["status"] == 201
    assert (figures["deep"]["status"], figures["deep"]["code"]) == (400, "too_deep")
    assert figures["duplicates-small"]["status"] == 400
    assert all(f["peak_growth_mb"] >= 0 for f in figures.values())
    assert "nesting scan vs json.loads" in capsys.readouterr().out
