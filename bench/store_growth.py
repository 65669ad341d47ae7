"""Store growth: bytes per stored circuit and result, and the file size under retention.

    python -m bench.store_growth                         # quick defaults, a few seconds
    python -m bench.store_growth --batches 500 --cycles 20 --json out.json

Everything goes through the real Store (the writer's grouped FULL-sync commits, the
event log, the job counts) on a real SQLite file in a temporary directory.

1. Bytes per stored circuit, for a Bell circuit and a 20-qubit circuit: the growth of
   the used pages ((page_count - freelist_count) x page_size) over N batches of C
   circuits (one job per circuit, as on IonQ), divided by the number of circuits; it
   includes each circuit's share of its batch, job and event rows and of the indexes.
2. Bytes per stored result, for a counts dict of a few outcomes (Bell) and of many (a
   20-qubit circuit's distinct bitstrings): the growth over the transitions that store
   the results (job row update, result row, job and batch events), per result.
3. Steady state: cycles of submit, complete, age and clean up with a retention of R
   cycles (each cycle is one simulated day; batches are aged by setting finished_at),
   printing the database file, the WAL file, page_count and freelist_count after each.
   SQLite reuses the pages a cleanup frees, so the file stops growing after R+1
   cycles without VACUUM.

Figures only, no timed assertions. ``main(argv)`` is what ``make bench-scale`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from qjobd.store.models import Batch, CircuitRecord, NewBatch
from qjobd.store.retention import DAY
from qjobd.store.states import JobState
from qjobd.store.store import Store

T = TypeVar("T")

#: the labels of the figures, as printed (the smoke test checks each one is there)
CIRCUIT_BELL = "bytes per stored circuit, Bell (2 qubits)"
CIRCUIT_Q20 = "bytes per stored circuit, 20 qubits"
RESULT_FEW = "bytes per stored result, 2 outcomes"
RESULT_MANY = "bytes per stored result, many outcomes"
STEADY = "steady-state database size"
GROWTH = "growth over the last cycles"
FIGURES = (CIRCUIT_BELL, CIRCUIT_Q20, RESULT_FEW, RESULT_MANY, STEADY, GROWTH)

BELL = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
"""


def wide_circuit(qubits: int = 20, layers: int = 2, seed: int = 7) -> str:
    """A QAOA-like circuit: H on all, then ZZ (cx-rz-cx) and RX layers, then measure."""
    rng = random.Random(seed)
    lines = ['OPENQASM 3.0;', 'include "stdgates.inc";', f"qubit[{qubits}] q;",
             f"bit[{qubits}] c;"]
    lines += [f"h q[{i}];" for i in range(qubits)]
    for _ in range(layers):
        for i in range(qubits - 1):
            lines += [f"cx q[{i}], q[{i + 1}];", f"rz({rng.uniform(0, 3.14):.6f}) q[{i + 1}];",
                      f"cx q[{i}], q[{i + 1}];"]
        lines += [f"rx({rng.uniform(0, 3.14):.6f}) q[{i}];" for i in range(qubits)]
    lines.append("c = measure q;")
    return "\n".join(lines) + "\n"


