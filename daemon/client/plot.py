"""Pictures of a batch's results: histograms in the terminal, or one PNG per batch.

``terminal_histograms`` draws each circuit's counts as horizontal bars in text (block
characters where the terminal takes UTF-8, ``#`` otherwise); ``write_figure`` draws the
same histograms with matplotlib (the ``qjobd[plot]`` extra) into one image file, one
panel per circuit. Both order outcomes by bitstring, so two circuits' bars line up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qjobd.daemon.client.errors import ClientError

__all__ = ["PlotUnavailable", "terminal_histograms", "write_figure"]

#: at most this many outcomes per circuit are drawn (the most frequent); the rest summed
MAX_BARS = 32
_EIGHTHS = " ▏▎▍▌▋▊▉"


class PlotUnavailable(ClientError):
    """Drawing a figure file needs matplotlib: ``pip install 'qjobd[plot]'``."""


def _circuits(answer: Mapping[str, Any]) -> list[tuple[str, dict[str, int]]]:
    results = answer.get("results") or {}
    return [(label, dict((results[label] or {}).get("counts") or {})) for label in sorted(results)]


def _shown(counts: Mapping[str, int], limit: int) -> tuple[list[tuple[str, int]], int, int]:
    """The outcomes drawn (by bitstring), and how many others there were, with their sum."""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    kept = {bits for bits, _ in top}
    rest = [n for bits, n in counts.items() if bits not in kept]
    return sorted(top), len(rest), sum(rest)


def _bar(fraction: float, width: int, unicode: bool) -> str:
    if not unicode:
        return "#" * round(fraction * width)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def terminal_histograms(answer: Mapping[str, Any], *, width: int = 40, unicode: bool = True,
                        max_bars: int = MAX_BARS) -> str:
    """Each circuit's counts as text bars scaled to its most frequent outcome."""
    blocks = []
    for label, counts in _circuits(answer):
        total = sum(counts.values())
        lines = [f"{label} ({total} shots)"]
        if not counts:
            lines.append("  (no counts)")
        shown, others, other_sum = _shown(counts, max_bars)
        peak = max((n for _, n in shown), default=1)
        key_width = max((len(bits) for bits, _ in shown), default=0)
        count_width = max((len(str(n)) for _, n in shown), default=0)
        for bits, n in shown:
            share = f"{100 * n / total:5.1f}%" if total else ""
            lines.append(f"  {bits:>{key_width}} {_bar(n / peak, width, unicode):<{width}} "
                         f"{n:>{count_width}} {share}")
        if others:
            lines.append(f"  ... {others} more outcomes, {other_sum} shots")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "(no results)"


def write_figure(answer: Mapping[str, Any], path: str | Path, *,
                 max_bars: int = MAX_BARS) -> Path:
    """One image (format from the suffix: .png, .svg, .pdf) with a panel per circuit."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(f"{PlotUnavailable.__doc__} ({exc})") from None
    circuits = _circuits(answer) or [("(no results)", {})]
    cols = min(3, len(circuits))
    rows = math.ceil(len(circuits) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (label, counts) in enumerate(circuits):
        ax = fig.add_subplot(rows, cols, i + 1)
        shown, others, _ = _shown(counts, max_bars)
        keys = [bits for bits, _ in shown]
        ax.bar(range(len(keys)), [n for _, n in shown], color="#3b6ea5")
        ax.set_xticks(range(len(keys)), keys, rotation=90 if len(keys) > 8 else 0,
                      fontsize=8, family="monospace")
        title = f"{label} ({sum(counts.values())} shots)"
        ax.set_title(title + (f", {others} more outcomes" if others else ""), fontsize=9)
        ax.set_ylabel("counts")
    batch_id = answer.get("id")
    if batch_id:
        fig.suptitle(f"batch {batch_id} ({answer.get('state', '?')})", fontsize=10)
    out = Path(path)
    fig.savefig(out)
    return out
