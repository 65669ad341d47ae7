"""A request body read as JSON without letting a hostile one do harm.

``json.loads`` alone has three faults for an API: it recurses once per nesting level (a
body nested 100,000 deep raises ``RecursionError`` after building 1,000 levels), it
keeps the last of duplicate keys silently (``{"a": X, "a": Y}`` loses X), and it takes
UTF-16 and UTF-32 as well as UTF-8. :func:`loads` checks the nesting depth with a
vectorised scan of the raw bytes *before* the parser sees them, refuses any body that is
not UTF-8 text, and refuses a duplicate key in any object, naming the key and where it is
(``circuits."a"``). Each fault is a :class:`BodyError` carrying an error code, a message
and details for the API's error answer.

The scan costs a fraction of the parse (about a fifth for an 8.5 MB batch of circuits;
``bench/hostile_requests.py`` prints both).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from qjobd.errors import QjobdError

__all__ = ["BodyError", "Shape", "loads", "nesting_depth", "scan"]

_QUOTE, _BACKSLASH = 0x22, 0x5C
#: bytes.translate: ``{`` and ``}`` as ``[`` and ``]``; the bytes that are not structure
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{},:")
_CHUNK = 1 << 20
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: the longest key or label an error message repeats
_SHOWN = 100


class BodyError(QjobdError):
    """The body cannot be taken as a JSON request (HTTP 400)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


@dataclass(frozen=True, slots=True)
class Shape:
    """What :func:`scan` finds outside a body's strings."""

    #: how deep ``[``/``{`` nest; exact up to the scan's limit, else some number above it
    depth: int
    #: keys, values and containers: one plus the commas, colons and opening brackets
    values: int