def bell_counts(shots: int) -> dict[str, int]:
    return {"00": shots // 2, "11": shots - shots // 2}


def wide_counts(outcomes: int, qubits: int = 20, seed: int = 11) -> dict[str, int]:
    """``outcomes`` distinct bitstrings, one shot each (a 20-qubit run of that many shots)."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    while len(counts) < outcomes:
        counts[format(rng.getrandbits(qubits), f"0{qubits}b")] = 1
    return counts


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    source: str
    qubits: int
    counts: dict[str, int]


def kinds(outcomes: int) -> tuple[Kind, Kind]:
    return (Kind("bell", BELL, 2, bell_counts(1000)),
            Kind("q20", wide_circuit(), 20, wide_counts(outcomes)))


def new_batch(kind: Kind, circuits: int) -> NewBatch:
    labels = [f"{kind.name}-{i}" for i in range(circuits)]
    return NewBatch(
        owner_uid=1000, backend="ionq", shots=sum(kind.counts.values()),
        circuits=[CircuitRecord(label, kind.source, 3, kind.qubits, kind.qubits)
                  for label in labels],
        groups=[[label] for label in labels], name=f"bench {kind.name}")


# -- measuring -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Size:
    file_bytes: int
    wal_bytes: int
    page_count: int
    freelist_count: int
    page_size: int

    @property
    def used_bytes(self) -> int:
        return (self.page_count - self.freelist_count) * self.page_size

    @property
    def logical_bytes(self) -> int:
        return self.page_count * self.page_size


def size_of(db: Path) -> Size:
    """Sizes as a fresh connection sees them (the WAL included); the files as on disk."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page_count, freelist, page_size = (
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_count", "freelist_count", "page_size"))
    finally:
        conn.close()
    wal = db.with_name(db.name + "-wal")
    return Size(db.stat().st_size, wal.stat().st_size if wal.exists() else 0,
                page_count, freelist, page_size)


async def in_slices(calls: Sequence[Awaitable[T]], size: int = 500) -> list[T]:
    """Await ``calls`` a slice at a time, so that the writer groups them."""
    out: list[T] = []
    for i in range(0, len(calls), size):
        out += await asyncio.gather(*calls[i:i + size])
    return out


async def submit(store: Store, kind: Kind, batches: int, circuits: int) -> list[Batch]:
    made = await in_slices([store.create_batch(new_batch(kind, circuits))
                            for _ in range(batches)])
    return [batch for batch, _ in made]


async def start_jobs(store: Store, batches: Sequence[Batch]) -> None:
    jobs = [job.id for batch in batches for job in batch.jobs]
    await in_slices([store.transition(j, JobState.SUBMITTING) for j in jobs])
    await in_slices([store.transition(j, JobState.SUBMITTED, remote_id=f"remote-{j}")
                     for j in jobs])


async def complete(store: Store, kind: Kind, batches: Sequence[Batch]) -> int:
    calls = [store.transition(job.id, JobState.COMPLETED, results={label: kind.counts},
                              shots=sum(kind.counts.values()))
             for batch in batches for job in batch.jobs for label in job.labels]
    await in_slices(calls)
    return len(calls)


async def per_item(db: Path, kind: Kind, batches: int, circuits: int) -> tuple[float, float]:
    """Bytes per stored circuit and per stored result, for one kind, on a fresh file."""
    store = await Store.open(db)
    try:
        before = size_of(db).used_bytes
        made = await submit(store, kind, batches, circuits)
        after_submit = size_of(db).used_bytes
        await start_jobs(store, made)
        before_results = size_of(db).used_bytes
        results = await complete(store, kind, made)
        after_results = size_of(db).used_bytes
    finally:
        await store.close()
    return ((after_submit - before) / (batches * circuits),
            (after_results - before_results) / results)


async def age(store: Store, batch_ids: Sequence[str], finished_at: float) -> None:
    """Pretend these batches finished at ``finished_at`` (a simulated day)."""
    ids = list(batch_ids)

    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE batches SET finished_at = ? WHERE id = ?",
                         [(finished_at, batch_id) for batch_id in ids])

    await store.write(op)


@dataclass(frozen=True, slots=True)
class CycleRow:
    cycle: int
    batches_kept: int
    removed: int
    #: page_count x page_size: the file's size once the WAL is checkpointed into it
    database_bytes: int
    file_bytes: int
    wal_bytes: int
    page_count: int
    freelist_count: int


