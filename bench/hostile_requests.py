"""Hostile and large requests against a real daemon: what each one costs in memory.

    python -m bench.hostile_requests                  # every case, about a minute
    python -m bench.hostile_requests --quick          # smaller bodies, a few seconds
    python -m bench.hostile_requests --cases deep,duplicates --json out.json

SPEC "Limits": one request, however large or hostile, never grows the daemon's memory
by more than a bounded amount. For each case a fresh ``qjobd serve`` (one ``local``
backend, one worker) is started as a child process, warmed up (health, one small
batch), its peak RSS reset (``echo 5 > /proc/PID/clear_refs``), then sent the one
request; the figure is the peak RSS during it (``VmHWM``) minus the RSS before, and
that growth as a multiple of the body's size. The simulator's worker processes are not
counted (they are other processes). The cases:

- ``valid``: a real-size batch, accepted (201): 332 circuits of 2,000 gates (~8.5 MB
  of OpenQASM 2; ``--qasm3`` makes a share of them OpenQASM 3), 10 qubits each
- ``valid-refused``: the same body for a backend that does not exist (400 after the
  JSON parse): the JSON layer's own cost
- ``deep``: arrays nested 100,000 deep (400 too_deep), and ``deep-big`` 4,000,000
  deep (8 MB)
- ``duplicates``: ``circuits`` holding one key repeated to ``--big-mb`` MB (400
  duplicate_key), and ``duplicates-small`` the same at 8.5 MB
- ``dense``: an option holding an array of ``--big-mb`` MB of small numbers, which the
  parser turns into millions of Python objects (400: the local backend has no such
  option)

Also printed: the nesting scan's time next to ``json.loads``'s for the valid body and
for the dense one, in this process. Figures only, no pass/fail; docs/benchmarks.md
has a run's output.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qjobd.daemon.api import jsonbody
from qjobd.testing.daemon_process import DaemonProcess

CONFIG = """
[daemon]
log_level = "warning"
[backends.local]
type = "local"
workers = 1
"""
SMALL = {"backend": "local", "shots": 10, "circuits": {"bell": (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\n'
    "cx q[0],q[1];\nmeasure q -> c;\n")}}


@dataclass
class Figure:
    case: str
    status: int
    code: str | None
    body_mb: float
    seconds: float
    rss_before_mb: float
    peak_growth_mb: float
    multiple: float


def circuit(rng: random.Random, gates: int, qubits: int, version: int) -> str:
    if version == 3:
        lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{qubits}] q;",
                 f"bit[{qubits}] c;"]
    else:
        lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];",
                 f"creg c[{qubits}];"]
    for _ in range(gates):
        gate = rng.choice(("h", "x", "cx", "rz"))
        if gate == "cx":
            a, b = rng.sample(range(qubits), 2)
            lines.append(f"cx q[{a}],q[{b}];")
        elif gate == "rz":
            lines.append(f"rz({rng.uniform(-3.14, 3.14):.6f}) q[{rng.randrange(qubits)}];")
        else:
            lines.append(f"{gate} q[{rng.randrange(qubits)}];")
    lines.append("c = measure q;" if version == 3 else "measure q -> c;")
    return "\n".join(lines) + "\n"


def valid_body(circuits: int, gates: int, qasm3: float, backend: str = "local") -> bytes:
    rng = random.Random(13)
    sources = {f"c{i:03}": circuit(rng, gates, 10, 3 if i < circuits * qasm3 else 2)
               for i in range(circuits)}
    return json.dumps({"backend": backend, "shots": 10, "circuits": sources}).encode()


def duplicate_body(megabytes: float) -> bytes:
    pair = b'"a": "x", '
    count = int(megabytes * 1e6 / len(pair))
    return b'{"backend": "local", "circuits": {' + pair * count + b'"a": "x"}}'


def deep_body(depth: int) -> bytes:
    return b'{"backend": "local", "circuits": {"a": "x"}, "options": {"o": ' + \
        b"[" * depth + b"]" * depth + b"}}"


def dense_body(megabytes: float) -> bytes:
    count = int(megabytes * 1e6 / 2)
    return b'{"backend": "local", "circuits": {"a": "x"}, "options": {"o": [' + \
        b"1," * count + b"1]}}"


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def measure(case: str, body: bytes, workdir: Path) -> Figure:
    root = workdir / case
    root.mkdir()
    daemon = DaemonProcess(root, CONFIG)
    daemon.start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        with daemon.http(timeout=600) as client:
            client.get("/v1/health")
            assert client.post("/v1/batches", json=SMALL).status_code == 201
            time.sleep(0.5)
            before = status_kb(pid)["VmRSS"]
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            started = time.perf_counter()
            r = client.post("/v1/batches", content=body,
                            headers={"content-type": "application/json"})
            took = time.perf_counter() - started
            peak = status_kb(pid)["VmHWM"]
        code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
        growth = max(0, peak - before) / 1024
        size = len(body) / 1e6
        return Figure(case, r.status_code, code, round(size, 2), round(took, 3),
                      round(before / 1024, 1), round(growth, 1),
                      round(growth * 1.048576 / size, 2))
    finally:
        daemon.stop()


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def scan_costs(bodies: dict[str, bytes]) -> list[dict[str, object]]:
    rows = []
    for name, body in bodies.items():
        scan = timed(lambda body=body: jsonbody.nesting_depth(body, 64))
        parse = timed(lambda body=body: json.loads(body), repeat=3)
        rows.append({"body": name, "mb": round(len(body) / 1e6, 2),
                     "scan_ms": round(scan * 1e3, 1), "json_loads_ms": round(parse * 1e3, 1),
                     "scan_share": round(scan / parse, 3)})
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.hostile_requests",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller bodies (a look)")
    p.add_argument("--cases", default="valid,valid-refused,deep,deep-big,duplicates,"
                   "duplicates-small,dense", help="comma-separated subset")
    p.add_argument("--circuits", type=int, default=332)
    p.add_argument("--gates", type=int, default=2000)
    p.add_argument("--qasm3", type=float, default=0.0,
                   help="share of the valid batch's circuits written in OpenQASM 3")
    p.add_argument("--big-mb", type=float, default=60.0,
                   help="size of the duplicate-key and dense bodies (limit: 64 MiB)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.circuits, args.big_mb = 40, 8.0
    bodies: dict[str, Callable[[], bytes]] = {
        "valid": lambda: valid_body(args.circuits, args.gates, args.qasm3),
        "valid-refused": lambda: valid_body(args.circuits, args.gates, args.qasm3, "nope"),
        "deep": lambda: deep_body(100_000),
        "deep-big": lambda: deep_body(4_000_000),
        "duplicates": lambda: duplicate_body(args.big_mb),
        "duplicates-small": lambda: duplicate_body(8.5),
        "dense": lambda: dense_body(args.big_mb),
    }
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(bodies))
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(bodies)}",
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="qjobd-hostile-", dir="/tmp"))
    figures = []
    try:
        print(f"{'case':18} {'status':>6} {'code':18} {'body MB':>8} {'answer s':>9} "
              f"{'RSS MB':>7} {'peak +MB':>9} {'x body':>7}")
        for case in cases:
            fig = measure(case, bodies[case](), workdir)
            figures.append(fig)
            print(f"{fig.case:18} {fig.status:>6} {fig.code or '-':18} {fig.body_mb:>8} "
                  f"{fig.seconds:>9} {fig.rss_before_mb:>7} {fig.peak_growth_mb:>9} "
                  f"{fig.multiple:>7}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    costs = scan_costs({"valid": bodies["valid"](), "dense": dense_body(8.0)})
    print("\nnesting scan vs json.loads, in this process:")
    for row in costs:
        print(f"  {row['body']:8} {row['mb']:>6} MB  scan {row['scan_ms']:>7} ms  "
              f"json.loads {row['json_loads_ms']:>7} ms  ({row['scan_share']:.0%})")
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": [asdict(f) for f in figures],
                                         "scan": costs, "settings": vars(args)},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
