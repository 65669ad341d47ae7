"""qiskit's native (Rust) OpenQASM 3 importer, used where it agrees with the reference path.

``qiskit.qasm3.loads_experimental`` is about thirty times faster than the reference
grammar plus ``qiskit_qasm3_import``, but it takes a smaller language (no ``pi``, no
``U``, no ``reset``, no modifiers, no control flow, no gate definitions; its grammar
refuses ``OPENQASM 3;`` and ``if (c) x q;``), it reads any file an ``include`` names and
prints it in its errors, and it reports errors by printing caret diagrams (to stdout,
with this Qiskit; a panic's message to stderr) and raising a generic
``QASM3ImporterError`` (or a Rust panic). So here:

- it runs only in a process that called :func:`enable`: one of ours, with nothing else
  writing to its stdout or stderr (a parse or simulator worker), because file
  descriptors 1 and 2 are redirected into a file for the call and read back on failure;
- a source that includes anything but ``stdgates.inc`` never reaches it;
- before the call, two rewrites that cannot change the meaning: ``OPENQASM 3;`` becomes
  ``OPENQASM 3.0;`` and a gate argument that is a constant expression (``pi/2``,
  ``-2*π/3``) becomes the float the reference path computes for it, digit for digit;
- every refusal, whatever its cause, is :class:`Refused` with the first printed
  error's line, column and reason: the caller then asks the reference path, which
  accepts what the language allows and words today's errors.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import IO

import qiskit.qasm3
from qiskit.circuit import QuantumCircuit

from qjobd.errors import QjobdError

__all__ = ["STDGATES", "Refused", "disable", "enable", "enabled", "load"]

#: the file fd 2 is pointed at during a call, once enabled
_state: dict[str, IO[bytes]] = {}
#: where the importer prints: its caret diagrams on stdout, a panic's message on stderr
_PRINTED_TO = (1, 2)
#: the most of a failed call's printout kept (a parse error per statement adds up)
_MAX_PRINTOUT = 64 * 1024

_HEADER_INTEGER = re.compile(r"\A(?P<lead>(?:\s+|//[^\n]*|/\*.*?\*/)*OPENQASM\s+3)(?=\s*;)",
                             re.DOTALL)
_PRINTED = re.compile(r"^Error: (?P<reason>.*?)\s*\n\s*╭─\[[^\]]*?:(?P<line>\d+):(?P<column>\d+)\]",
                      re.MULTILINE)
_PANIC = re.compile(r"panicked at [^\n]*:\n(?P<reason>[^\n]*)")
#: stdgates.inc, whose calls' arguments may be folded
STDGATES = ("p x y z h s sdg t tdg sx rx ry rz cx cy cz cp crx cry crz ch swap ccx cswap cu CX "
          "phase cphase id u1 u2 u3").split()
#: a stdgates call's argument list (one level of parentheses inside)
_CALL = re.compile(r"(?<![\w.$])(?P<gate>" + "|".join(STDGATES) + r")(?!\w)\s*\("
                   r"(?P<args>(?:[^();{}]|\([^();{}]*\))*)\)")
#: a gate argument list that is plain float literals already
_PLAIN = re.compile(r"\s*-?(?:[0-9]+\.[0-9]*|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?\s*"
                    r"(?:,\s*-?(?:[0-9]+\.[0-9]*|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?\s*)*")
#: an argument list worth folding: a constant's name, * or /, or a binary + or -
_FOLDABLE = re.compile(r"\([^();]*?(?:\b(?:pi|tau|euler)\b|[πτ*/]|[\w.)]\s*(?<![0-9.][eE])[-+])")
#: a register named like a constant would change what the constant means
_SHADOWED = re.compile(r"\b(?:qubit|bit|qreg|creg)\b[^;]*?(?<!\w)(?:pi|tau|euler|π|τ)(?!\w)")
_CONSTANTS = {"pi": math.pi, "π": math.pi, "tau": math.tau, "τ": math.tau, "euler": math.e}
_TOKEN = re.compile(r"\s*(?:(?P<float>(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE]"
                    r"[-+]?[0-9]+)(?![\w.])|(?P<int>[0-9]+)(?![\w.])|(?P<name>[^\W\d]\w*)"
                    r"|(?P<op>[-+*/()]))")


class Refused(QjobdError):
    """The native importer did not take the source (why, and where when it said)."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(reason, line, column)
        self.reason, self.line, self.column = reason, line, column