def loads(raw: bytes, *, max_depth: int, max_values: int | None = None) -> Any:
    """Parse ``raw`` (UTF-8 JSON) into Python values; raise :class:`BodyError` if it is not
    JSON, is nested deeper than ``max_depth`` arrays/objects, holds more than
    ``max_values`` keys and values (so that what the parser builds stays bounded), or
    repeats a key in an object."""
    shape = scan(raw, max_depth)
    if shape.depth > max_depth:
        raise BodyError("too_deep", f"the body nests arrays and objects more than {max_depth} "
                        f"deep (limit: [daemon] max_json_depth = {max_depth})",
                        {"limit": max_depth, "setting": "max_json_depth"})
    if max_values is not None and shape.values > max_values:
        raise BodyError("too_many_values", f"the body holds {shape.values:,} JSON keys and "
                        f"values; the limit is {max_values:,} ([daemon] max_json_values, "
                        "beyond two for each circuit and tag the limits allow)",
                        {"limit": max_values, "setting": "max_json_values"})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("malformed_json", f"the body is not UTF-8 text (byte {exc.start}): "
                        "send JSON as UTF-8") from None
    duplicates: list[bool] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        duplicates.append(True)
        return _Repeated(obj, _first_repeated(pairs))

    try:
        value = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BodyError("malformed_json", f"the body is not valid JSON: {exc}",
                        {"line": exc.lineno, "column": exc.colno}) from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise BodyError("malformed_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # the scan makes this unreachable; never a 500 all the same
        raise BodyError("too_deep", f"the body nests arrays and objects more than {max_depth} "
                        "deep", {"limit": max_depth, "setting": "max_json_depth"}) from None
    finally:
        del text
    if duplicates:
        path, key = _find_repeated(value)
        shown = _shorten(key)
        raise BodyError("duplicate_key", f"duplicate key {json.dumps(shown)} at {path}: a key "
                        "may appear only once in an object (JSON parsers keep the last one, "
                        "which would silently drop the others)",
                        {"key": shown, "path": path})
    return value


def _no_constant(name: str) -> Any:
    raise BodyError("malformed_json", f"the body is not valid JSON: {name} is not a JSON "
                    "value (JSON numbers are finite)")


def nesting_depth(raw: bytes, limit: int) -> int:
    """How deep ``[``/``{`` nest outside strings in ``raw`` (see :func:`scan`)."""
    return scan(raw, limit).depth


def scan(raw: bytes, limit: int) -> Shape:
    """The nesting depth and the number of values of ``raw`` (UTF-8 JSON), from its bytes
    alone: vectorised, no Python object per value, memory a small multiple of the body.

    Exact for valid JSON (the depth up to ``limit``; past it, some number above it). For
    invalid JSON it never says less than what ``json.loads`` would meet before finding
    the fault, so a limit the scan passes is one the parser keeps to.
    """
    structure = _structure(raw)
    if structure is None:
        # a quote after a run of two or more backslashes: drop the escaped backslashes
        # (pairs, left to right, as JSON reads them) and look again; now every quote
        # after a backslash is escaped
        structure = _structure(raw.replace(b"\\\\", b""))
        assert structure is not None
    brackets = structure.translate(_AS_BRACKETS, b",:")
    opening = brackets.count(b"[")
    values = 1 + opening + (len(structure) - len(brackets))
    return Shape(_depth(brackets, limit), values)


def _structure(raw: bytes) -> bytes | None:
    """The bytes ``[]{},:`` found outside strings, in order; None if some quote follows
    two or more backslashes (then whether it is escaped takes counting them). An
    unterminated last string runs to the end (the parser stops there).

    A chunk of the body at a time, so that the arrays of positions stay a bounded size
    whatever the body holds: the quotes that open and close strings, then the stretches
    between them gathered in one step.
    """
    a = np.frombuffer(raw, dtype=np.uint8)
    parts, inside = [], False
    for start in range(0, a.size, _CHUNK):
        chunk = a[start:start + _CHUNK]
        quotes = np.flatnonzero(chunk == _QUOTE).astype(np.int64) + start
        if quotes.size:
            before = a[np.maximum(quotes - 1, 0)] == _BACKSLASH
            before &= quotes > 0
            if before.any():
                escaped = quotes[before]
                if np.any((escaped >= 2) & (a[np.maximum(escaped - 2, 0)] == _BACKSLASH)):
                    return None
                quotes = quotes[~before]
        # the stretches outside strings: up to each opening quote, from after each closing
        # (the chunk may begin inside a string)
        end = start + chunk.size
        closing, opening = (quotes[0::2], quotes[1::2]) if inside else \
            (quotes[1::2], quotes[0::2])
        starts = closing + 1 if inside else np.concatenate(([start], closing + 1))
        ends = np.concatenate((opening, [end]))[:starts.size]
        inside ^= bool(quotes.size & 1)
        lengths = ends - starts
        keep = lengths > 0
        starts, lengths = starts[keep] - start, lengths[keep]
        if starts.size == 0:
            continue
        # every position of every stretch, as one index: ones, with a jump at each start
        offsets = np.cumsum(lengths)
        steps = np.ones(int(offsets[-1]), dtype=np.int64)
        steps[0] = starts[0]
        steps[offsets[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
        parts.append(chunk[np.cumsum(steps)].tobytes().translate(None, _NOT_STRUCTURE))
    return b"".join(parts)


def _depth(brackets: bytes, limit: int) -> int:
    """The highest running count of opening minus closing brackets (or, once it is past
    ``limit``, the first count that is)."""
    if b"[" not in brackets:
        return 0
    v = np.frombuffer(brackets, dtype=np.uint8)
    level, deepest = 0, 0
    for start in range(0, v.size, _CHUNK):
        steps = (v[start:start + _CHUNK] == 0x5B).view(np.int8) * np.int8(2) - np.int8(1)
        running = np.cumsum(steps, dtype=np.int32)
        deepest = max(deepest, level + int(running.max()))
        if deepest > limit:
            return deepest
        level += int(running[-1])
    return deepest


class _Repeated(dict[str, Any]):
    """An object in which a key appeared more than once (never leaves this module)."""

    def __init__(self, obj: dict[str, Any], key: str) -> None:
        super().__init__(obj)
        self.repeated = key


def _first_repeated(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no repeated key")


def _find_repeated(value: Any) -> tuple[str, str]:
    """The path (``circuits."a"``) and key of the first object, in document order, that
    repeats a key."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, where = stack.pop()
        if isinstance(node, _Repeated):
            return _path(where, node.repeated), node.repeated
        if isinstance(node, dict):
            stack.extend((v, (*where, k)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(node))))
    raise AssertionError("no object repeats a key")


def _path(where: tuple[str | int, ...], key: str) -> str:
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if _BARE_KEY.fullmatch(part) and len(part) <= _SHOWN else json.dumps(
                _shorten(part))
            out += f".{shown}" if out else shown
    last = json.dumps(_shorten(key))
    return f"{out}.{last}" if out else last


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
