"""Parse, validate and convert OpenQASM 2 and 3 circuits.

Runs for every circuit at submission (in the daemon's parse workers, see
:func:`check_circuit`), so a user's mistake is reported with its label, line and column
before anything is stored, and again inside the local simulator's worker processes
(:func:`load_circuit`). Lines and columns are 1-based throughout.

Before any parser builds anything, a scan of the declarations
(:mod:`qjobd.backends._qasm_declarations`) checks the circuit's qubits, classical bits
and statements against the backend's limits: ``qubit[100000000] q;`` is one regular
expression match, not an allocation.

OpenQASM 2 goes through Qiskit's Rust parser. OpenQASM 3 goes first through Qiskit's
native (Rust) importer where the process allows it (:mod:`qjobd.backends._qasm_native`:
it takes a subset of the language, and says why not on fd 2), and otherwise, or when it
refuses, through the reference ANTLR grammar (``openqasm3``) driven here rather than
through ``openqasm3.parse``, because that one bails out of syntax errors without saying
where they are; the AST is then converted by ``qiskit_qasm3_import``. The reference path
decides what is accepted and words every error, as before the native importer was used.

For a backend whose provider parses OpenQASM 3 itself (IonQ), a program the reference
grammar accepts but Qiskit cannot import (``const``, subroutines, ``stretch``, ``uint``,
arrays) is still accepted when the widths its counts need are constants: its facts come
from the syntax tree, it is sent as written, and the checks Qiskit would have made are
listed in :attr:`Checked.skipped`.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import qiskit.qasm2
import qiskit.qasm3
import qiskit_qasm3_import
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from openqasm3 import ast as qasm3_ast
from openqasm3._antlr.qasm3Lexer import qasm3Lexer
from openqasm3._antlr.qasm3Parser import qasm3Parser
from openqasm3.parser import QASM3ParsingError, QASMNodeVisitor
from qiskit.circuit import QuantumCircuit

from qjobd.backends import _aer_cost as _cost
from qjobd.backends import _qasm_declarations as _declarations
from qjobd.backends import _qasm_native as _native
from qjobd.errors import QjobdError

__all__ = ["Checked", "CircuitLimits", "Declared", "OverLimit", "ParsedCircuit", "QasmError",
           "check_circuit", "check_declarations", "convert", "enable_native", "load_circuit",
           "offloaded", "parse_circuit", "remember", "set_offload"]

#: use Qiskit's native OpenQASM 3 importer in this process (see _qasm_native: only in a
#: process of ours whose file descriptor 2 nothing else writes to)
enable_native = _native.enable

#: why a circuit without measurements is refused
NO_MEASUREMENT = "the circuit measures nothing, so it would have no counts"


@dataclass(frozen=True, slots=True)
class ParsedCircuit:
    """A circuit that parsed and passed validation."""

    label: str
    #: the user's source, unchanged
    source: str
    #: 2 or 3
    qasm_version: int
    num_qubits: int
    #: the width of every counts key
    num_clbits: int


class QasmError(QjobdError):
    """A circuit could not be parsed, validated or converted."""

    def __init__(
        self, label: str, reason: str, line: int | None = None, column: int | None = None
    ) -> None:
        # All four go to Exception so the error pickles across process boundaries.
        super().__init__(label, reason, line, column)
        self.label = label
        self.reason = reason
        #: 1-based, None when unknown
        self.line = line
        #: 1-based, None when unknown
        self.column = column

    def __str__(self) -> str:
        where = f"circuit {self.label!r}"
        if self.line is not None:
            where += f", line {self.line}"
            if self.column is not None:
                where += f", column {self.column}"
        return f"{where}: {self.reason}"

    def relabeled(self, label: str) -> QasmError:
        """The same error about the circuit called ``label``."""
        return type(self)(label, *self.args[1:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "line": self.line,
            "column": self.column,
            "reason": self.reason,
        }


class OverLimit(QasmError):
    """A circuit is over one of the backend's limits (qubits, classical bits, operations)."""

    def __init__(self, label: str, reason: str, line: int | None = None,
                 column: int | None = None, limit: str = "", maximum: int = 0,
                 value: int | None = None) -> None:
        super().__init__(label, reason, line, column)
        # every argument in args, so the error pickles across process boundaries
        self.args = (label, reason, line, column, limit, maximum, value)
        #: "qubits", "classical bits" or "operations"
        self.limit = limit
        self.maximum = maximum
        #: what the circuit has (declares, or counts), when known
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(),
                "limit": {"name": self.limit, "max": self.maximum, "value": self.value}}


