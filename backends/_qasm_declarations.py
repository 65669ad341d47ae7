"""A cheap scan of a circuit's declarations, before any parser builds anything.

``qubit[100000000] q;`` costs one regular-expression match here; given to Qiskit, it
allocates until the kernel's OOM killer steps in. So every source is scanned first: its
version, how many qubits and classical bits it declares, and how many statements it has
(an operation count can only be larger than that... or, for a broadcast like ``h q;``,
at most the register's width times larger). A circuit over a limit is refused here,
named, with the line of the declaration that crosses it.

The scan errs on the side of counting too much: comments and string literals are
blanked out, but declarations inside blocks and hardware qubits (``$7``: eight qubits)
count, and only a subroutine's or extern's parameters (after ``(`` or ``,``) do not.
A width that is not an integer it can evaluate (a literal, or arithmetic on literals
and ``const`` integers declared before it) is unknown; see :func:`scan`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Declarations", "Width", "position", "scan"]

#: comments and string literals, replaced by spaces (newlines kept) before scanning
_BLANKED = re.compile(r"//[^\n]*|/\*.*?(?:\*/|\Z)|\"[^\"\n]*\"", re.DOTALL)
_LEADING = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_HEADER = re.compile(r"OPENQASM\s+(?P<version>[0-9]+(?:\.[0-9]+)?)")
_NAME = r"[^\W\d]\w*"
#: OpenQASM 3 (and its legacy qreg/creg forms); one preceded by "(" or "," is a parameter
_DECLARATION_3 = re.compile(
    rf"\b(?:(?P<kind>qubit|bit)(?:\s*\[(?P<size>[^\]]*)\]\s*|\s+)(?P<name>{_NAME})"
    rf"|(?P<legacy>qreg|creg)\s+(?P<legacy_name>{_NAME})\s*(?:\[(?P<legacy_size>[^\]]*)\])?)")
_DECLARATION_2 = re.compile(r"\b(?P<legacy>qreg|creg)\s+(?P<legacy_name>\w+)\s*"
                            r"\[\s*(?P<legacy_size>[^\]]*)\]")
_HARDWARE_QUBIT = re.compile(r"\$(\d+)")
_CONST = re.compile(rf"\bconst\s+u?int\s*(?:\[[^\]]*\])?\s*(?P<name>{_NAME})\s*=\s*"
                    r"(?P<value>[^;]*);")
_INT_TOKEN = re.compile(r"\s*(?:(?P<number>0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|"
                        r"[0-9][0-9_]*)(?![\w.])|(?P<name>[^\W\d]\w*)|(?P<op>\*\*|[-+*/%()]))")
#: arithmetic on widths stops here: no program needs a register wider than this
_HUGE = 2**63


@dataclass(frozen=True, slots=True)
class Width:
    """One register declaration: what it declares and where."""

    kind: str  # "qubits" or "classical bits"
    name: str
    #: None: not an integer the scan can evaluate
    size: int | None
    text: str
    #: where the declaration starts in the source (see :func:`position`)
    offset: int


@dataclass(frozen=True, slots=True)
class Declarations:
    """What a source declares, as far as a scan can tell without parsing it."""

    #: 2 or 3 (3 without a version line, or for a malformed one: the v3 parser says why)
    version: int
    #: the source has no ``OPENQASM`` line
    headerless: bool
    #: the version's text and its offset, when there is a version line
    version_text: str | None
    version_at: int | None
    registers: tuple[Width, ...]
    #: the highest hardware qubit used plus one, and its offset (0, None: none)
    hardware_qubits: int
    hardware_at: int | None
    #: statements (semicolons outside comments and strings)
    statements: int

    def total(self, kind: str) -> int | None:
        """Declared qubits or classical bits; None if a width is unknown."""
        sizes = [w.size for w in self.registers if w.kind == kind]
        if any(size is None for size in sizes):
            return None
        total = sum(size for size in sizes if size is not None)
        return max(total, self.hardware_qubits) if kind == "qubits" else total

    def crossing(self, kind: str, limit: int) -> Width | None:
        """The declaration whose width takes the running total of ``kind`` over ``limit``."""
        running = 0
        for width in self.registers:
            if width.kind == kind and width.size is not None:
                running += width.size
                if running > limit:
                    return width
        return None


def scan(source: str) -> Declarations:
    """The declarations of ``source``; never raises, whatever the text."""
    start = _LEADING.match(source)
    assert start is not None  # the pattern matches the empty string
    header = _HEADER.match(source, start.end())
    version, version_text, version_at = 3, None, None
    if header is not None:
        version_text = header["version"]
        version_at = header.start("version")
        if version_text.split(".")[0] == "2":
            version = 2
    text = _BLANKED.sub(_blank, source)
    consts: dict[str, int | None] = {}
    if version == 3 and "const" in text:
        for const in _CONST.finditer(text):
            consts[const["name"]] = evaluate(const["value"], consts)
    registers = []
    pattern = _DECLARATION_2 if version == 2 else _DECLARATION_3
    for match in _candidates(pattern, text):
        if version == 3 and _after_separator(text, match.start()):
            continue  # a parameter: declares nothing
        legacy = match["legacy"]
        kind_word = legacy or match["kind"]
        kind = "qubits" if kind_word in ("qubit", "qreg") else "classical bits"
        size_text = match["legacy_size"] if legacy else match["size"]
        name = match["legacy_name"] if legacy else match["name"]
        size = 1 if size_text is None else evaluate(size_text, consts)
        registers.append(Width(kind, name, size, (size_text or "1").strip(),
                               match.start("legacy" if legacy else "kind")))
    hardware, hardware_at = 0, None
    for match in _HARDWARE_QUBIT.finditer(text):
        index = int(match[1])
        if index + 1 > hardware:
            hardware, hardware_at = index + 1, match.start()
    return Declarations(version=version, headerless=header is None, version_text=version_text,
                        version_at=version_at, registers=tuple(registers),
                        hardware_qubits=hardware, hardware_at=hardware_at,
                        statements=text.count(";"))


def _candidates(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    """``pattern``'s matches, tried only where "bit" or "reg" occurs: str.find is far
    quicker than a regular expression tried at every position of a long program."""
    starts = set()
    at = text.find("bit")
    while at != -1:
        starts.add(at - 2 if at >= 2 and text[at - 2:at] == "qu" else at)
        at = text.find("bit", at + 3)
    at = text.find("reg")
    while at != -1:
        if at >= 1 and text[at - 1] in "qc":
            starts.add(at - 1)
        at = text.find("reg", at + 3)
    matches = []
    for start in sorted(starts):
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue  # inside a longer name
        match = pattern.match(text, start)
        if match is not None:
            matches.append(match)
    return matches


def _after_separator(text: str, offset: int) -> bool:
    """Whether the first character before ``offset`` that is not a space is ( or ,."""
    at = offset - 1
    while at >= 0 and text[at].isspace():
        at -= 1
    return at >= 0 and text[at] in "(,"


def position(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset``."""
    line_start = source.rfind("\n", 0, offset) + 1
    return source.count("\n", 0, offset) + 1, offset - line_start + 1


def evaluate(text: str, consts: dict[str, int | None]) -> int | None:
    """An integer expression of literals and known constants; None if it is anything else."""
    tokens = []
    at = 0
    text = text.strip()
    while at < len(text):
        token = _INT_TOKEN.match(text, at)
        if token is None or token.end() == at:
            return None
        at = token.end()
        if token["number"] is not None:
            tokens.append(int(token["number"].replace("_", ""), 0))
        elif token["name"] is not None:
            value = consts.get(token["name"])
            if value is None:
                return None
            tokens.append(value)
        else:
            tokens.append(token["op"])
    if not tokens:
        return None
    try:
        value, rest = _sum(tokens)
    except (ValueError, ZeroDivisionError, IndexError):
        return None
    return value if not rest else None


def _blank(match: re.Match[str]) -> str:
    return re.sub(r"[^\n]", " ", match[0])


# Precedence as in OpenQASM 3: ** over unary minus over * / % over + -.

def _sum(tokens: list[int | str]) -> tuple[int, list[int | str]]:
    value, tokens = _product(tokens)
    while tokens and tokens[0] in ("+", "-"):
        op, (right, tokens) = tokens[0], _product(tokens[1:])
        value = _bounded(value + right if op == "+" else value - right)
    return value, tokens


def _product(tokens: list[int | str]) -> tuple[int, list[int | str]]:
    value, tokens = _unary(tokens)
    while tokens and tokens[0] in ("*", "/", "%"):
        op, (right, tokens) = tokens[0], _unary(tokens[1:])
        if op == "*":
            value = _bounded(value * right)
        elif op == "/":
            value = int(value / right)  # integer division truncates toward zero
        else:
            value = value - right * int(value / right)
    return value, tokens


def _unary(tokens: list[int | str]) -> tuple[int, list[int | str]]:
    if tokens and tokens[0] in ("-", "+"):
        value, rest = _unary(tokens[1:])
        return (-value if tokens[0] == "-" else value), rest
    return _power(tokens)


def _power(tokens: list[int | str]) -> tuple[int, list[int | str]]:
    base, tokens = _atom(tokens)
    if tokens and tokens[0] == "**":
        exponent, tokens = _unary(tokens[1:])
        if exponent < 0 or (abs(base) > 1 and exponent > 64):
            raise ValueError("out of range")
        base = _bounded(base**exponent)
    return base, tokens


def _atom(tokens: list[int | str]) -> tuple[int, list[int | str]]:
    head = tokens[0]
    if head == "(":
        value, rest = _sum(tokens[1:])
        if not rest or rest[0] != ")":
            raise ValueError("unbalanced")
        return value, rest[1:]
    if isinstance(head, str):
        raise ValueError(f"unexpected {head}")
    return head, tokens[1:]


def _bounded(value: int) -> int:
    if abs(value) > _HUGE:
        raise ValueError("out of range")
    return value
