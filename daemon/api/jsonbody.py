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
from typing import Any

import numpy as np

from qjobd.errors import QjobdError

__all__ = ["BodyError", "loads", "nesting_depth"]

_QUOTE, _BACKSLASH = 0x22, 0x5C
#: bytes.translate: ``{`` and ``}`` as ``[`` and ``]``; everything else deleted
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: above this many strings the outside-of-strings bytes are found with numpy, not slices
_SLICES_UP_TO = 4096
_CHUNK = 1 << 20
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: the longest key or label an error message repeats
_SHOWN = 100


class BodyError(QjobdError):
    """The body cannot be taken as a JSON request (HTTP 400)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def loads(raw: bytes, *, max_depth: int) -> Any:
    """Parse ``raw`` (UTF-8 JSON) into Python values; raise :class:`BodyError` if it is not
    JSON, is nested deeper than ``max_depth`` arrays/objects, or repeats a key in an object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("malformed_json", f"the body is not UTF-8 text (byte {exc.start}): "
                        "send JSON as UTF-8") from None
    depth = nesting_depth(raw, max_depth)
    if depth > max_depth:
        raise BodyError("too_deep", f"the body nests arrays and objects more than {max_depth} "
                        f"deep (limit: [daemon] max_json_depth = {max_depth})",
                        {"limit": max_depth, "setting": "max_json_depth"})
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
    """How deep ``[``/``{`` nest outside strings in ``raw`` (UTF-8), or a number above
    ``limit`` as soon as it is clear the depth exceeds it.

    Exact for valid JSON. For invalid JSON it never says less than what ``json.loads``
    would recurse through before finding the fault, so a ``limit`` it passes is one the
    parser keeps to.
    """
    a = np.frombuffer(raw, dtype=np.uint8)
    quotes = _string_quotes(a)
    if quotes is None:
        # a quote after a run of two or more backslashes: drop the escaped backslashes
        # (pairs, left to right, as JSON reads them) and look again; now every quote
        # after a backslash is escaped
        raw = raw.replace(b"\\\\", b"")
        a = np.frombuffer(raw, dtype=np.uint8)
        quotes = _string_quotes(a)
        assert quotes is not None
    return _depth(_brackets_outside(raw, a, quotes), limit)


def _string_quotes(a: np.ndarray) -> np.ndarray | None:
    """Positions of the quotes that open and close strings; None if some quote follows
    two or more backslashes (then whether it is escaped takes counting them)."""
    quote = a == _QUOTE
    quotes = np.flatnonzero(quote)
    if quotes.size == 0:
        return quotes
    if quotes.size * 64 < a.size:  # few quotes: look at the byte before each
        before = a[np.maximum(quotes - 1, 0)] == _BACKSLASH
        before[0] &= quotes[0] > 0
        escaped = quotes[before]
    else:
        escaped = np.flatnonzero(quote[1:] & (a[:-1] == _BACKSLASH)) + 1
    if escaped.size == 0:
        return quotes
    if np.any((escaped >= 2) & (a[np.maximum(escaped - 2, 0)] == _BACKSLASH)):
        return None
    quote[escaped] = False
    return np.flatnonzero(quote)


def _brackets_outside(raw: bytes, a: np.ndarray, quotes: np.ndarray) -> bytes:
    """The brackets outside strings, in order, ``{}`` spelled ``[]``. An unterminated last
    string runs to the end (the parser stops there)."""
    opens, closes = quotes[0::2], quotes[1::2]
    if opens.size <= _SLICES_UP_TO:
        starts = [0, *(int(c) + 1 for c in closes)]
        # an unterminated string's opening quote ends the last segment
        ends = [*(int(o) for o in opens), len(raw)][:len(starts)]
        outside = b"".join(raw[s:e] for s, e in zip(starts, ends, strict=True))
        return outside.translate(_AS_BRACKETS, _NOT_BRACKETS)
    marked = (a == 0x5B) | (a == 0x5D) | (a == 0x7B) | (a == 0x7D)
    positions = np.flatnonzero(marked)
    if positions.size * 8 < quotes.size:
        # few brackets among many strings: a bracket is inside a string iff an odd
        # number of quotes come before it
        inside = (np.searchsorted(quotes, positions) & 1).astype(bool)
        return a[positions[~inside]].tobytes().translate(_AS_BRACKETS)
    del positions
    marked[quotes] = True
    kinds = a[np.flatnonzero(marked)]
    del marked
    # a bracket is inside a string iff an odd number of quotes come before it (an
    # escaped quote was never marked)
    quote = kinds == _QUOTE
    inside = np.cumsum(quote, dtype=np.uint8) & 1
    return kinds[~quote & (inside == 0)].tobytes().translate(_AS_BRACKETS)


def _depth(brackets: bytes, limit: int) -> int:
    """The highest running count of opening minus closing brackets (or, once it is past
    ``limit``, the first count that is)."""
    if b"[" not in brackets:
        return 0
    v = np.frombuffer(brackets, dtype=np.uint8)
    level, deepest = 0, 0
    for start in range(0, v.size, _CHUNK):
        steps = np.where(v[start:start + _CHUNK] == 0x5B, 1, -1).astype(np.int32)
        running = np.cumsum(steps, dtype=np.int64) + level
        deepest = max(deepest, int(running.max()))
        if deepest > limit:
            return deepest
        level = int(running[-1])
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