@dataclass(frozen=True, slots=True)
class CircuitLimits:
    """What a backend takes per circuit; None: no limit."""

    max_qubits: int | None = None
    max_clbits: int | None = None
    max_operations: int | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """A circuit that passed :func:`check_circuit`: its facts, and how they were found."""

    label: str
    qasm_version: int
    num_qubits: int
    #: the width of every counts key
    num_clbits: int
    #: gate calls, measurements, resets, barriers... (control-flow bodies included)
    operations: int
    #: which parser read it: "qasm2", "native" (Qiskit's Rust OpenQASM 3 importer),
    #: "reference" (the reference grammar and qiskit_qasm3_import) or "grammar" (the
    #: reference grammar's syntax tree only: see ``skipped``)
    path: str
    #: sha256 of the source (UTF-8), the key of the daemon's caches (:func:`remember`)
    digest: str
    #: the checks that could not be made, each a sentence (only on the "grammar" path)
    skipped: tuple[str, ...] = ()
    #: the source in ``wire_version``, when the backend takes another version
    wire: str | None = None
    wire_version: int | None = None


def parse_circuit(label: str, source: str) -> ParsedCircuit:
    """Parse and validate one circuit; raise :class:`QasmError` saying where and why not."""
    try:
        version, num_qubits, num_clbits, _ = _facts(source)
    except QasmError as exc:
        raise exc.relabeled(label) from None
    return ParsedCircuit(label, source, version, num_qubits, num_clbits)


def load_circuit(label: str, source: str) -> QuantumCircuit:
    """The validated Qiskit circuit of a source that :func:`parse_circuit` accepts."""
    return _load(label, source)[1]


def check_circuit(label: str, source: str, *, limits: CircuitLimits = CircuitLimits(),
                  versions: frozenset[int] = frozenset({2, 3}),
                  provider_parsed: frozenset[int] = frozenset(),
                  declared: Declared | None = None,
                  cost: _cost.CostCheck | None = None) -> Checked:
    """Everything the daemon checks about one circuit at submission, in order of cost.

    The declarations against ``limits`` (before any parser runs), then a full parse and
    validation, the precise counts against ``limits``, and, when the circuit's version
    is not in ``versions`` (what the backend takes), its conversion (kept in ``wire``).
    A version in ``provider_parsed`` is parsed by the provider itself: a program in it
    that Qiskit cannot import is accepted on its syntax tree (see the module's doc).
    Raises :class:`QasmError` (or :class:`OverLimit`) saying where and why not.
    ``declared``: what :func:`check_declarations` answered for the same source and limits.
    ``cost``: the simulator's cost model and the batch's shots; a circuit whose estimated
    simulation is over the model's limit is refused (:class:`OverLimit`, "estimated
    seconds"; see :mod:`qjobd.backends._aer_cost`).
    """
    if declared is None or declared.source is not source:
        declared = check_declarations(label, source, limits)
    version = declared.version
    digest = _digest(source)
    try:
        version, circuit, path = _load_any(label, source, version, declared.scan.headerless)
    except _Unimportable as exc:
        if version not in provider_parsed:
            raise exc.error from None
        return _grammar_checked(label, source, exc, limits, digest)
    _validate(label, circuit)
    operations = _operations(circuit)
    _check_counted(label, circuit, operations, limits)
    if cost is not None:
        _check_cost(label, source, circuit, cost)
    checked = Checked(label, version, circuit.num_qubits, circuit.num_clbits, operations, path,
                      digest)
    if version in versions:
        return checked
    # the native subset is written as OpenQASM 2 statement by statement (~1 ms where the
    # exporter takes ~50 ms for 2,000 gates); anything else goes through the exporter
    wire = _native.to_qasm2(source) if path == "native" and 2 in versions else None
    if wire is not None:
        return replace(checked, wire=wire, wire_version=2)
    target, wire = _converted(label, circuit, versions)
    return replace(checked, wire=wire, wire_version=target)


@dataclass(frozen=True, slots=True)
class Declared:
    """A source that passed :func:`check_declarations`, for :func:`check_circuit`."""

    source: str
    version: int
    scan: _declarations.Declarations


def check_declarations(label: str, source: str, limits: CircuitLimits) -> Declared:
    """The first, cheap part of :func:`check_circuit`: the declarations against ``limits``."""
    if not source.strip():
        raise QasmError(label, "the source is empty")
    declared = _declarations.scan(source)
    version = _declared_version(label, source, declared)
    _check_declared(label, source, declared, limits)
    return Declared(source, version, declared)


def convert(circuit: ParsedCircuit, versions: frozenset[int]) -> str:
    """Source in one of `versions`.

    The user's own text when its version is accepted, else converted with
    ``qiskit.qasm2.dumps`` / ``qiskit.qasm3.dumps`` (or taken from the conversion made
    when the circuit was checked: :func:`remember`). Raises :class:`QasmError` when the
    circuit cannot be expressed in any accepted version (e.g. OpenQASM 3 classical
    control flow has no OpenQASM 2 form).
    """
    if circuit.qasm_version in versions:
        return circuit.source
    digest = _digest(circuit.source)
    for version in sorted(versions, reverse=True):
        known = _WIRE.get((digest, version))
        if known is not None:
            return known
    if _offload is not None and not _native.enabled():
        return _offload("convert", (circuit.label, circuit.source, versions))
    return _converted(circuit.label, load_circuit(circuit.label, circuit.source), versions)[1]


