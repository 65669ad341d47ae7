"""What a circuit will cost the local simulator (qiskit-aer), estimated before it is stored.

Aer samples every shot of a circuit from one simulation when its measurements are all
terminal and nothing depends on them: no reset, no classical condition or other control
flow, no operation on a qubit after that qubit was measured. Otherwise it simulates the
circuit once per shot, and 4,000 shots cost 4,000 simulations: an 18-qubit circuit with a
mid-circuit reset at 4,000 shots takes the better part of an hour, a 21-qubit one days.

The estimate is deliberately simple, so that it can be explained in one sentence:

    seconds = runs x operations x amplitudes x seconds_per_amplitude_op

``runs`` is 1 (sampled) or the shots (shot by shot); ``operations`` counts every gate,
measurement, reset and barrier (a ``for`` loop's body once per iteration, a gate the
program defines as the standard gates it is made of); ``amplitudes``
is 2**qubits for a statevector (for a density matrix: 4**qubits entries, at three times the
constant, and a reset alone does not stop Aer sampling it). A Clifford-only circuit,
which Aer's ``automatic`` method simulates with the stabilizer method, costs ``runs x
operations x qubits x seconds_per_stabilizer_op`` instead. Methods whose cost the model
does not know (``matrix_product_state``, ``extended_stabilizer``) are not estimated.

The constants were measured on the development machine with one thread per worker (what
each of the default two workers gets on two cores) by ``bench/aer_cost_bench.py``; see
docs/benchmarks.md, "Simulation cost". They are rounded up: the estimate errs on the high
side, and is meant to tell minutes from weeks, not to predict a run to the second.

Pure Python on an already parsed circuit: it runs in the daemon's parse workers, at
submission, next to the other circuit checks (:func:`qjobd.backends.qasm.check_circuit`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qjobd.backends import _qasm_declarations as _declarations

if TYPE_CHECKING:  # the module itself imports no Qiskit: Capabilities names CostModel
    from qiskit.circuit import QuantumCircuit

__all__ = ["CLIFFORD", "DENSITY_MATRIX_FACTOR", "SECONDS_PER_AMPLITUDE_OP",
           "SECONDS_PER_STABILIZER_OP", "CostCheck", "CostModel", "Estimate", "PerShot",
           "estimate", "per_shot"]

#: seconds per operation per amplitude of a statevector, one thread (bench/aer_cost_bench.py)
SECONDS_PER_AMPLITUDE_OP = 7e-9
#: seconds per operation per qubit of a stabilizer tableau, one thread
SECONDS_PER_STABILIZER_OP = 2e-8
#: a density matrix's entries cost more than a statevector's amplitudes (each gate acts
#: from both sides): measured 2.2 to 3 times, 10 qubits
DENSITY_MATRIX_FACTOR = 3.0

#: the operations Aer's stabilizer method takes whatever their parameters: a circuit of
#: these only is simulated with it by the ``automatic`` method (``rz`` is Clifford only
#: at some angles, so it is left out: such a circuit is estimated as a statevector)
CLIFFORD = frozenset({"id", "x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz",
                      "swap", "ecr", "delay", "measure", "reset", "barrier"})
_CONTROL_FLOW = frozenset({"if_else", "while_loop", "for_loop", "switch_case"})
_LOOP_JUMPS = frozenset({"break_loop", "continue_loop"})
#: methods the model estimates, and the method it uses for each
_MODELLED = {"automatic": "automatic", "statevector": "statevector",
             "density_matrix": "density_matrix", "stabilizer": "stabilizer"}


@dataclass(frozen=True, slots=True)
class CostModel:
    """What a backend's circuits are estimated with and held to (sent to parse workers)."""

    #: the most seconds a circuit's estimated simulation may take; 0: no limit
    max_seconds: float
    #: where ``max_seconds`` is set, named when a circuit is refused for it
    setting: str
    seconds_per_amplitude_op: float = SECONDS_PER_AMPLITUDE_OP
    seconds_per_stabilizer_op: float = SECONDS_PER_STABILIZER_OP


@dataclass(frozen=True, slots=True)
class CostCheck:
    """One submission's cost check: the backend's model, the batch's shots and method."""

    model: CostModel
    shots: int
    #: the batch's ``method`` option (the local backend's METHODS)
    method: str = "automatic"


