"""Parse, validate and convert OpenQASM 2 and 3 circuits.

Runs for every circuit at submission, so a user's mistake is reported with its label,
line and column before anything is stored, and again inside the local simulator's
worker processes (:func:`load_circuit`). Lines and columns are 1-based throughout.

OpenQASM 2 goes through Qiskit's Rust parser. OpenQASM 3 goes through the reference
ANTLR grammar (``openqasm3``) driven here rather than through ``openqasm3.parse``,
because that one bails out of syntax errors without saying where they are; the AST
is then converted by ``qiskit_qasm3_import``.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
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

from qjobd.errors import QjobdError

__all__ = ["ParsedCircuit", "QasmError", "convert", "load_circuit", "parse_circuit"]

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "line": self.line,
            "column": self.column,
            "reason": self.reason,
        }


def parse_circuit(label: str, source: str) -> ParsedCircuit:
    """Parse and validate one circuit; raise :class:`QasmError` saying where and why not."""
    try:
        version, num_qubits, num_clbits = _facts(source)
    except QasmError as exc:
        raise QasmError(label, exc.reason, exc.line, exc.column) from None
    return ParsedCircuit(label, source, version, num_qubits, num_clbits)


def load_circuit(label: str, source: str) -> QuantumCircuit:
    """The validated Qiskit circuit of a source that :func:`parse_circuit` accepts."""
    return _load(label, source)[1]


def convert(circuit: ParsedCircuit, versions: frozenset[int]) -> str:
    """Source in one of `versions`.

    The user's own text when its version is accepted, else converted with
    ``qiskit.qasm2.dumps`` / ``qiskit.qasm3.dumps``. Raises :class:`QasmError` when the
    circuit cannot be expressed in any accepted version (e.g. OpenQASM 3 classical
    control flow has no OpenQASM 2 form).
    """
    if circuit.qasm_version in versions:
        return circuit.source
    # Newest first: OpenQASM 3 can express everything 2 can.
    targets = sorted((v for v in versions if v in (2, 3)), reverse=True)
    if not targets:
        wanted = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise QasmError(
            circuit.label, f"the backend accepts no OpenQASM version we emit ({wanted})"
        )
    quantum_circuit = load_circuit(circuit.label, circuit.source)
    reasons = []
    for version in targets:
        try:
            if version == 3:
                return qiskit.qasm3.dumps(quantum_circuit)
            return qiskit.qasm2.dumps(quantum_circuit)
        except (qiskit.qasm2.QASM2ExportError, qiskit.qasm3.QASM3ExporterError) as exc:
            reasons.append(f"OpenQASM {version}: {exc.message}")
    raise QasmError(
        circuit.label,
        "the circuit cannot be expressed in an OpenQASM version the backend accepts ("
        + "; ".join(reasons)
        + ")",
    )


@functools.lru_cache(maxsize=1024)
def _facts(source: str) -> tuple[int, int, int]:
    # The same source is parsed at validation, again when its job is submitted, and
    # again by the backend; an OpenQASM 3 parse costs about 2 ms (the ANTLR runtime).
    template = sweep_template(source)
    if template is not None:
        known = _SWEEPS.get(template)
        if known is not None:
            return known
    version, circuit = _load("", source)
    facts = (version, circuit.num_qubits, circuit.num_clbits)
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
        self._items: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, template: str) -> tuple[int, int, int] | None:
        with self._lock:
            facts = self._items.get(template)
            if facts is not None:
                self._items.move_to_end(template)
            return facts

    def put(self, template: str, facts: tuple[int, int, int]) -> None:
        with self._lock:
            self._items[template] = facts
            self._items.move_to_end(template)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_SWEEPS = _Templates(4096)


# -- version detection ---------------------------------------------------------------

_LEADING = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_HEADER = re.compile(r"OPENQASM\s+(?P<version>[0-9]+(?:\.[0-9]+)?)")


def _detect_version(label: str, source: str) -> int:
    """2 or 3 from the header; a source without one is OpenQASM 3, where it is optional."""
    start = _LEADING.match(source)
    assert start is not None  # the pattern matches the empty string
    header = _HEADER.match(source, start.end())
    if header is None:
        # Also a malformed header ("OPENQASM;"): the v3 grammar reports where it breaks.
        return 3
    text = header["version"]
    major = int(text.split(".")[0])
    if major in (2, 3):
        return major
    line, column = _position(source, header.start("version"))
    raise QasmError(
        label, f"unsupported OpenQASM version {text}; expected 2.0 or 3.x", line, column
    )


def _position(source: str, offset: int) -> tuple[int, int]:
    line_start = source.rfind("\n", 0, offset) + 1
    return source.count("\n", 0, offset) + 1, offset - line_start + 1


# -- loading and validation ------------------------------------------------------------


def _load(label: str, source: str) -> tuple[int, QuantumCircuit]:
    if not source.strip():
        raise QasmError(label, "the source is empty")
    version = _detect_version(label, source)
    circuit = _load_qasm2(label, source) if version == 2 else _load_qasm3(label, source)
    _validate(label, circuit)
    return version, circuit


def _validate(label: str, circuit: QuantumCircuit) -> None:
    if circuit.num_qubits == 0:
        raise QasmError(label, "the circuit has no qubits")
    if circuit.num_clbits == 0 or not _measures(circuit):
        raise QasmError(label, NO_MEASUREMENT)
    if circuit.parameters:
        names = ", ".join(sorted(p.name for p in circuit.parameters))
        raise QasmError(label, f"the circuit has unbound parameters: {names}")


def _measures(circuit: QuantumCircuit) -> bool:
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
        raise _located_failure(label, program, exc) from None
    # openqasm3 puts a token's absolute offset where an identifier's column belongs; only
    # on this error path, fix the tokens and convert again to get a true column.
    _columns_as_offsets(tokens)
    try:
        qiskit_qasm3_import.convert(_visit(label, tree))
    except qiskit_qasm3_import.ConversionError as exc:
        raise _from_match(label, _CONVERSION_LOCATION, str(exc)) from None
    raise AssertionError("OpenQASM 3 conversion failed only once")  # pragma: no cover


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