def _converted(label: str, circuit: QuantumCircuit, versions: frozenset[int]) -> tuple[int, str]:
    # Newest first: OpenQASM 3 can express everything 2 can.
    targets = sorted((v for v in versions if v in (2, 3)), reverse=True)
    if not targets:
        wanted = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise QasmError(label, f"the backend accepts no OpenQASM version we emit ({wanted})")
    reasons = []
    for version in targets:
        try:
            if version == 3:
                return 3, qiskit.qasm3.dumps(circuit)
            return 2, qiskit.qasm2.dumps(circuit)
        except (qiskit.qasm2.QASM2ExportError, qiskit.qasm3.QASM3ExporterError) as exc:
            reasons.append(f"OpenQASM {version}: {exc.message}")
    raise QasmError(
        label,
        "the circuit cannot be expressed in an OpenQASM version the backend accepts ("
        + "; ".join(reasons)
        + ")",
    )


# -- the daemon's caches, and parsing elsewhere ------------------------------------------
#
# The same source is checked at submission (in a parse worker), parsed again when its job
# is submitted (for its facts, and converted when the backend takes another version),
# and again by the local backend. The daemon keeps what the workers found, by digest, so
# those later calls cost a sha256; and a process that may not run the native importer
# (the daemon's own) hands a cache miss to the workers (:func:`set_offload`).

#: ``offload(kind, args)``: runs :func:`offloaded` elsewhere and returns its answer
Offload = Callable[[str, tuple[Any, ...]], Any]
_offload: Offload | None = None


def set_offload(offload: Offload | None) -> None:
    """Where this process sends a parse or conversion its caches cannot answer."""
    global _offload
    _offload = offload


def offloaded(kind: str, args: tuple[Any, ...]) -> Any:
    """What :func:`set_offload`'s callable runs in a worker: "facts" or "convert"."""
    if kind == "facts":
        (source,) = args
        return _facts(source, here=True)
    if kind == "convert":
        label, source, versions = args
        circuit = load_circuit(label, source)  # valid, or the error
        if 2 in versions and 3 not in versions and _native.enabled():
            wire = _native.to_qasm2(source)  # a valid program in the subset's syntax
            if wire is not None:
                return wire
        return _converted(label, circuit, versions)[1]
    raise ValueError(f"unknown offloaded call {kind!r}")


def remember(checked: Checked) -> None:
    """Keep a checked circuit's facts (and its conversion) for the calls that follow."""
    _FACTS.put(checked.digest, (checked.qasm_version, checked.num_qubits, checked.num_clbits,
                                checked.operations))
    if checked.wire is not None and checked.wire_version is not None:
        _WIRE.put((checked.digest, checked.wire_version), checked.wire, len(checked.wire))


class _Lru:
    """A small thread-safe LRU map, bounded by entries and by a total weight."""

    def __init__(self, entries: int, weight: int | None = None) -> None:
        self._entries, self._weight, self._total = entries, weight, 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, weight: int = 0) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._items[key] = (value, weight)
            self._total += weight
            while len(self._items) > self._entries or (
                    self._weight is not None and self._total > self._weight and self._items):
                _, (_, dropped) = self._items.popitem(last=False)
                self._total -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0


#: digest -> (version, qubits, clbits, operations)
_FACTS = _Lru(100_000)
#: (digest, version) -> converted source; 64 MiB of text at most
_WIRE = _Lru(100_000, 64 * 1024 * 1024)


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def _facts(source: str, *, here: bool = False) -> tuple[int, int, int, int]:
    """(version, qubits, clbits, operations); ``here``: never offloaded."""
    digest = _digest(source)
    known = _FACTS.get(digest)
    if known is not None:
        return known  # type: ignore[no-any-return]
    template = sweep_template(source)
    if template is not None:
        known = _SWEEPS.get(template)
        if known is not None:
            return known
    if _offload is not None and not _native.enabled() and not here:
        facts: tuple[int, int, int, int] = tuple(_offload("facts", (source,)))  # type: ignore[assignment]
    else:
        version, circuit = _load("", source)
        facts = (version, circuit.num_qubits, circuit.num_clbits, _operations(circuit))
    _FACTS.put(digest, facts)
    if template is not None:
        _SWEEPS.put(template, facts)
    return facts


# -- parameter sweeps ------------------------------------------------------------------
#
# A sweep submits thousands of circuits that differ only in the angles of their gates:
# a 10,000-circuit batch would spend 20 s in the OpenQASM 3 parser. Two sources whose
# "template" (comments dropped, whitespace collapsed, each float literal replaced by a
# placeholder) is the same have the same tokens except for float values; when the
# template also holds nothing whose outcome can depend on a float's value (no division,
# no functions, casts, comparisons, conditions, loops, definitions, modifiers, durations,
# classical types or inputs: only declarations of qubits and bits, gate calls whose
# arguments use + - * and constants, measure, reset and barrier), then parsing, validity
# (Qiskit takes any float as an angle, inf and nan included) and the facts (version,
# qubits, clbits) are the same for both. So the facts of a template are kept once one
# source with it has been parsed in full; a source with a new template, or one outside
# that subset, is parsed in full as before, and errors always come from a full parse.