@dataclass(frozen=True, slots=True)
class PerShot:
    """Why Aer must simulate every shot on its own, and where in the source."""

    #: e.g. "a reset", "a mid-circuit measurement (an operation on a measured qubit)"
    reason: str
    #: 1-based line of the statement, when the source shows it
    line: int | None = None

    def __str__(self) -> str:
        return self.reason + (f" at line {self.line}" if self.line is not None else "")


@dataclass(frozen=True, slots=True)
class Estimate:
    """A circuit's estimated simulation, and how it was reckoned."""

    seconds: float
    qubits: int
    #: operations simulated per run (loop bodies once per iteration)
    operations: int
    shots: int
    #: "statevector", "density_matrix" or "stabilizer"
    method: str
    #: None: every shot is sampled from one run
    per_shot: PerShot | None
    #: the model's seconds per operation per amplitude (per qubit for a stabilizer)
    constant: float

    @property
    def runs(self) -> int:
        return 1 if self.per_shot is None else self.shots

    def explain(self) -> str:
        """One sentence: the figure, and the product of terms it is."""
        if self.per_shot is None:
            runs = f"1 run (all {self.shots} shots sampled from it)"
        else:
            runs = f"{self.shots} runs, one per shot because of {self.per_shot},"
        if self.method == "stabilizer":
            size, what = f"{self.qubits} qubits", "stabilizer: Clifford gates only"
        elif self.method == "density_matrix":
            size = f"4**{self.qubits} entries"
            what = f"x {DENSITY_MATRIX_FACTOR:g}, density matrix"
        else:
            size, what = f"2**{self.qubits} amplitudes", "statevector"
        return (f"its simulation is estimated at {_duration(self.seconds)}: {runs} x "
                f"{self.operations} operations x {size} x {self.constant:.2g} s ({what})")


def estimate(circuit: QuantumCircuit, shots: int, model: CostModel, *, method: str = "automatic",
             source: str | None = None) -> Estimate | None:
    """The estimated cost of ``shots`` shots of ``circuit``; None for a method not modelled.

    ``source``: the circuit's OpenQASM, to say on which line simulation becomes per-shot.
    """
    chosen = _MODELLED.get(method)
    if chosen is None:
        return None
    if chosen == "automatic":
        chosen = "stabilizer" if _clifford(circuit) else "statevector"
    why = per_shot(circuit, source, method=chosen)
    operations = max(1, _weighted_operations(circuit))
    runs = 1 if why is None else shots
    qubits = circuit.num_qubits
    if chosen == "stabilizer":
        constant = model.seconds_per_stabilizer_op
        seconds = runs * operations * max(1, qubits) * constant
    else:
        constant = model.seconds_per_amplitude_op
        density = chosen == "density_matrix"
        # a float: 2**exponent can be large, and the product only needs three digits
        seconds = runs * operations * math.ldexp(constant, qubits * (2 if density else 1))
        seconds *= DENSITY_MATRIX_FACTOR if density else 1.0
    return Estimate(seconds, qubits, operations, shots, chosen, why, constant)


def per_shot(circuit: QuantumCircuit, source: str | None = None, *,
             method: str = "statevector") -> PerShot | None:
    """Why Aer cannot sample ``circuit``'s shots from one run, or None if it can.

    Aer samples when every measurement is terminal: nothing but measurements and barriers
    touch a qubit after it is measured, and there is no reset (but for a density matrix,
    where a reset is a channel like any other) and no control flow.
    """
    names = circuit.count_ops()  # counted without a Python object per instruction
    if any(name in _CONTROL_FLOW or name in _LOOP_JUMPS for name in names):
        return PerShot("classical control flow (if, for, while or switch)",
                       _line(source, _CONTROL_WORDS))
    if "reset" in names and method != "density_matrix":
        return PerShot("a reset", _line(source, _RESET_WORD))
    if not _terminal_only(circuit, names.get("measure", 0)):
        return PerShot("a mid-circuit measurement (an operation on a qubit after it "
                       "is measured)", _mid_measurement_line(source))
    return None


