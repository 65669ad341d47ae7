"""Calibrate the local backend's cost model (backends/_aer_cost.py) on this machine.

    python -m bench.aer_cost_bench                  # what `make bench-cost` runs
    python -m bench.aer_cost_bench --quick          # smaller sizes, a look in ~30 s
    python -m bench.aer_cost_bench --threads 2      # Aer's threads per run (default 1)

Times real qiskit-aer runs, as the local backend's workers make them (``AerSimulator``
with ``max_parallel_threads``, the circuit run as it is), of circuits of a few sizes, in
both of Aer's regimes: shots sampled from one statevector run (terminal measurements
only), and shot by shot (a mid-circuit reset). Each figure is seconds per operation per
amplitude (per qubit for the stabilizer method): measured seconds / (runs x operations x
2**qubits), with runs and operations as the model counts them. Prints each, the largest
of each kind (what the model's constants are rounded up from), and the model's estimate
next to the measured time for each circuit; ``--json`` writes them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qjobd.backends import _aer_cost
from qjobd.backends.qasm import load_circuit

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    name: str
    method: str
    qubits: int
    operations: int
    shots: int
    runs: int
    #: what Aer's result says: did it sample the shots from one run?
    aer_sampled: bool
    model_per_shot: bool
    seconds: float
    #: seconds / (runs x operations x 2**qubits), or / (runs x operations x qubits)
    per_unit: float
    estimated: float


def layered(qubits: int, layers: int, *, tail: str = "", clifford: bool = False) -> str:
    """``layers`` of a one-qubit gate on every qubit then a CX chain, measured at the end."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];",
             f"creg c[{qubits}];"]
    for layer in range(layers):
        lines += [f"h q[{i}];" if clifford else f"rx(0.{layer % 9 + 1}) q[{i}];"
                  for i in range(qubits)]
        lines += [f"cx q[{i}],q[{i + 1}];" for i in range(qubits - 1)]
    lines.append(tail + "measure q -> c;")
    return "\n".join(lines) + "\n"


def timed(name: str, source: str, shots: int, threads: int, method: str = "automatic",
          repeats: int = 3) -> Run:
    from qiskit_aer import AerSimulator

    circuit = load_circuit(name, source)
    simulator = AerSimulator(method=method, max_parallel_threads=threads)
    simulator.run(circuit, shots=1).result()  # warm: the first run pays one-time costs
    times, sampled = [], False
    for _ in range(repeats):
        started = time.perf_counter()
        result = simulator.run(circuit, shots=shots, seed_simulator=1).result()
        times.append(time.perf_counter() - started)
        sampled = bool(result.results[0].metadata.get("measure_sampling", False))
    seconds = min(times)  # the least disturbed by others' work on the machine
    model = _aer_cost.CostModel(max_seconds=0, setting="")
    estimate = _aer_cost.estimate(circuit, shots, model, method=method, source=source)
    assert estimate is not None
    size = (estimate.qubits if estimate.method == "stabilizer"
            else 2 ** (estimate.qubits * (2 if estimate.method == "density_matrix" else 1)))
    return Run(name, estimate.method, estimate.qubits, estimate.operations, shots, estimate.runs,
               sampled, estimate.per_shot is not None, seconds,
               seconds / (estimate.runs * estimate.operations * size), estimate.seconds)


