"""Qiskit on qjobd: a Sampler (``BaseSamplerV2``) and a backend (``BackendV2``).

    from qiskit import QuantumCircuit
    from qjobd.qiskit import QjobdSampler

    sampler = QjobdSampler(backend="local")          # the socket qjobctl would use
    job = sampler.run([(circuit, parameter_values)], shots=1000)
    print(job.job_id())                              # the qjobd batch id
    counts = job.result()[0].data.meas.get_counts()

    job = QjobdSampler.job(batch_id)                 # any process, after any restart

Each ``run`` is ONE qjobd batch: every bound circuit of every pub is one circuit of it,
labelled ``pub{i}`` (a pub of shape ``()``) or ``pub{i}[j,k]`` (its bindings index). The
job's id is the batch id. What it takes to turn the batch's counts back into a result
(each pub's shape, shots and classical registers; the backend job's circuit names) is
stored with the batch in the daemon as its ``metadata`` (key :data:`METADATA_KEY`), so
``QjobdSampler.job(id)`` / ``QjobdBackend.job(id)`` rebuild the same result from the id
alone, in another process and after any restart of the program or the daemon.

Circuits are sent as OpenQASM 2 (``qiskit.qasm2.dumps``: exact floats), or OpenQASM 3
when OpenQASM 2 cannot express them; the daemon converts to what its backend takes.
Every classical bit must belong to exactly one classical register (a register is what a
result is keyed by). Counts keys are Qiskit-order bitstrings over all classical bits,
the registers in the circuit's ``cregs`` order from the lowest bit: a register's bits are
cut out of them by its position in that order.

A batch has one shot count. Pubs asking for different shots run at the largest; a pub
asking for fewer gets a uniformly random subset of its circuit's shots.

Shot order caveat: the daemon keeps counts, not per-shot memory. A ``BitArray``'s shots
are the counted outcomes in a random order drawn with a seed derived from the batch id
and the label (so a reattached job gives the same arrays): their statistics are those of
the shots run, their order is not the order they were taken in.

``result()`` waits (long-polls, riding out a daemon restart) and raises
:class:`qjobd.client.BatchFailed` if the batch failed, was canceled or timed out, and
:class:`qjobd.client.BatchTimeout` if its ``timeout`` passes first.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import qiskit.qasm2
import qiskit.qasm3
from qiskit.circuit import QuantumCircuit
from qiskit.primitives import (
    BasePrimitiveJob,
    BaseSamplerV2,
    BitArray,
    DataBin,
    PrimitiveResult,
    SamplerPubResult,
)
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike
from qiskit.providers import BackendV2, JobStatus, JobV1, Options
from qiskit.result import Result
from qiskit.result.models import ExperimentResult, ExperimentResultData
from qiskit.transpiler import Target

from qjobd import __version__
from qjobd.client import Batch, Client, Results

__all__ = ["METADATA_KEY", "QjobdBackend", "QjobdBackendJob", "QjobdSampler",
           "QjobdSamplerJob", "job_status", "to_qasm"]

#: the key of a batch's metadata under which this module keeps its layout
METADATA_KEY = "qjobd.qiskit"
#: the layout's format; a newer one is refused with a clear error
LAYOUT_VERSION = 1

#: qjobd batch state -> Qiskit's job status
_STATUS = {
    "queued": JobStatus.QUEUED,
    "submitting": JobStatus.QUEUED,
    "submitted": JobStatus.QUEUED,
    "running": JobStatus.RUNNING,
    "completed": JobStatus.DONE,
    "failed": JobStatus.ERROR,
    "canceled": JobStatus.CANCELLED,
    "timed_out": JobStatus.ERROR,
}

#: the gates of the generic target: OpenQASM 2's qelib1.inc and 3's stdgates.inc, which
#: every backend of the daemon takes (it converts and, on the local one, transpiles)
BASIS_GATES = ["id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "sxdg", "rx", "ry",
               "rz", "p", "u", "cx", "cy", "cz", "ch", "swap", "crx", "cry", "crz", "cp",
               "ccx", "cswap", "rxx", "rzz", "measure", "reset"]
DEFAULT_NUM_QUBITS = 32
DEFAULT_SHOTS = 1024


def job_status(state: str) -> JobStatus:
    """Qiskit's JobStatus for a qjobd batch (or job) state."""
    return _STATUS.get(state, JobStatus.QUEUED)