def _terminal_only(circuit: QuantumCircuit, measurements: int) -> bool:
    """Whether nothing but measurements and barriers acts on a qubit after its measurement.

    The usual case, every measurement in a tail of measurements and barriers, is read
    from the end without looking at the rest; only otherwise is the circuit walked.
    """
    data = circuit.data
    tail = 0
    at = len(data) - 1
    while at >= 0 and tail < measurements and data[at].name in ("measure", "barrier"):
        tail += data[at].name == "measure"
        at -= 1
    if tail == measurements:
        return True
    measured: set[int] = set()
    for instruction in data:
        name = instruction.name
        if name == "barrier":
            continue
        qubits = [circuit.find_bit(qubit).index for qubit in instruction.qubits]
        if name == "measure":
            measured.update(qubits)
        elif measured.intersection(qubits):
            return False
    return True


def _clifford(circuit: QuantumCircuit) -> bool:
    names = circuit.count_ops()
    if not any(name in _CONTROL_FLOW for name in names):
        return all(name in CLIFFORD or name in _LOOP_JUMPS for name in names)
    for instruction in circuit.data:
        operation = instruction.operation
        blocks = getattr(operation, "blocks", ())
        if blocks:
            if not all(_clifford(block) for block in blocks):
                return False
        elif operation.name not in CLIFFORD and operation.name not in _LOOP_JUMPS:
            return False
    return True


def _weighted_operations(circuit: QuantumCircuit) -> int:
    """Operations per run: control-flow bodies counted, a for loop's once per iteration, and
    a gate of the program's own (``gate foo a, b { ... }``) as the standard gates it is
    made of (the local worker compiles it into them)."""
    leaves = _leaves()
    names = circuit.count_ops()
    if all(name in leaves for name in names):
        return len(circuit.data)  # without a Python object per instruction
    sizes: dict[tuple[str, int], int] = {}
    total = 0
    for instruction in circuit.data:
        operation = instruction.operation
        blocks = getattr(operation, "blocks", ())
        if blocks:
            inner = sum(_weighted_operations(block) for block in blocks)
            if operation.name == "for_loop":
                indexset = operation.params[0]
                inner *= max(1, len(indexset)) if isinstance(indexset, Iterable) else 1
            total += 1 + inner
        elif operation.name in leaves:
            total += 1
        else:
            key = (operation.name, operation.num_qubits)
            if key not in sizes:
                definition = getattr(operation, "definition", None)
                sizes[key] = 1 if definition is None else max(
                    1, _weighted_operations(definition))
            total += sizes[key]
    return total


@functools.cache
def _leaves() -> frozenset[str]:
    """Operations Aer runs as they are: the standard gates, measure, reset, barrier..."""
    from qiskit.circuit.library import get_standard_gate_name_mapping

    return frozenset(get_standard_gate_name_mapping()) | {"measure", "reset", "barrier",
                                                          "delay", *_LOOP_JUMPS}


# -- where in the source ------------------------------------------------------------------

_RESET_WORD = re.compile(r"\breset\b")
_CONTROL_WORDS = re.compile(r"\b(?:if|for|while|switch)\b")
_MEASURE_WORD = re.compile(r"\bmeasure\b")
#: statements after a measurement that leave it terminal
_INERT = re.compile(r"\s*(?:barrier\b|bit\b|creg\b|qubit\b|qreg\b|include\b|OPENQASM\b|"
                    r"const\b|$)")


def _line(source: str | None, pattern: re.Pattern[str]) -> int | None:
    if source is None:
        return None
    found = pattern.search(_blanked(source))
    return None if found is None else _declarations.position(source, found.start())[0]


def _mid_measurement_line(source: str | None) -> int | None:
    """The line of the first measurement followed by a statement other than measurements,
    barriers and declarations (the qubits are not compared: a hint, not a proof)."""
    if source is None:
        return None
    text = _blanked(source)
    first_measure: int | None = None
    start = 0
    for end in (i for i, ch in enumerate(text) if ch == ";"):
        statement = text[start:end]
        found = _MEASURE_WORD.search(statement)
        if found is not None:
            if first_measure is None:
                first_measure = start + found.start()
        elif first_measure is not None and not _INERT.match(statement):
            return _declarations.position(source, first_measure)[0]
        start = end + 1
    return None


def _blanked(source: str) -> str:
    return _declarations._BLANKED.sub(_declarations._blank, source)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds:.0f} s ({seconds / 60:.0f} min)"
    if seconds < 86400 * 2:
        return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"
    return f"{seconds:.3g} s ({seconds / 86400:.0f} days)"