def enable() -> None:
    """Use the native importer in this process; only where fd 2 may be redirected."""
    if _state:
        return
    # a panic's backtrace is long and costs time to format; the message is enough
    os.environ["RUST_BACKTRACE"] = "0"
    _state["capture"] = tempfile.TemporaryFile(prefix="qjobd-native-")


def disable() -> None:
    """Stop using the native importer in this process (tests compare both paths)."""
    capture = _state.pop("capture", None)
    if capture is not None:
        capture.close()


def enabled() -> bool:
    return bool(_state)


def load(source: str) -> QuantumCircuit:
    """The circuit of ``source``; :class:`Refused` whenever the native importer says no."""
    if not _state:
        raise Refused("the native importer is not enabled in this process")
    prepared = _prepared(source)
    if prepared is None:
        raise Refused("outside the subset the native importer is used for")
    return _call(prepared)


#: the last source prepared and what it became (load, then to_qasm2, see the same text)
_last: list[tuple[str, str | None]] = []


def _prepared(source: str) -> str | None:
    """The source rewritten, comments blanked, if in the subset; else None."""
    if _last and _last[0][0] is source:
        return _last[0][1]
    blanked = _COMMENTS.sub(_blank, source) if "/" in source else source
    if _SUBSET.fullmatch(blanked):
        prepared: str | None = blanked  # float arguments already: nothing to rewrite
    else:
        rewritten = _COMMENTS.sub(_blank, _rewritten(source))
        prepared = rewritten if rewritten != blanked and _SUBSET.fullmatch(rewritten) else None
    _last[:] = [(source, prepared)]
    return prepared


# The subset of OpenQASM 3 the native importer is used for, as one regular expression of
# statements: a version line, the stdgates.inc include, qubit and bit declarations with
# literal widths, stdgates gate calls with float literal arguments on (indexed)
# registers, measurements assigned to (indexed) bits, and barriers. Its syntax is checked
# here; its meaning (names, arities, indices) by the importer. The native importer's own
# grammar is looser than the language: it takes "1.0x84" as an argument, an empty
# statement, a second version line; outside this subset the reference path decides.
_KEYWORDS = ("OPENQASM include defcalgrammar def cal defcal gate extern box let break continue "
             "if else end return for while in switch case default nop input output const "
             "readonly mutable qreg qubit creg bool bit int uint float angle complex array void "
             "duration stretch gphase inv pow ctrl negctrl dim durationof delay reset measure "
             "barrier true false pi tau euler sizeof").split()
_ID = r"(?!(?:" + "|".join(_KEYWORDS) + r")(?![\w]))[A-Za-z_][A-Za-z0-9_]*"
_OPERAND = rf"{_ID}(?:\s*\[\s*[0-9]+\s*\])?"
# (no ".5": the importer's grammar refuses it; the rewrite makes it 0.5)
_FLOAT = r"-?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)(?![\w.])"
_STATEMENT = "|".join((
    r'include\s*"stdgates\.inc"',
    rf"(?:qubit|bit)\s*(?:\[\s*[0-9]+\s*\]\s*|\s){_ID}",
    rf"(?:{'|'.join(STDGATES)})(?!\w)\s*(?:\(\s*{_FLOAT}(?:\s*,\s*{_FLOAT})*\s*\))?\s*"
    rf"{_OPERAND}(?:\s*,\s*{_OPERAND})*",
    rf"{_OPERAND}\s*=\s*measure\s+{_OPERAND}",
    rf"barrier\s+{_OPERAND}(?:\s*,\s*{_OPERAND})*",
))
# possessive and atomic: a statement matches one way or not at all, so no backtracking
_SUBSET = re.compile(rf"\s*(?:OPENQASM\s+3(?:\.[0-9]+)?\s*;)?(?:\s*(?>{_STATEMENT})\s*;)*+\s*")
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


def _blank(match: re.Match[str]) -> str:
    # newlines kept: the importer's line numbers stay the source's
    return re.sub(r"[^\n]", " ", match[0])