def to_qasm(circuit: QuantumCircuit) -> str:
    """The circuit as OpenQASM 2 if it can be said in it (exact floats), else 3."""
    try:
        return qiskit.qasm2.dumps(circuit)
    except qiskit.qasm2.QASM2ExportError:
        return qiskit.qasm3.dumps(circuit)


def registers_of(circuit: QuantumCircuit) -> list[tuple[str, int]]:
    """(name, size) of each classical register, in the order its bits appear in a counts
    key from the lowest; ValueError unless the registers partition the classical bits."""
    owners: dict[Any, str] = {}
    for creg in circuit.cregs:
        for bit in creg:
            if bit in owners:
                raise ValueError(f"circuit {circuit.name!r}: classical bit {bit} is in both "
                                 f"register {owners[bit]!r} and {creg.name!r}; qjobd.qiskit "
                                 "needs every classical bit in exactly one register")
            owners[bit] = creg.name
    loose = [bit for bit in circuit.clbits if bit not in owners]
    if loose:
        raise ValueError(f"circuit {circuit.name!r}: {len(loose)} classical bit(s) belong to "
                         "no register; qjobd.qiskit needs every classical bit in exactly one "
                         "register (build the circuit with a ClassicalRegister)")
    if not circuit.cregs:
        raise ValueError(f"circuit {circuit.name!r} has no classical register, so it would "
                         "have no counts: measure into one (e.g. circuit.measure_all())")
    return [(creg.name, creg.size) for creg in circuit.cregs]


