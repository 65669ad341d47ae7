"""The code that runs inside the local backend's worker processes.

A worker is a fresh interpreter (spawn): it imports Qiskit and Aer once, says it is
ready, then simulates one job at a time, each received as plain data (labels, sources,
shots, options) over its end of a pipe, answering with counts or an error text. It
exits when the pipe closes or its parent dies; the parent stops it by terminating it.

Messages, parent to worker: a :class:`Task`. Worker to parent:
``("ready", pid)``, ``("done", {label: packed counts})`` (see :func:`unpack`),
``("failed", text)``, or, once, ``("init_failed", text)``.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

_PR_SET_PDEATHSIG = 1
#: operations that hold circuits of their own: such a circuit is always compiled
_CONTROL_FLOW = frozenset({"if_else", "while_loop", "for_loop", "switch_case", "break_loop",
                           "continue_loop"})
#: counts entries per pickled chunk; decoding one holds the parent's GIL for a few ms
_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class Task:
    """One job for a worker: what it needs and nothing it would have to import."""

    #: (label, OpenQASM source) pairs
    circuits: Sequence[tuple[str, str]]
    shots: int
    options: Mapping[str, Any] = field(default_factory=dict)


def main(conn: Connection, parent_pid: int, threads: int) -> None:
    """The worker process's entry point."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when
    # workers stop, so a worker must not die with a traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    try:
        simulate = _Simulator(threads)
    except BaseException:
        conn.send(("init_failed", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("done", simulate(task))
        except Exception as exc:
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this worker when its parent dies, even by SIGKILL.

    Otherwise a daemon killed with -9 would leave its workers simulating for as long
    as their current job takes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may have died before the prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(1)


class _Simulator:
    def __init__(self, threads: int) -> None:
        # Imported here, in the worker, so the daemon's own process never loads Aer.
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_aer import AerSimulator

        from qjobd.backends.qasm import enable_native, load_circuit

        # a process of ours with nothing else on its stdout and stderr: Qiskit's native
        # OpenQASM 3 importer may be used (backends/_qasm_native.py)
        enable_native()

        self._pass_manager = generate_preset_pass_manager
        self._load_circuit = load_circuit
        self._simulator_class = AerSimulator
        # One OpenMP pool per worker, sized so workers together do not oversubscribe
        # the cores.
        self._threads = threads
        #: method -> (simulator, the pass manager that compiles for it, the operations
        #: it runs as they are)
        self._simulators: dict[str, tuple[Any, Any, frozenset[str]]] = {}
        self._simulator("automatic")

    def _simulator(self, method: str) -> tuple[Any, Any, frozenset[str]]:
        if method not in self._simulators:
            simulator = self._simulator_class(method=method, max_parallel_threads=self._threads)
            # Built once: building it is what costs in transpile() (~120 ms, 30 times the
            # compilation of a small circuit). Level 2 is transpile()'s default; a fixed
            # seed makes seed_simulator alone enough for repeatable counts.
            passes = self._pass_manager(optimization_level=2, backend=simulator,
                                        seed_transpiler=0)
            native = (frozenset(simulator.target.operation_names) - _CONTROL_FLOW) | {"barrier"}
            self._simulators[method] = (simulator, passes, native)
        return self._simulators[method]

    def __call__(self, task: Task) -> dict[str, list[bytes]]:
        simulator, passes, native = self._simulator(task.options.get("method", "automatic"))
        labels = [label for label, _ in task.circuits]
        circuits = [self._load_circuit(label, source) for label, source in task.circuits]
        # A circuit made only of operations Aer runs itself is run as it is, as
        # AerSimulator().run(circuit) would (compiling a small one costs more than
        # simulating it); others (their own gate definitions, control flow) are compiled.
        # One at a time: a list would let a user's QISKIT_PARALLEL setting make the
        # transpiler fork from this (daemonic) worker.
        compiled = [circuit if all(i.operation.name in native for i in circuit.data)
                    else passes.run(circuit) for circuit in circuits]
        run_options: dict[str, Any] = {"shots": task.shots}
        if "seed_simulator" in task.options:
            run_options["seed_simulator"] = task.options["seed_simulator"]
        result = simulator.run(compiled, **run_options).result()
        packed: dict[str, list[bytes]] = {}
        for label, circuit, experiment in zip(labels, circuits, result.results, strict=True):
            if not experiment.success:
                raise RuntimeError(f"circuit {label!r}: {experiment.status}")
            packed[label] = _pack(_bitstrings(experiment.data.counts, circuit.num_clbits))
        return packed


def _bitstrings(hex_counts: Mapping[str, int], width: int) -> dict[str, int]:
    """Aer's {"0x5": n} as {"101": n}: clbit i is bit i of the integer, highest leftmost.

    Reading the integers avoids Aer's formatted keys, which put spaces between classical
    registers and leave out bits that belong to no register.
    """
    counts: dict[str, int] = {}
    for key, value in hex_counts.items():
        bits = format(int(key, 16), f"0{width}b")
        counts[bits] = counts.get(bits, 0) + int(value)
    return counts


def _pack(counts: dict[str, int]) -> list[bytes]:
    """Counts as separately pickled chunks, for :func:`unpack`.

    Decoding one pickle of a million-key dict holds the parent's GIL for a third of a
    second, stalling the daemon's event loop; between chunks the loop gets its turn.
    """
    items = list(counts.items())
    return [pickle.dumps(dict(items[i : i + _CHUNK])) for i in range(0, len(items), _CHUNK)]


def unpack(packed: Sequence[bytes]) -> dict[str, int]:
    """The counts of :func:`_pack`; call it off the event loop."""
    counts: dict[str, int] = {}
    for chunk in packed:
        counts.update(pickle.loads(chunk))
    return counts