# -- the subset, as OpenQASM 2 -------------------------------------------------------------
#
# Every program of the subset has an OpenQASM 2 form, written statement by statement:
# qelib1.inc has each stdgates.inc gate under the same name and meaning (CX, phase and
# cphase under cx, p and cp), registers become qreg/creg (a single qubit or bit, a
# register of one: a gate on it, or a measurement, is the same operation), and a
# measurement's assignment becomes its arrow. A name OpenQASM 2 cannot take (an upper
# case first letter, an underscore, a keyword or gate of OpenQASM 2) leaves the
# conversion to Qiskit's exporter.

_V2_NAMES = {"CX": "cx", "phase": "p", "cphase": "cp"}
_V2_RESERVED = frozenset("""OPENQASM include qreg creg gate opaque barrier measure reset if pi
    U CX u3 u2 u1 cx id u0 u p x y z h s sdg t tdg rx ry rz sx sxdg cz cy swap ch ccx cswap
    crx cry crz cu1 cp cu3 csx cu rxx rzz rccx rc3x c3x c3sqrtx c4x""".split())
_V2_HEADER = re.compile(r"\A(\s*)OPENQASM\s+3(?:\.[0-9]+)?\s*;")
#: one statement (without its ";"), found by its keyword
_V2_DECLARATION = re.compile(r"\s*(qubit|bit)\s*(?:\[\s*([0-9]+)\s*\]\s*|\s)(\w+)\s*")
_V2_MEASURE = re.compile(r"(\s*)(.*?)\s*=\s*measure\s+(.*?)\s*", re.DOTALL)
_V2_RENAMED = re.compile(r"(?<![\w.$])(CX|phase|cphase)(?!\w)")
_V2_NAME = re.compile(r"[a-z][A-Za-z0-9_]*")


def to_qasm2(source: str) -> str | None:
    """``source``'s OpenQASM 2 form, if it is in the subset (None: ask Qiskit's exporter).

    The subset's statements are rewritten in place (the text is a gate call unless a
    declaration, a measurement or the two header lines), so a circuit of thousands of
    gates costs a few regular-expression passes.
    """
    rewritten = _prepared(source)
    if rewritten is None:
        return None
    text = _V2_HEADER.sub(r"\1", rewritten, count=1)
    text = text.replace('include "stdgates.inc"', 'include "qelib1.inc"')
    names: list[str] = []
    text = _each_statement_with(text, "bit", lambda s: _v2_declaration(s, names))
    if any(name in _V2_RESERVED or not _V2_NAME.fullmatch(name) for name in names):
        return None
    text = _each_statement_with(text, "measure", _v2_measurement)
    if "CX" in text or "phase" in text:
        text = _V2_RENAMED.sub(lambda m: _V2_NAMES[m[1]], text)
    return "OPENQASM 2.0;\n" + text.strip() + "\n"


def _each_statement_with(text: str, word: str, rewrite: Callable[[str], str]) -> str:
    """``text`` with each statement that contains ``word`` passed through ``rewrite``.

    Found with str.find (declarations and measurements are few among thousands of gate
    calls); a statement is what lies between two semicolons (the subset has no others).
    """
    out, at = [], 0
    found = text.find(word)
    while found != -1:
        start = text.rfind(";", 0, found) + 1
        end = text.find(";", found)
        if end == -1:
            break
        if start >= at:
            out.append(text[at:start])
            out.append(rewrite(text[start:end]))
            at = end
        found = text.find(word, end)
    out.append(text[at:])
    return "".join(out)


def _v2_declaration(statement: str, names: list[str]) -> str:
    match = _V2_DECLARATION.fullmatch(statement)
    if match is None:  # "bit" inside a gate call's operand, e.g. a register "qbits"
        return statement
    names.append(match[3])
    register = "qreg" if match[1] == "qubit" else "creg"
    lead = statement[:len(statement) - len(statement.lstrip())]
    return f"{lead}{register} {match[3]}[{match[2] or 1}]"


def _v2_measurement(statement: str) -> str:
    match = _V2_MEASURE.fullmatch(statement)
    if match is None:
        return statement
    return f"{match[1]}measure {match[3]} -> {match[2]}"


def _rewritten(source: str) -> str:
    source = _HEADER_INTEGER.sub(r"\g<lead>.0", source, count=1)
    if _FOLDABLE.search(source) and not _SHADOWED.search(source):
        source = fold_arguments(source)
    return source