def register_values(counts: Mapping[str, int], registers: Sequence[tuple[str, int]]
                    ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Counts over all classical bits, cut into registers: (keys, their counts, register
    name -> one row of big-endian bytes per key). ``registers`` in ``cregs`` order."""
    width = sum(size for _, size in registers)
    keys = list(counts)
    numbers = np.array([counts[k] for k in keys], dtype=np.int64)
    rows: dict[str, np.ndarray] = {}
    start = 0
    for name, size in registers:
        num_bytes = math.ceil(size / 8)
        data = bytearray()
        for key in keys:
            if len(key) != width:
                raise ValueError(f"counts key {key!r} is not {width} bits wide")
            bits = key[width - start - size:width - start]
            data += int(bits or "0", 2).to_bytes(num_bytes, "big")
        rows[name] = np.frombuffer(bytes(data), dtype=np.uint8).reshape(len(keys), num_bytes)
        start += size
    return keys, numbers, rows


def _label(pub: int, index: tuple[int, ...]) -> str:
    return f"pub{pub}" if not index else f"pub{pub}[{','.join(map(str, index))}]"


def _seed(batch_id: str, label: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{batch_id}/{label}".encode()).digest()[:8], "big")


def _layout(batch: Batch, kind: str) -> dict[str, Any]:
    layout = (batch.metadata or {}).get(METADATA_KEY)
    if not isinstance(layout, dict) or layout.get("kind") != kind:
        maker = "QjobdSampler" if kind == "sampler" else "QjobdBackend"
        raise ValueError(f"batch {batch.id} was not submitted by qjobd.qiskit.{maker}: its "
                         f"metadata has no {METADATA_KEY!r} layout of kind {kind!r}")
    if layout.get("version", 0) > LAYOUT_VERSION:
        raise ValueError(f"batch {batch.id}: its layout is version {layout.get('version')}; "
                         f"this qjobd.qiskit reads up to {LAYOUT_VERSION}: upgrade qjobd")
    return layout


class _BatchHandle:
    """What both job classes share: the batch id, the socket, waiting and the state."""

    def __init__(self, batch_id: str, socket: str | os.PathLike[str] | None,
                 state: str = "queued") -> None:
        self.batch_id = batch_id
        self.socket = socket
        self.last_state = state

    def client(self) -> Client:
        return Client(self.socket)

    def state(self) -> str:
        """The batch's qjobd state now (one request)."""
        with self.client() as client:
            self.last_state = client.get(self.batch_id).state
        return self.last_state

    def finish(self, timeout: float | None) -> tuple[Batch, Results]:
        """Wait for the batch; the completed batch and its results (BatchFailed,
        BatchTimeout otherwise)."""
        with self.client() as client:
            batch = client.wait(self.batch_id, timeout)
            self.last_state = batch.state
            return batch, client.results(batch)

    def cancel(self) -> bool:
        with self.client() as client:
            batch = client.cancel(self.batch_id)
        self.last_state = batch.state
        return True


# -- the Sampler -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PubLayout:
    shape: tuple[int, ...]
    shots: int
    registers: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "shots": self.shots,
                "registers": [[name, size] for name, size in self.registers]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _PubLayout:
        return cls(shape=tuple(int(n) for n in data["shape"]), shots=int(data["shots"]),
                   registers=tuple((str(r[0]), int(r[1])) for r in data["registers"]))

    def labels(self, pub: int) -> list[str]:
        return [_label(pub, index) for index in np.ndindex(*self.shape)]


class QjobdSamplerJob(BasePrimitiveJob[PrimitiveResult[SamplerPubResult], JobStatus]):
    """A :class:`QjobdSampler` run: one qjobd batch; ``job_id()`` is its id."""

    def __init__(self, batch_id: str, pubs: Sequence[_PubLayout], batch_shots: int,
                 socket: str | os.PathLike[str] | None = None, backend: str = "",
                 state: str = "queued") -> None:
        super().__init__(batch_id, backend=backend)
        self._handle = _BatchHandle(batch_id, socket, state)
        self._pubs = tuple(pubs)
        self._batch_shots = batch_shots
        self._result: PrimitiveResult[SamplerPubResult] | None = None

    @classmethod
    def from_batch(cls, batch: Batch, socket: str | os.PathLike[str] | None = None
                   ) -> QjobdSamplerJob:
        layout = _layout(batch, "sampler")
        return cls(batch.id, [_PubLayout.from_json(p) for p in layout["pubs"]],
                   int(layout.get("shots", batch.shots or 0)), socket, batch.backend,
                   batch.state)

    @property
    def labels(self) -> list[list[str]]:
        """Each pub's circuit labels in the batch, in its bindings' (C) order."""
        return [pub.labels(i) for i, pub in enumerate(self._pubs)]

    def result(self, timeout: float | None = None) -> PrimitiveResult[SamplerPubResult]:
        """Wait for the batch and build the result (BatchFailed, BatchTimeout)."""
        if self._result is None:
            batch, results = self._handle.finish(timeout)
            self._result = self._build(batch, results)
        return self._result

    def _build(self, batch: Batch, results: Results) -> PrimitiveResult[SamplerPubResult]:
        pub_results = []
        for i, pub in enumerate(self._pubs):
            labels = pub.labels(i)
            arrays = {name: np.zeros((*pub.shape, pub.shots, math.ceil(size / 8)),
                                     dtype=np.uint8) for name, size in pub.registers}
            for index, label in zip(np.ndindex(*pub.shape), labels, strict=True):
                if label not in results:
                    raise ValueError(f"batch {batch.id} has no results for {label!r}")
                _, numbers, rows = register_values(results[label].counts, pub.registers)
                total = int(numbers.sum())
                if total < pub.shots:
                    raise ValueError(f"batch {batch.id}: {label!r} has {total} shots, "
                                     f"the pub asked for {pub.shots}")
                # the counted shots in a seeded random order (one order for every
                # register, so each shot keeps its registers together); a pub with
                # fewer shots than the batch ran takes the first of them
                take = np.random.default_rng(_seed(batch.id, label)).permutation(total)
                take = take[:pub.shots]
                for name, _ in pub.registers:
                    arrays[name][index] = np.repeat(rows[name], numbers, axis=0)[take]
            data = DataBin(**{name: BitArray(arrays[name], size)
                              for name, size in pub.registers}, shape=pub.shape)
            pub_results.append(SamplerPubResult(data, metadata={
                "shots": pub.shots, "qjobd_batch_id": batch.id, "circuit_labels": labels}))
        return PrimitiveResult(pub_results, metadata={
            "version": 2, "qjobd_batch_id": batch.id, "backend": batch.backend,
            "shots": self._batch_shots})

    def status(self) -> JobStatus:
        return job_status(self._handle.state())

    def qjobd_state(self) -> str:
        """The batch's own state (queued ... completed, failed, canceled, timed_out)."""
        return self._handle.state()

    def done(self) -> bool:
        return self.status() == JobStatus.DONE

    def running(self) -> bool:
        return self.status() == JobStatus.RUNNING

    def cancelled(self) -> bool:
        return self.status() == JobStatus.CANCELLED

    def in_final_state(self) -> bool:
        return self.status() in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.ERROR)

    def cancel(self) -> bool:
        """Ask the daemon to cancel the batch (idempotent)."""
        return self._handle.cancel()