async def steady_state(db: Path, args: argparse.Namespace) -> tuple[list[CycleRow], Size]:
    """The cycles' sizes, and the files' once the store is closed (WAL checkpointed)."""
    bell, wide = kinds(args.outcomes)
    rows: list[CycleRow] = []
    store = await Store.open(db)
    try:
        for cycle in range(args.cycles):
            half = max(1, args.batches // 2)
            made = (await submit(store, bell, half, args.circuits)
                    + await submit(store, wide, args.batches - half, args.circuits))
            await start_jobs(store, made)
            await complete(store, bell, [b for b in made if b.name == "bench bell"])
            await complete(store, wide, [b for b in made if b.name == "bench q20"])
            await age(store, [b.id for b in made], (cycle + 1) * DAY)
            # keep the batches of the last `retain` cycles (days)
            purge = await store.purge_finished((cycle + 1 - args.retain) * DAY + 1)
            kept = (await store.counts_by_state())["batches"]
            size = size_of(db)
            rows.append(CycleRow(cycle + 1, sum(kept.values()), purge.batches,
                                 size.logical_bytes, size.file_bytes, size.wal_bytes,
                                 size.page_count, size.freelist_count))
    finally:
        await store.close()
    return rows, size_of(db)


# -- report ----------------------------------------------------------------------------

def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def report(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bell, wide = kinds(args.outcomes)
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"}}
    print(f"store growth: {args.batches} batches x {args.circuits} circuits, "
          f"{args.outcomes} outcomes for the 20-qubit results, {args.cycles} cycles, "
          f"retention of {args.retain} cycle(s)")
    print(f"  (raw sizes: Bell source {len(BELL)} B, 20-qubit source {len(wide.source)} B, "
          f"2-outcome counts {len(json.dumps(bell.counts))} B, {args.outcomes}-outcome "
          f"counts {len(json.dumps(wide.counts, separators=(',', ':')))} B as JSON)")
    figures: dict[str, float] = {}
    for kind, circuit_label, result_label in ((bell, CIRCUIT_BELL, RESULT_FEW),
                                              (wide, CIRCUIT_Q20, RESULT_MANY)):
        per_circuit, per_result = asyncio.run(
            per_item(workdir / f"{kind.name}.sqlite3", kind, args.batches, args.circuits))
        figures[circuit_label], figures[result_label] = per_circuit, per_result
    for label in (CIRCUIT_BELL, CIRCUIT_Q20, RESULT_FEW):
        print(f"{label}: {figures[label]:,.0f} B")
    print(f"{RESULT_MANY} ({args.outcomes}): {figures[RESULT_MANY]:,.0f} B")

    rows, closed = asyncio.run(steady_state(workdir / "cycles.sqlite3", args))
    print("\n(database = page_count x page_size, what the file holds once the WAL is "
          "checkpointed)")
    print("cycle  batches kept  removed     database    file now     WAL file  page_count  "
          "freelist")
    for r in rows:
        print(f"{r.cycle:5d}  {r.batches_kept:12d}  {r.removed:7d}  {_mb(r.database_bytes):>11}"
              f"  {_mb(r.file_bytes):>10}  {_mb(r.wal_bytes):>11}  {r.page_count:10d}  "
              f"{r.freelist_count:8d}")
    # from the first cycle that starts with R cycles kept: R kept plus one coming in
    settled = rows[min(args.retain + 1, len(rows) - 1):]
    peak = max(r.page_count for r in settled)
    first = settled[0].page_count
    figures[STEADY] = max(r.database_bytes for r in settled)
    figures[GROWTH] = (peak - first) / first * 100 if first else 0.0
    print(f"\n{STEADY}: {_mb(figures[STEADY])} (largest from cycle {settled[0].cycle} on; "
          f"file after close {_mb(closed.file_bytes)}; WAL up to "
          f"{_mb(max(r.wal_bytes for r in rows))}, reused after each checkpoint)")
    print(f"{GROWTH}: {figures[GROWTH]:+.1f}% page_count from cycle {settled[0].cycle} "
          f"to {rows[-1].cycle} (no VACUUM)")
    out["figures"] = figures
    out["cycles"] = [asdict(r) for r in rows]
    out["file_bytes_after_close"] = closed.file_bytes
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_growth", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100,
                        help="batches per measurement and per cycle (default 100)")
    parser.add_argument("--circuits", type=int, default=4,
                        help="circuits per batch, one job each (default 4)")
    parser.add_argument("--outcomes", type=int, default=1000,
                        help="distinct outcomes of a 20-qubit result (default 1000)")
    parser.add_argument("--cycles", type=int, default=8,
                        help="submit/complete/cleanup cycles (default 8)")
    parser.add_argument("--retain", type=int, default=2,
                        help="retention, in cycles (simulated days) (default 2)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the database files go (default: a temporary directory, "
                             "removed afterwards)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    for name in ("batches", "circuits", "outcomes", "cycles", "retain"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.batches < 2:
        parser.error("--batches must be >= 2 (half Bell, half 20-qubit)")
    if args.outcomes > 2**20:
        parser.error("--outcomes must be <= 2**20 (20 qubits)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="qjobd-growth-")) if own else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.sqlite3*"):
        stale.unlink()
    began = time.monotonic()
    try:
        out = report(args, workdir)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"({time.monotonic() - began:.1f} s)")
    if args.json is not None:
        out["settings"]["workdir"] = str(args.workdir) if args.workdir else None
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