def _call(source: str) -> QuantumCircuit:
    capture = _state["capture"]
    sys.stdout.flush()
    sys.stderr.flush()
    capture.seek(0)
    capture.truncate()
    saved = [os.dup(fd) for fd in _PRINTED_TO]
    for fd in _PRINTED_TO:
        os.dup2(capture.fileno(), fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning, on every call
            return qiskit.qasm3.loads_experimental(source)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # QASM3ImporterError, and pyo3's PanicException
        failure: BaseException = exc
    finally:
        for fd, copy in zip(_PRINTED_TO, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
    capture.seek(0)
    raise _refusal(capture.read(_MAX_PRINTOUT).decode("utf-8", "replace"), failure)


def _refusal(printed: str, exc: BaseException) -> Refused:
    located = _PRINTED.search(printed)
    if located is not None:
        return Refused(located["reason"], int(located["line"]), int(located["column"]))
    panic = _PANIC.search(printed)
    if panic is not None:
        return Refused(f"panic: {panic['reason']}")
    message = str(getattr(exc, "message", exc)).strip("'\"")
    return Refused(message[:500])


# -- constant gate arguments -----------------------------------------------------------


def fold_arguments(source: str) -> str:
    """``source`` with each constant gate argument written as the float it denotes.

    The value is computed as ``qiskit_qasm3_import`` computes it: Python arithmetic in
    the order of OpenQASM's precedence, ``/`` between integers flooring. An argument that
    is anything else (a parameter, a function, ``**``) is left as it is.
    """
    return _CALL.sub(_folded_call, source)


def _folded_call(call: re.Match[str]) -> str:
    args = call["args"]
    if _PLAIN.fullmatch(args):
        return call[0]
    return f"{call['gate']}({','.join(_folded(arg) for arg in _split(args))})"


def _split(arguments: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(arguments):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(arguments[start:index])
            start = index + 1
    parts.append(arguments[start:])
    return parts


def _folded(argument: str) -> str:
    value = constant(argument)
    if value is None:
        return argument
    return repr(float(value))


def constant(text: str) -> float | int | None:
    """The value of a constant expression as the reference path computes it, else None."""
    tokens: list[float | int | str] = []
    at = 0
    text = text.strip()
    if not text or len(text) > 512:
        return None
    while at < len(text):
        token = _TOKEN.match(text, at)
        if token is None or token.end() == at:
            return None
        at = token.end()
        if token["float"] is not None:
            tokens.append(float(token["float"]))
        elif token["int"] is not None:
            tokens.append(int(token["int"]))
        elif token["name"] is not None:
            if token["name"] not in _CONSTANTS:
                return None
            tokens.append(_CONSTANTS[token["name"]])
        else:
            tokens.append(token["op"])
    try:
        value, rest = _sum(tokens)
    except (ValueError, ZeroDivisionError, IndexError, OverflowError):
        return None
    if rest or not math.isfinite(value):
        return None
    return value


def _sum(tokens: list[float | int | str]) -> tuple[float | int, list[float | int | str]]:
    value, tokens = _product(tokens)
    while tokens and tokens[0] in ("+", "-"):
        op = tokens[0]
        right, tokens = _product(tokens[1:])
        value = value + right if op == "+" else value - right
    return value, tokens


def _product(tokens: list[float | int | str]) -> tuple[float | int, list[float | int | str]]:
    value, tokens = _unary(tokens)
    while tokens and tokens[0] in ("*", "/"):
        op = tokens[0]
        right, tokens = _unary(tokens[1:])
        if op == "*":
            value = value * right
        elif isinstance(value, int) and isinstance(right, int):
            value = value // right  # the reference path's const int division
        else:
            value = value / right
    return value, tokens


def _unary(tokens: list[float | int | str]) -> tuple[float | int, list[float | int | str]]:
    if tokens and tokens[0] == "-":
        value, rest = _unary(tokens[1:])
        return -value, rest
    return _atom(tokens)


def _atom(tokens: list[float | int | str]) -> tuple[float | int, list[float | int | str]]:
    head = tokens[0]
    if head == "(":
        value, rest = _sum(tokens[1:])
        if not rest or rest[0] != ")":
            raise ValueError("unbalanced")
        return value, rest[1:]
    if isinstance(head, str):
        raise ValueError(f"unexpected {head}")
    return head, tokens[1:]
