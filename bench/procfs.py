"""What the benchmarks read from /proc: a live process's CPU time and children, the CPU model."""

from __future__ import annotations

import os
from pathlib import Path


def user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a live process has used so far (fields 14 and 15 of
    stat(5), counted after the ")" that ends the command name); (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (0 once it is gone)."""
    return sum(user_system(pid))


def children(pid: int) -> list[int]:
    """The process's children, from every one of its threads (none once it is gone)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_model(default: str) -> str:
    """The CPU's model name, as /proc/cpuinfo says it; ``default`` where it does not."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
