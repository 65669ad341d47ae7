"""PennyLane on qjobd: the device ``qjobd.remote`` (PennyLane's current Device API).

    import pennylane as qml

    dev = qml.device("qjobd.remote", wires=2, backend="local")   # socket=... optional

    @qml.set_shots(1000)                 # shots come from the QNode, not the device
    @qml.qnode(dev)
    def circuit(x):
        qml.RX(x, wires=0)
        qml.CNOT(wires=[0, 1])
        return qml.expval(qml.PauliZ(0) @ qml.PauliZ(1)), qml.probs(wires=[0, 1])

The device is registered under the entry-point group ``pennylane.plugins``. Each
``execute`` call is ONE qjobd batch: every tape of it (a gradient's shifted tapes, the
groups of a Hamiltonian split into commuting parts, a broadcast's expansion) is one
circuit of the batch, labelled ``tape{i}``; ``dev.batch_ids`` lists the batches sent.

Preprocessing decomposes every operation into OpenQASM 2 standard gates (qelib1.inc,
which every backend of the daemon takes), defers mid-circuit measurements, splits
non-commuting observables and rotates each measured observable into the computational
basis with its diagonalizing gates; every wire is then measured, wire ``k`` of the
device's wire order (or the tape's, for a device made without wires) into classical bit
``k``. Measurements are computed from the counts: ``expval`` and ``var`` of Pauli words
and sums of them, ``probs``, ``counts`` and ``sample``.

Bit order: a qjobd counts key is a Qiskit-order bitstring (classical bit 0 rightmost);
PennyLane orders wire 0 leftmost. A key is reversed into a sample row of the wire order.

``sample`` caveat: the daemon keeps counts, not per-shot memory, so the rows of a
``qml.sample()`` are the counted outcomes in an order drawn at random (seeded by the
batch id and label, so the same batch gives the same rows): their statistics are those
of the shots run, their order is not the order the shots were taken in.

Tapes asking for different shots run in one batch at the largest count; a tape asking
for fewer takes that many of its circuit's shots. Without shots the device refuses with
an error that says to use ``qml.set_shots`` (analytic results need a simulator of the
state, which qjobd does not run).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pennylane as qml
from pennylane.devices import Device, ExecutionConfig
from pennylane.devices.modifiers import single_tape_support
from pennylane.devices.preprocess import (
    decompose,
    no_analytic,
    validate_device_wires,
    validate_measurements,
)
from pennylane.exceptions import DeviceError
from pennylane.measurements import SampleMeasurement
from pennylane.operation import Operator
from pennylane.tape import QuantumScript, QuantumScriptBatch
from pennylane.transforms import (
    broadcast_expand,
    defer_measurements,
    diagonalize_measurements,
    split_non_commuting,
)
from pennylane.transforms.core import CompilePipeline, transform
from pennylane.typing import PostprocessingFn, Result, ResultBatch
from pennylane.wires import Wires

from qjobd.client import Client

__all__ = ["GATES", "NO_SHOTS", "QjobdDevice", "tape_to_qasm"]

#: PennyLane operation -> its OpenQASM 2 gate (qelib1.inc); parameters in the same order
#: and convention (the matrices are equal, not only up to a global phase)
GATES: dict[str, str] = {
    "Identity": "id", "PauliX": "x", "PauliY": "y", "PauliZ": "z", "Hadamard": "h",
    "S": "s", "Adjoint(S)": "sdg", "T": "t", "Adjoint(T)": "tdg", "SX": "sx",
    "Adjoint(SX)": "sxdg", "RX": "rx", "RY": "ry", "RZ": "rz", "PhaseShift": "p",
    "U1": "u1", "U2": "u2", "U3": "u3", "CNOT": "cx", "CY": "cy", "CZ": "cz", "CH": "ch",
    "SWAP": "swap", "CRX": "crx", "CRY": "cry", "CRZ": "crz", "ControlledPhaseShift": "cp",
    "IsingXX": "rxx", "IsingZZ": "rzz", "Toffoli": "ccx", "CSWAP": "cswap",
}
#: operations that change no measured statistics: dropped from the circuit
_DROPPED = frozenset({"GlobalPhase", "Barrier", "Snapshot"})

NO_SHOTS = ("qjobd.remote samples circuits on a qjobd backend, so it needs shots: give the "
            "QNode some with @qml.set_shots(N) (or qml.set_shots(qnode, shots=N)); shots on "
            "the device are deprecated since PennyLane 0.45")


def _supported(op: Operator) -> bool:
    return op.name in GATES or op.name in _DROPPED


@transform
def _require_shots(tape: QuantumScript) -> tuple[QuantumScriptBatch, PostprocessingFn]:
    if not tape.shots:
        raise DeviceError(NO_SHOTS)
    return no_analytic(tape, name="qjobd.remote")


def _accepted_sample(mp: Any) -> bool:
    return isinstance(mp, SampleMeasurement)


def tape_to_qasm(tape: QuantumScript, wire_order: Wires) -> str:
    """The tape's operations (already decomposed to :data:`GATES`) as OpenQASM 2, every
    wire of ``wire_order`` measured, wire ``k`` into ``c[k]``."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{len(wire_order)}];",
             f"creg c[{len(wire_order)}];"]
    for op in tape.operations:
        if op.name in _DROPPED:
            continue
        gate = GATES.get(op.name)
        if gate is None:
            raise DeviceError(f"qjobd.remote: operation {op.name} was not decomposed")
        qubits = ",".join(f"q[{wire_order.index(w)}]" for w in op.wires)
        params = ""
        if op.num_params:
            params = "(" + ",".join(repr(float(qml.math.unwrap(p))) for p in op.parameters) + ")"
        lines.append(f"{gate}{params} {qubits};")
    lines.extend(f"measure q[{k}] -> c[{k}];" for k in range(len(wire_order)))
    return "\n".join(lines) + "\n"