_SWEEP_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_SWEEP_FLOAT = re.compile(
    r"(?<![\w.])(?:\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)(?![\w.])")
_SWEEP_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: stand-ins for a float literal, the one include allowed, and "->" (never in a source
#: the cache serves); "." and quotes survive only in those, so never in a template
_SWEEP_MARKS = ("§", "¶", "¤")
#: every character a template may hold
_SWEEP_CHARS = re.compile(r"[A-Za-z0-9_\s\[\](),;+\-*=:§¶¤]*")
_SWEEP_INCLUDE = re.compile(r'\binclude\s*"stdgates\.inc"\s*;')
#: OpenQASM 3 keywords and built-in functions through which a value could matter
_SWEEP_FORBIDDEN = frozenset("""
    def cal defcal defcalgrammar gate opaque extern box let break continue if else end
    return for while in switch case default input output const readonly mutable bool int
    uint float angle complex array void duration stretch inv pow ctrl negctrl dim
    durationof delay true false pragma sizeof arccos arcsin arctan ceiling cos exp floor
    log mod popcount rotl rotr sin sqrt tan real imag include OPENQASM
""".split())


def sweep_template(source: str) -> str | None:
    """The source's template, or None if it is outside the subset the cache may serve."""
    if any(mark in source for mark in _SWEEP_MARKS):
        return None
    start = _LEADING.match(source)
    assert start is not None  # the pattern matches the empty string
    header = _HEADER.match(source, start.end())
    if header is None:
        prefix, body = "", source
    elif header["version"].split(".")[0] == "3":
        prefix, body = source[:header.end()], source[header.end():]
    else:
        return None  # OpenQASM 2 goes through Qiskit's own fast parser
    body = _SWEEP_COMMENTS.sub(" ", body)
    body = _SWEEP_INCLUDE.sub(" ¶ ", body).replace("->", " ¤ ")
    body = " ".join(_SWEEP_FLOAT.sub("§", body).split())
    if not _SWEEP_CHARS.fullmatch(body):
        return None
    if any(word in _SWEEP_FORBIDDEN for word in _SWEEP_WORD.findall(body)):
        return None
    return f"{prefix}\0{body}"


class _Templates:
    """A small LRU map of template -> facts, safe to share between threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[int, int, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, template: str) -> tuple[int, int, int, int] | None:
        with self._lock:
            facts = self._items.get(template)
            if facts is not None:
                self._items.move_to_end(template)
            return facts

    def put(self, template: str, facts: tuple[int, int, int, int]) -> None:
        with self._lock:
            self._items[template] = facts
            self._items.move_to_end(template)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_SWEEPS = _Templates(4096)


# -- version detection ---------------------------------------------------------------

_LEADING = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_HEADER = re.compile(r"OPENQASM\s+(?P<version>[0-9]+(?:\.[0-9]+)?)")


def _position(source: str, offset: int) -> tuple[int, int]:
    line_start = source.rfind("\n", 0, offset) + 1
    return source.count("\n", 0, offset) + 1, offset - line_start + 1


# -- loading and validation ------------------------------------------------------------


def _load(label: str, source: str) -> tuple[int, QuantumCircuit]:
    if not source.strip():
        raise QasmError(label, "the source is empty")
    declared = _declarations.scan(source)
    version = _declared_version(label, source, declared)
    try:
        version, circuit, _ = _load_any(label, source, version, declared.headerless)
    except _Unimportable as exc:
        raise exc.error from None
    _validate(label, circuit)
    return version, circuit


def _declared_version(label: str, source: str, declared: _declarations.Declarations) -> int:
    """2 or 3 from the header; a source without one is OpenQASM 3, where it is optional."""
    if declared.version_text is None:
        # Also a malformed header ("OPENQASM;"): the v3 grammar reports where it breaks.
        return 3
    if declared.version_text.split(".")[0] in ("2", "3"):
        return declared.version
    assert declared.version_at is not None
    line, column = _position(source, declared.version_at)
    raise QasmError(label, f"unsupported OpenQASM version {declared.version_text}; expected "
                    "2.0 or 3.x", line, column)


def _load_any(label: str, source: str, version: int, headerless: bool
              ) -> tuple[int, QuantumCircuit, str]:
    """(version, circuit, path); QasmError, or _Unimportable for what Qiskit cannot import."""
    if version == 2:
        try:
            return 2, _load_qasm2(label, source), "qasm2"
        except QasmError as exc:
            raise _with_hint(exc, source, 2) from None
    if _native.enabled():
        try:
            circuit = _native.load(source)
        except _native.Refused:
            pass
        else:
            # an empty program "parses" natively; the reference path says what is wrong
            if circuit.num_qubits:
                return 3, circuit, "native"
    try:
        return 3, _load_qasm3(label, source), "reference"
    except (QasmError, _Unimportable) as exc:
        error = exc if isinstance(exc, QasmError) else exc.error
        if headerless:
            _refuse_if_qasm2(label, source, error)
        if isinstance(exc, QasmError):
            raise _with_hint(exc, source, 3) from None
        raise


def _refuse_if_qasm2(label: str, source: str, error: QasmError) -> None:
    """A program without a version line is OpenQASM 3; if it is OpenQASM 2, say so."""
    try:
        # on line 1, so every line keeps its number
        circuit = _load_qasm2(label, "OPENQASM 2.0; " + source)
    except QasmError:
        return
    if circuit.num_qubits == 0:
        return
    raise QasmError(label, "the program has no version line, so it is read as OpenQASM 3, "
                    f"in which it is not valid ({error.reason}); it is valid OpenQASM 2: "
                    'add the line "OPENQASM 2.0;" at its top', 1, 1)


#: the standard gates of each version, and the include that defines them
_STANDARD_GATES = {
    3: ("stdgates.inc", frozenset(_native.STDGATES)),
    2: ("qelib1.inc", frozenset("u3 u2 u1 cx id u0 u p x y z h s sdg t tdg rx ry rz sx sxdg cz "
                                "cy swap ch ccx cswap crx cry crz cu1 cp cu3 csx cu rxx rzz rccx "
                                "rc3x c3x c3sqrtx c4x".split())),
}
_UNDEFINED_GATE = re.compile(r"^(?:gate '(?P<v3>[^']+)' is not defined\.|"
                             r"'(?P<v2>[^']+)' is not defined in this scope|cannot use "
                             r"non-builtin custom instruction '(?P<v2_custom>[^']+)' before "
                             r"definition)$")


def _with_hint(error: QasmError, source: str, version: int) -> QasmError:
    """An undefined standard gate without its include: say which line to add."""
    undefined = _UNDEFINED_GATE.match(error.reason)
    if undefined is None:
        return error
    include, gates = _STANDARD_GATES[version]
    name = undefined["v3"] or undefined["v2"] or undefined["v2_custom"]
    if name not in gates or f'"{include}"' in source:
        return error
    where = ('after the "OPENQASM 3.0;" line' if version == 3
             else 'after the "OPENQASM 2.0;" line')
    return QasmError(error.label, f'{error.reason} It is a standard gate: add the line '
                     f'include "{include}"; {where}', error.line, error.column)


def _check_declared(label: str, source: str, declared: _declarations.Declarations,
                    limits: CircuitLimits) -> None:
    """The limits against what the source declares, before anything is parsed."""
    for width in declared.registers:
        if width.size is None:
            line, column = _position(source, width.offset)
            raise QasmError(label, f"the width of {width.name!r} ([{width.text}]) is not a "
                            "constant integer the daemon can evaluate (literals, + - * / % **, "
                            "parentheses and const integers declared before it)", line, column)
    for kind, maximum in (("qubits", limits.max_qubits), ("classical bits", limits.max_clbits)):
        total = declared.total(kind)
        if maximum is None or total is None or total <= maximum:
            continue
        crossing = declared.crossing(kind, maximum)
        offset = crossing.offset if crossing is not None else declared.hardware_at
        line, column = _position(source, offset) if offset is not None else (None, None)
        raise OverLimit(label, f"the circuit declares {total} {kind}; the backend takes at "
                        f"most {maximum}", line, column, kind, maximum, total)
    statements = declared.statements - len(declared.registers)
    if limits.max_operations is not None and statements > limits.max_operations:
        raise OverLimit(label, f"the circuit has {statements} statements besides its "
                        f"declarations; the limit is {limits.max_operations} operations per "
                        "circuit", None, None, "operations", limits.max_operations, statements)


def _check_counted(label: str, circuit: QuantumCircuit, operations: int,
                   limits: CircuitLimits) -> None:
    """The limits against the parsed circuit (hardware qubits, broadcasts, loops' bodies)."""
    for kind, value, maximum in (("qubits", circuit.num_qubits, limits.max_qubits),
                                 ("classical bits", circuit.num_clbits, limits.max_clbits),
                                 ("operations", operations, limits.max_operations)):
        if maximum is not None and value > maximum:
            raise OverLimit(label, f"the circuit has {value} {kind}; the backend takes at most "
                            f"{maximum}", None, None, kind, maximum, value)


def _check_cost(label: str, source: str, circuit: QuantumCircuit, cost: _cost.CostCheck
                ) -> None:
    """The simulator's estimate of the circuit's run against its limit (0: none)."""
    limit = cost.model.max_seconds
    if not limit:
        return
    estimate = _cost.estimate(circuit, cost.shots, cost.model, method=cost.method,
                              source=source)
    if estimate is None or estimate.seconds <= limit:
        return
    line = estimate.per_shot.line if estimate.per_shot is not None else None
    raise OverLimit(label, f"{estimate.explain()}, over the limit of {limit:g} s", line, None,
                    "estimated seconds", int(limit), math.ceil(estimate.seconds))


def _operations(circuit: QuantumCircuit) -> int:
    if not circuit.has_control_flow_op():
        return len(circuit.data)  # without making a Python object per instruction
    return sum(1 + sum(_operations(block) for block in getattr(i.operation, "blocks", ()))
               for i in circuit.data)


def _validate(label: str, circuit: QuantumCircuit) -> None:
    if circuit.num_qubits == 0:
        raise QasmError(label, "the circuit has no qubits")
    if circuit.num_clbits == 0 or not _measures(circuit):
        raise QasmError(label, NO_MEASUREMENT)
    if circuit.parameters:
        names = ", ".join(sorted(p.name for p in circuit.parameters))
        raise QasmError(label, f"the circuit has unbound parameters: {names}")


def _measures(circuit: QuantumCircuit) -> bool:
    if not circuit.has_control_flow_op():
        return "measure" in circuit.count_ops()
    for instruction in circuit.data:
        operation = instruction.operation
        if operation.name == "measure":
            return True
        # Measurements inside if/while/for/switch bodies count too.
        if any(_measures(block) for block in getattr(operation, "blocks", ())):
            return True
    return False


# -- OpenQASM 2 ------------------------------------------------------------------------

# Qiskit's messages start "<input>:LINE,COLUMN: " with a 0-based column.
_QASM2_LOCATION = re.compile(
    r"^<input>:(?P<line>[0-9]+),(?P<column>[0-9]+):\s*(?P<reason>.*)$", re.S
)


def _load_qasm2(label: str, source: str) -> QuantumCircuit:
    try:
        return qiskit.qasm2.loads(
            source,
            # The empty path keeps the built-in qelib1.inc but stops `include "/etc/..."`
            # from reading the daemon's files and echoing them in error messages.
            include_path=(),
            # Standard-library gate objects for qelib1's gates, so Aer and the
            # OpenQASM 3 exporter see h/cx/u3 rather than opaque custom gates.
            custom_instructions=qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS,
        )
    except qiskit.qasm2.QASM2ParseError as exc:
        # str() of a QiskitError is the repr of its message.
        message = str(getattr(exc, "message", exc))
        located = _QASM2_LOCATION.match(message)
        if located is None:
            raise QasmError(label, message) from None
        raise QasmError(
            label, located["reason"], int(located["line"]), int(located["column"]) + 1
        ) from None


# -- OpenQASM 3 ------------------------------------------------------------------------


class _FirstSyntaxError(ErrorListener):
    """Remembers the first syntax error; later ones are usually its echoes."""

    def __init__(self) -> None:
        super().__init__()
        self.error: tuple[int, int, str] | None = None

    def syntaxError(  # ANTLR's name
        self,
        recognizer: object,
        offendingSymbol: object,
        line: int,
        column: int,
        msg: str,
        e: object,
    ) -> None:
        if self.error is None:
            self.error = (line, column + 1, msg)


# ANTLR's Python runtime grows DFA caches shared by all parsers without locking, and the
# daemon parses in threads. With the GIL, parallel parses would gain nothing anyway.
_ANTLR_LOCK = threading.Lock()

# openqasm3's visitor: "L3:C7: message" (0-based column).
_VISITOR_LOCATION = re.compile(r"^L(?P<line>[0-9]+):C(?P<column>[0-9]+):\s*(?P<reason>.*)$", re.S)
# qiskit_qasm3_import's ConversionError: "3,7: message" (0-based column).
_CONVERSION_LOCATION = re.compile(r"^(?P<line>[0-9]+),(?P<column>[0-9]+):\s*(?P<reason>.*)$", re.S)


def _load_qasm3(label: str, source: str) -> QuantumCircuit:
    lexer = qasm3Lexer(InputStream(source))
    tokens = CommonTokenStream(lexer)
    parser = qasm3Parser(tokens)
    listener = _FirstSyntaxError()
    # The default listeners print every error to stderr.
    for recognizer in (lexer, parser):
        recognizer.removeErrorListeners()
        recognizer.addErrorListener(listener)
    with _ANTLR_LOCK:
        tree = parser.program()
    if listener.error is not None:
        line, column, reason = listener.error
        raise QasmError(label, reason, line, column)
    if not tree.statementOrScope():
        # Also keeps a comments-only source away from the visitor, which crashes on it.
        raise QasmError(label, "the program has no statements")
    program = _visit(label, tree)
    try:
        return qiskit_qasm3_import.convert(program)
    except qiskit_qasm3_import.ConversionError:
        pass
    except Exception as exc:  # the converter's own bugs: IndexError, KeyError...
        error = _located_failure(label, program, exc)
        if isinstance(exc, TypeError | NotImplementedError):
            # e.g. a loop variable as an index: what the converter cannot do, not an error
            raise _Unimportable(error, program) from None
        raise error from None
    # openqasm3 puts a token's absolute offset where an identifier's column belongs; only
    # on this error path, fix the tokens and convert again to get a true column.
    _columns_as_offsets(tokens)
    program = _visit(label, tree)
    try:
        qiskit_qasm3_import.convert(program)
    except qiskit_qasm3_import.ConversionError as exc:
        error = _from_match(label, _CONVERSION_LOCATION, str(exc))
        if _UNSUPPORTED.search(error.reason):
            raise _Unimportable(error, program) from None
        raise error from None
    raise AssertionError("OpenQASM 3 conversion failed only once")  # pragma: no cover


class _Unimportable(QjobdError):
    """The reference grammar accepts the program; Qiskit cannot import a construct in it."""

    def __init__(self, error: QasmError, program: qasm3_ast.Program) -> None:
        super().__init__(error)
        #: what is said when the program must be imported
        self.error = error
        self.program = program


#: qiskit_qasm3_import's words for a construct it does not handle (as opposed to an error
#: in the program: an undefined name, a wrong number of arguments...)
_UNSUPPORTED = re.compile(r"not (?:currently )?supported|unsupported|cannot be resolved into a "
                          r"Qiskit value|^conditions must be|not (?:yet )?handled|can(?:no|')t "
                          r"handle|only .* (?:is|are) supported", re.IGNORECASE)


def _visit(label: str, tree: qasm3Parser.ProgramContext) -> qasm3_ast.Program:
    try:
        return QASMNodeVisitor().visitProgram(tree)
    except QASM3ParsingError as exc:
        raise _from_match(label, _VISITOR_LOCATION, str(exc)) from None
    except Exception as exc:  # grammar corners the visitor does not handle
        raise QasmError(label, f"{type(exc).__name__}: {exc}") from None


def _from_match(label: str, pattern: re.Pattern[str], message: str) -> QasmError:
    located = pattern.match(message)
    if located is None:
        return QasmError(label, message)
    return QasmError(label, located["reason"], int(located["line"]), int(located["column"]) + 1)


def _columns_as_offsets(tokens: CommonTokenStream) -> None:
    for token in tokens.tokens:
        text = token.text
        # Pin the text first: CommonToken reads it from the input by start/stop.
        token.text = text
        token.start = token.column
        token.stop = token.column + max(len(text or ""), 1) - 1


def _located_failure(label: str, program: qasm3_ast.Program, exc: Exception) -> QasmError:
    """A QasmError for a converter crash, at the first top-level statement that causes it.

    Conversion of a prefix of the program fails exactly when the prefix contains the
    culprit, so a binary search finds it in log2(statements) conversions.
    """
    reason = f"{type(exc).__name__}: {exc}"
    statements = program.statements
    low, high = 1, len(statements)  # the shortest failing prefix is in [low, high]
    while low < high:
        middle = (low + high) // 2
        if _fails_like(
            qasm3_ast.Program(statements=statements[:middle], version=program.version), exc
        ):
            high = middle
        else:
            low = middle + 1
    span = statements[low - 1].span if statements else None
    if span is None or not _fails_like(
        qasm3_ast.Program(statements=statements[:low], version=program.version), exc
    ):
        return QasmError(label, reason)
    return QasmError(label, reason, span.start_line, span.start_column + 1)


def _fails_like(program: qasm3_ast.Program, original: Exception) -> bool:
    try:
        qiskit_qasm3_import.convert(program)
    except Exception as exc:
        return type(exc) is type(original) and str(exc) == str(original)
    return False


# -- OpenQASM 3 a provider parses itself: the syntax tree's facts ------------------------

#: statements that are operations on qubits, for the count against max_operations
_AST_OPERATIONS = (qasm3_ast.QuantumGate, qasm3_ast.QuantumMeasurementStatement,
                   qasm3_ast.QuantumReset, qasm3_ast.QuantumBarrier, qasm3_ast.QuantumPhase,
                   qasm3_ast.DelayInstruction)


def _grammar_checked(label: str, source: str, unimportable: _Unimportable,
                     limits: CircuitLimits, digest: str) -> Checked:
    """The facts of a program Qiskit cannot import, from its syntax tree alone."""
    program = unimportable.program
    consts: dict[str, int | None] = {}
    qubits = clbits = 0
    for statement in program.statements:
        if isinstance(statement, qasm3_ast.Include) and statement.filename != "stdgates.inc":
            # nothing but the standard library can be read where the program is sent
            raise unimportable.error
        if isinstance(statement, qasm3_ast.IODeclaration) and \
                statement.io_identifier is qasm3_ast.IOKeyword.input:
            span = statement.span
            raise QasmError(label, f"the program has an input ({statement.identifier.name}) "
                            "and a batch gives no values for inputs",
                            span.start_line if span else None,
                            span.start_column + 1 if span else None)
        if isinstance(statement, qasm3_ast.ConstantDeclaration) and isinstance(
                statement.type, qasm3_ast.IntType | qasm3_ast.UintType):
            consts[statement.identifier.name] = _ast_int(statement.init_expression, consts)
        elif isinstance(statement, qasm3_ast.QubitDeclaration):
            qubits += _ast_width(label, statement, statement.qubit.name, statement.size, consts)
        elif isinstance(statement, qasm3_ast.ClassicalDeclaration | qasm3_ast.IODeclaration) \
                and isinstance(statement.type, qasm3_ast.BitType):
            clbits += _ast_width(label, statement, statement.identifier.name,
                                 statement.type.size, consts)
    gates = _ast_gate_names(program)
    measured, operations, hardware = False, 0, 0
    for node in _ast_nodes(program):
        if isinstance(node, qasm3_ast.QuantumMeasurement):
            measured = True
        elif isinstance(node, _AST_OPERATIONS):
            operations += 1
            if isinstance(node, qasm3_ast.QuantumGate) and node.name.name not in gates:
                raise _undefined_gate(label, source, node, program)
        elif isinstance(node, qasm3_ast.Identifier) and node.name.startswith("$"):
            hardware = max(hardware, int(node.name[1:]) + 1 if node.name[1:].isdigit() else 0)
    qubits = max(qubits, hardware)
    if qubits == 0:
        raise QasmError(label, "the circuit has no qubits")
    if clbits == 0 or not measured:
        raise QasmError(label, NO_MEASUREMENT)
    for kind, value, maximum in (("qubits", qubits, limits.max_qubits),
                                 ("classical bits", clbits, limits.max_clbits),
                                 ("operations", operations, limits.max_operations)):
        if maximum is not None and value > maximum:
            raise OverLimit(label, f"the circuit has {value} {kind}; the backend takes at most "
                            f"{maximum}", None, None, kind, maximum, value)
    error = unimportable.error
    where = f", line {error.line}" if error.line is not None else ""
    skipped = (f"Qiskit cannot import this program ({error.reason}{where}), so it was checked "
               "against the OpenQASM 3 reference grammar and for undefined gates only: gate "
               "arities, types and index ranges were not checked; it is sent to the provider "
               "as written",)
    return Checked(label, 3, qubits, clbits, operations, "grammar", digest, skipped)


def _undefined_gate(label: str, source: str, call: qasm3_ast.QuantumGate,
                    program: qasm3_ast.Program) -> QasmError:
    name = call.name.name
    span = call.span
    error = QasmError(label, f"gate '{name}' is not defined.", span.start_line if span else None,
                      span.start_column + 1 if span else None)
    if any(isinstance(node, qasm3_ast.SubroutineDefinition) and node.name.name == name
           for node in program.statements):
        return QasmError(label, f"{error.reason} '{name}' is a subroutine (def): call it as "
                         f"{name}(...), not as a gate", error.line, error.column)
    return _with_hint(error, source, 3)


def _ast_gate_names(program: qasm3_ast.Program) -> set[str]:
    """The gates a program may call: built in, included, defined or calibrated in it."""
    names = {"U", "gphase"}
    for node in _ast_nodes(program):
        if isinstance(node, qasm3_ast.Include) and node.filename == "stdgates.inc":
            names |= set(_native.STDGATES)
        elif isinstance(node, qasm3_ast.QuantumGateDefinition | qasm3_ast.CalibrationDefinition):
            names.add(node.name.name)
    return names


def _ast_width(label: str, node: qasm3_ast.QASMNode, name: str,
               size: qasm3_ast.Expression | None, consts: dict[str, int | None]) -> int:
    if size is None:
        return 1
    value = _ast_int(size, consts)
    if value is None or value < 0:
        span = node.span
        raise QasmError(label, f"the width of {name!r} is not a constant integer the daemon "
                        f"can evaluate ({type(size).__name__}), so the width of the counts "
                        "is unknown", span.start_line if span else None,
                        span.start_column + 1 if span else None)
    return value


def _ast_int(node: qasm3_ast.Expression | None, consts: dict[str, int | None]) -> int | None:
    """The value of an integer constant expression, or None."""
    if isinstance(node, qasm3_ast.IntegerLiteral):
        return node.value
    if isinstance(node, qasm3_ast.Identifier):
        return consts.get(node.name)
    if isinstance(node, qasm3_ast.UnaryExpression) and node.op.name == "-":
        value = _ast_int(node.expression, consts)
        return None if value is None else -value
    if isinstance(node, qasm3_ast.BinaryExpression) and node.op.name in _INT_OPERATORS:
        left, right = _ast_int(node.lhs, consts), _ast_int(node.rhs, consts)
        if left is None or right is None:
            return None
        # the declarations scan's evaluator: the same precedence, bounds and division
        return _declarations.evaluate(f"({left}) {node.op.name} ({right})", {})
    return None


_INT_OPERATORS = frozenset({"+", "-", "*", "/", "%", "**"})


def _ast_nodes(root: qasm3_ast.QASMNode) -> Iterator[qasm3_ast.QASMNode]:
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, qasm3_ast.QASMNode):
            yield node
            stack.extend(getattr(node, name) for name in node.__dataclass_fields__
                         if name != "span")
