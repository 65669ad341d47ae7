"""Plot the IonQ benchmark's figures against the number of jobs, qjobd beside IonQ's helper.

    python -m bench.plot [--results bench/results/ionq_bench.json] [--out docs/benchmarks.png]

Three panels, log-scaled N: API requests per second (real time) and per job, client CPU
seconds per 1,000 jobs, and p50/p95 detection latency (real seconds). "helper, schedule"
is IonQ's helper's own schedule computed exactly (what the helper would do if it kept
up); "helper, measured" is the helper as it ran (docs/benchmarks.md says why they
differ). A side that did not finish is drawn hollow: its figures are lower bounds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

STYLE = {
    "qjobd": {"color": "tab:blue", "marker": "o", "label": "qjobd"},
    "helper": {"color": "tab:red", "marker": "s", "label": "IonQ helper, measured"},
    "schedule": {"color": "tab:gray", "marker": "^", "label": "IonQ helper, schedule",
                 "linestyle": "--"},
}


def series(results: list[dict[str, Any]], side: str, key: str
           ) -> tuple[list[int], list[float], list[bool]]:
    """(N, value, finished) of one side's figure, for the runs that have it."""
    ns, values, finished = [], [], []
    for r in sorted(results, key=lambda r: r["settings"]["n"]):
        value = r[side].get(key)
        if value is None:
            continue
        ns.append(r["settings"]["n"])
        values.append(float(value))
        finished.append(bool(r[side].get("finished", True)))
    return ns, values, finished


def requests_per_second(results: list[dict[str, Any]], side: str
                        ) -> tuple[list[int], list[float], list[bool]]:
    """Average requests per real second over the side's run."""
    ns, values, finished = [], [], []
    for r in sorted(results, key=lambda r: r["settings"]["n"]):
        s = r[side]
        if not s.get("requests") or not s.get("wall"):
            continue
        ns.append(r["settings"]["n"])
        values.append(s["requests"] / (s["wall"] * r["settings"]["scale"]))
        finished.append(bool(s.get("finished", True)))
    return ns, values, finished


def plot(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no screen on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")

    results = report["results"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), constrained_layout=True)
    panels = [
        (axes[0], "requests per job", "requests_per_job", ("qjobd", "helper", "schedule")),
        (axes[1], "requests per second (real)", None, ("qjobd", "helper")),
        (axes[2], "client CPU seconds per 1,000 jobs", "cpu_per_1000_jobs",
         ("qjobd", "helper")),
        (axes[3], "p50 detection latency, real s", "p50_latency_real",
         ("qjobd", "helper", "schedule")),
    ]
    for ax, title, key, sides in panels:
        for side in sides:
            ns, values, finished = (requests_per_second(results, side) if key is None
                                    else series(results, side, key))
            if not ns:
                continue
            style = dict(STYLE[side])
            ax.plot(ns, values, linestyle=style.pop("linestyle", "-"), color=style["color"],
                    label=style["label"])
            for n, v, done in zip(ns, values, finished, strict=True):
                ax.plot([n], [v], marker=style["marker"], color=style["color"],
                        markerfacecolor=style["color"] if done else "none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("jobs (N)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    m = report.get("machine", {})
    fig.suptitle(f"qjobd vs IonQ's async_wait_for_job on the fake IonQ "
                 f"({m.get('nproc', '?')} CPUs, {m.get('date', '')}; hollow = did not finish)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path,
                   default=ROOT / "bench" / "results" / "ionq_bench.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.png")
    args = p.parse_args(argv)
    report = json.loads(args.results.read_text())
    print(f"wrote {plot(report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