class QjobdSampler(BaseSamplerV2):
    """A Qiskit Sampler (V2) whose runs are qjobd batches on ``backend``.

    ``socket``: the daemon's socket (default: found as ``qjobctl`` finds it);
    ``default_shots``: for pubs and runs that name none. Keyword-only: ``options``, the
    qjobd backend's options (e.g. ``{"seed_simulator": 7}`` on ``local``); ``name``,
    ``tags`` and ``timeout`` (seconds) of each batch.
    """

    def __init__(self, backend: str = "local", socket: str | os.PathLike[str] | None = None,
                 default_shots: int = DEFAULT_SHOTS, *,
                 options: Mapping[str, Any] | None = None, name: str | None = None,
                 tags: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
        self.backend = backend
        self.socket = socket
        self.default_shots = default_shots
        self.options = dict(options or {})
        self.name = name
        self.tags = dict(tags or {})
        self.timeout = timeout

    def run(self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None
            ) -> QjobdSamplerJob:
        coerced = [SamplerPub.coerce(pub, self.default_shots if shots is None else shots)
                   for pub in pubs]
        if not coerced:
            raise ValueError("run() needs at least one pub")
        circuits: dict[str, str] = {}
        layouts = []
        for i, pub in enumerate(coerced):
            pub.validate()
            registers = tuple(registers_of(pub.circuit))
            assert pub.shots is not None  # coerce gave every pub its shots
            layout = _PubLayout(tuple(pub.shape), int(pub.shots), registers)
            bound = pub.parameter_values.bind_all(pub.circuit)
            for index, label in zip(np.ndindex(*layout.shape), layout.labels(i), strict=True):
                circuits[label] = to_qasm(bound[index])
            layouts.append(layout)
        batch_shots = max(layout.shots for layout in layouts)
        metadata = {METADATA_KEY: {"version": LAYOUT_VERSION, "kind": "sampler",
                                   "shots": batch_shots,
                                   "pubs": [layout.to_json() for layout in layouts]}}
        with Client(self.socket) as client:
            batch = client.submit(circuits, self.backend, shots=batch_shots, name=self.name,
                                  tags=self.tags or None, timeout=self.timeout,
                                  options=self.options or None, metadata=metadata)
        return QjobdSamplerJob(batch.id, layouts, batch_shots, self.socket, batch.backend,
                               batch.state)

    @classmethod
    def job(cls, job_id: str, socket: str | os.PathLike[str] | None = None
            ) -> QjobdSamplerJob:
        """The job of an earlier run, from its id alone (any process, after any restart)."""
        with Client(socket) as client:
            batch = client.get(job_id)
        return QjobdSamplerJob.from_batch(batch, socket)


# -- the backend -------------------------------------------------------------------------


class QjobdBackendJob(JobV1):
    """A :class:`QjobdBackend` run: one qjobd batch; ``job_id()`` is its id."""

    def __init__(self, backend: QjobdBackend, batch_id: str, names: Sequence[str],
                 registers: Sequence[Sequence[tuple[str, int]]], shots: int,
                 state: str = "queued") -> None:
        super().__init__(backend, batch_id)
        self._handle = _BatchHandle(batch_id, backend.socket, state)
        self._names = list(names)
        self._registers = [list(r) for r in registers]
        self._shots = shots
        self._result: Result | None = None

    @property
    def labels(self) -> list[str]:
        """The circuits' labels in the batch, in circuit order."""
        return [f"circuit{i}" for i in range(len(self._names))]

    def submit(self) -> None:
        raise RuntimeError("a QjobdBackendJob is submitted by QjobdBackend.run()")

    def status(self) -> JobStatus:
        return job_status(self._handle.state())

    def cancel(self) -> bool:
        """Ask the daemon to cancel the batch (idempotent)."""
        return self._handle.cancel()

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the batch; a Result with one experiment per circuit, in circuit order
        (BatchFailed if it failed, was canceled or timed out; BatchTimeout)."""
        if self._result is None:
            batch, results = self._handle.finish(timeout)
            experiments = []
            for label, name, registers in zip(self.labels, self._names, self._registers,
                                              strict=True):
                if label not in results:
                    raise ValueError(f"batch {batch.id} has no results for {label!r}")
                counts = results[label]
                width = sum(size for _, size in registers)
                experiments.append(ExperimentResult(
                    shots=counts.shots, success=True,
                    data=ExperimentResultData(
                        counts={hex(int(k, 2)): n for k, n in counts.counts.items()}),
                    header={"name": name, "creg_sizes": [[n, s] for n, s in registers],
                            "memory_slots": width, "qjobd_label": label}))
            self._result = Result(backend_name=self._backend.name,
                                  backend_version=self._backend.backend_version,
                                  job_id=batch.id, success=True, results=experiments,
                                  status=batch.state)
        return self._result


class QjobdBackend(BackendV2):
    """A Qiskit backend (V2) whose runs are qjobd batches on the daemon's ``backend``.

    ``run(circuits, shots=N)`` submits one batch of the circuits (each must measure into
    classical registers) and returns a :class:`QjobdBackendJob`; further keywords are the
    qjobd backend's options (e.g. ``seed_simulator`` on ``local``). The target is a
    generic all-to-all one of ``num_qubits`` qubits and the standard gates
    (:data:`BASIS_GATES`): the daemon's backends take any of them.
    """

    def __init__(self, backend: str = "local", socket: str | os.PathLike[str] | None = None,
                 *, num_qubits: int = DEFAULT_NUM_QUBITS) -> None:
        super().__init__(name=f"qjobd.{backend}", backend_version=__version__,
                         description=f"qjobd backend {backend!r}")
        self.qjobd_backend = backend
        self.socket = socket
        self._target = Target.from_configuration(basis_gates=BASIS_GATES,
                                                 num_qubits=num_qubits)

    @property
    def target(self) -> Target:
        return self._target

    @property
    def max_circuits(self) -> None:
        return None

    @classmethod
    def _default_options(cls) -> Options:
        return Options(shots=DEFAULT_SHOTS)

    def run(self, run_input: QuantumCircuit | Sequence[QuantumCircuit], **options: Any
            ) -> QjobdBackendJob:
        circuits = [run_input] if isinstance(run_input, QuantumCircuit) else list(run_input)
        if not circuits:
            raise ValueError("run() needs at least one circuit")
        shots = options.pop("shots", None)
        shots = self.options.shots if shots is None else shots
        if options.pop("memory", False):
            raise ValueError("memory=True: qjobd keeps counts, not per-shot memory")
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be a positive integer, not {shots!r}")
        registers = [registers_of(c) for c in circuits]
        names = [c.name[:200] for c in circuits]
        sources = {f"circuit{i}": to_qasm(c) for i, c in enumerate(circuits)}
        metadata = {METADATA_KEY: {
            "version": LAYOUT_VERSION, "kind": "backend", "shots": shots,
            "circuits": [{"name": n, "registers": [[r, s] for r, s in regs]}
                         for n, regs in zip(names, registers, strict=True)]}}
        with Client(self.socket) as client:
            batch = client.submit(sources, self.qjobd_backend, shots=shots,
                                  options=options or None, metadata=metadata)
        return QjobdBackendJob(self, batch.id, names, registers, shots, batch.state)

    @classmethod
    def job(cls, job_id: str, socket: str | os.PathLike[str] | None = None
            ) -> QjobdBackendJob:
        """The job of an earlier run, from its id alone (any process, after any restart)."""
        with Client(socket) as client:
            batch = client.get(job_id)
        layout = _layout(batch, "backend")
        backend = cls(batch.backend, socket)
        entries = layout["circuits"]
        return QjobdBackendJob(backend, batch.id, [str(e["name"]) for e in entries],
                               [[(str(r[0]), int(r[1])) for r in e["registers"]]
                                for e in entries], int(layout["shots"]), batch.state)