def _samples(counts: Mapping[str, int], width: int, shots: int, seed: int) -> np.ndarray:
    """Rows of wire values (wire order, wire 0 first) for ``shots`` of the counted shots,
    in a seeded random order. A counts key has classical bit 0, wire 0, rightmost."""
    keys = list(counts)
    numbers = np.array([counts[k] for k in keys], dtype=np.int64)
    if keys and any(len(k) != width for k in keys):
        raise DeviceError(f"qjobd.remote: counts keys are not {width} bits wide")
    rows = np.array([[int(bit) for bit in reversed(k)] for k in keys], dtype=np.int64)
    rows = rows.reshape(len(keys), width)
    samples = np.repeat(rows, numbers, axis=0)
    if len(samples) < shots:
        raise DeviceError(f"qjobd.remote: {len(samples)} shots came back, {shots} were asked")
    order = np.random.default_rng(seed).permutation(len(samples))[:shots]
    return samples[order]


def _measure(tape: QuantumScript, samples: np.ndarray, wire_order: Wires) -> Result:
    """The tape's results from its samples, as PennyLane shapes them (one measurement or a
    tuple; a tuple of those per bin of a shot vector)."""
    per_bin = []
    for lower, upper in tape.shots.bins():
        values = tuple(mp.process_samples(samples[lower:upper], wire_order)
                       for mp in tape.measurements)
        per_bin.append(values[0] if len(values) == 1 else values)
    return tuple(per_bin) if tape.shots.has_partitioned_shots else per_bin[0]


@single_tape_support
class QjobdDevice(Device):
    """``qml.device("qjobd.remote", wires=N, backend="local", socket=None)``.

    ``backend``: the daemon's backend to run on; ``socket``: the daemon's socket (default:
    found as ``qjobctl`` finds it). Keyword-only: ``options``, the qjobd backend's options
    (e.g. ``{"seed_simulator": 7}`` on ``local``); ``name``, ``tags`` and ``timeout``
    (seconds) of each batch; ``wait_timeout``, how long an ``execute`` waits for its
    batch (None: as long as it takes).
    """

    name = "qjobd.remote"  # type: ignore[assignment]

    def __init__(self, wires: int | Sequence[Any] | None = None, backend: str = "local",
                 socket: str | os.PathLike[str] | None = None, *, shots: Any = None,
                 options: Mapping[str, Any] | None = None, name: str | None = None,
                 tags: Mapping[str, str] | None = None, timeout: float | None = None,
                 wait_timeout: float | None = None) -> None:
        super().__init__(wires=wires, shots=shots)
        self.backend = backend
        self.socket = socket
        self.options = dict(options or {})
        self.batch_name = name
        self.tags = dict(tags or {})
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        #: the qjobd batch of each ``execute`` call, oldest first
        self.batch_ids: list[str] = []

    def preprocess(self, execution_config: ExecutionConfig | None = None
                   ) -> tuple[CompilePipeline, ExecutionConfig]:
        config = execution_config if execution_config is not None else ExecutionConfig()
        program = CompilePipeline()
        program.add_transform(_require_shots)
        program.add_transform(validate_device_wires, wires=self.wires, name=self.name)
        program.add_transform(defer_measurements, allow_postselect=False)
        program.add_transform(split_non_commuting)
        program.add_transform(diagonalize_measurements)
        program.add_transform(decompose, stopping_condition=_supported, target_gates=set(GATES),
                              skip_initial_state_prep=False, name=self.name)
        program.add_transform(validate_measurements, sample_measurements=_accepted_sample,
                              name=self.name)
        program.add_transform(broadcast_expand)
        return program, config

    def _wire_order(self, tape: QuantumScript) -> Wires:
        return self.wires if self.wires is not None else tape.wires

    def execute(self, circuits: QuantumScriptBatch,
                execution_config: ExecutionConfig | None = None) -> ResultBatch:
        tapes = list(circuits)
        if not tapes:
            return ()
        for tape in tapes:
            if not tape.shots:
                raise DeviceError(NO_SHOTS)
        orders = [self._wire_order(tape) for tape in tapes]
        sources = {f"tape{i}": tape_to_qasm(tape, order)
                   for i, (tape, order) in enumerate(zip(tapes, orders, strict=True))}
        shots = max(int(tape.shots.total_shots) for tape in tapes)
        with Client(self.socket) as client:
            batch = client.submit(sources, self.backend, shots=shots, name=self.batch_name,
                                  tags=self.tags or None, timeout=self.timeout,
                                  options=self.options or None)
            self.batch_ids.append(batch.id)
            batch = client.wait(batch, self.wait_timeout)
            results = client.results(batch)
        if self.tracker.active:
            self.tracker.update(batches=1, executions=len(tapes), shots=shots * len(tapes),
                                batch_id=batch.id)
            self.tracker.record()
        out = []
        for label, tape, order in zip(sources, tapes, orders, strict=True):
            if label not in results:
                raise DeviceError(f"qjobd.remote: batch {batch.id} has no results for {label}")
            seed = int.from_bytes(hashlib.sha256(f"{batch.id}/{label}".encode()).digest()[:8],
                                  "big")
            samples = _samples(results[label].counts, len(order),
                               int(tape.shots.total_shots), seed)
            out.append(_measure(tape, samples, order))
        return tuple(out)