def cases(quick: bool) -> list[tuple[str, str, int, str]]:
    """(name, source, shots, method)."""
    reset = "reset q[0];\n"
    sampled = [12, 16, 18, 20] if quick else [12, 16, 18, 20, 22]
    per_shot = [10, 14, 16] if quick else [10, 14, 16, 18, 20]
    out = []
    for n in sampled:
        out.append((f"sampled-{n}q", layered(n, 10), 4000, "automatic"))
    for n in per_shot:
        ops = 10 * (2 * n - 1) + n + 1
        # about 2 s of work at 4e-9 s per amplitude operation (1 s quick)
        shots = max(4, int((1 if quick else 2) / (ops * 2**n * 4e-9)))
        out.append((f"reset-{n}q", layered(n, 10, tail=reset), shots, "automatic"))
    for n in ([16, 64] if quick else [16, 64, 256]):
        out.append((f"clifford-reset-{n}q", layered(n, 10, tail=reset, clifford=True),
                    200 if n > 64 else 1000, "automatic"))
    if not quick:
        # a reset is a channel on a density matrix (sampled); a mid-circuit measurement is not
        out.append(("density-reset-10q", layered(10, 10, tail=reset), 100, "density_matrix"))
        out.append(("density-measure-10q", layered(10, 10, tail="measure q[0] -> c[0];\nh q[0];\n"),
                    3, "density_matrix"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    started = time.time()
    load = os.getloadavg()
    runs = []
    print(f"{'circuit':<22} {'method':<14} {'qubits':>6} {'ops':>5} {'shots':>6} {'runs':>6} "
          f"{'aer sampled':>11} {'seconds':>8} {'per unit':>9} {'estimate':>9} {'est/meas':>8}")
    for name, source, shots, method in cases(args.quick):
        run = timed(name, source, shots, args.threads, method)
        runs.append(run)
        print(f"{run.name:<22} {run.method:<14} {run.qubits:>6} {run.operations:>5} "
              f"{run.shots:>6} {run.runs:>6} {run.aer_sampled!s:>11} {run.seconds:>8.3f} "
              f"{run.per_unit:>9.2e} {run.estimated:>9.2f} "
              f"{run.estimated / run.seconds:>8.2f}", flush=True)
    agree = all(r.aer_sampled != r.model_per_shot for r in runs)
    amplitude = [r.per_unit for r in runs if r.method == "statevector"]
    stabilizer = [r.per_unit for r in runs if r.method == "stabilizer"]
    density = [r.per_unit for r in runs if r.method == "density_matrix"]
    # the larger circuits: the constant's regime (small ones are dominated by overheads
    # the model leaves out, and cost milliseconds whatever the model says)
    large = [r.per_unit for r in runs if r.method == "statevector" and r.qubits >= 16]
    # shot by shot from 16 qubits: where estimates cross a limit (the constant's source)
    per_shot = [r.per_unit for r in runs if r.method == "statevector" and r.qubits >= 16
                and r.runs > 1]
    figures: dict[str, Any] = {
        "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or
                    platform.machine(), "load_average_before": [round(x, 2) for x in load],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "threads": args.threads, "quick": args.quick,
        "model_agrees_with_aer_on_sampling": agree,
        "statevector_seconds_per_amplitude_op": {
            "max": max(amplitude), "max_from_16_qubits": max(large),
            "max_per_shot_from_16_qubits": max(per_shot),
            "median": statistics.median(amplitude), "model": _aer_cost.SECONDS_PER_AMPLITUDE_OP},
        "stabilizer_seconds_per_qubit_op": {
            "max": max(stabilizer), "model": _aer_cost.SECONDS_PER_STABILIZER_OP},
        "density_matrix_seconds_per_entry_op": {
            "max": max(density, default=None),
            "model": _aer_cost.SECONDS_PER_AMPLITUDE_OP * _aer_cost.DENSITY_MATRIX_FACTOR},
        "runs": [asdict(r) for r in runs],
    }
    print(f"\nthe model's sampling/per-shot call agrees with Aer's on every circuit: {agree}")
    print(f"statevector: seconds per amplitude operation, largest {max(amplitude):.2e} "
          f"(from 16 qubits {max(large):.2e}; shot by shot from 16 qubits "
          f"{max(per_shot):.2e}), median {statistics.median(amplitude):.2e}; the model uses "
          f"{_aer_cost.SECONDS_PER_AMPLITUDE_OP:.1e}")
    print(f"stabilizer: seconds per qubit operation, largest {max(stabilizer):.2e}; the model "
          f"uses {_aer_cost.SECONDS_PER_STABILIZER_OP:.1e}")
    if density:
        print(f"density matrix: seconds per entry operation, largest {max(density):.2e}; the "
              f"model uses {_aer_cost.SECONDS_PER_AMPLITUDE_OP:.1e} x "
              f"{_aer_cost.DENSITY_MATRIX_FACTOR:g}")
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"{time.time() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if agree and math.isfinite(max(amplitude)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
