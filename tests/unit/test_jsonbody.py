"""qjobd.daemon.api.jsonbody: the nesting scan against a byte-by-byte reference, the
duplicate-key paths, and the bodies json.loads alone mishandles."""

from __future__ import annotations

import json
import random
import time

import pytest

from qjobd.daemon.api import jsonbody
from qjobd.daemon.api.jsonbody import BodyError, loads, nesting_depth, scan


def reference_depth(raw: bytes) -> int:
    return reference(raw)[0]


def reference(raw: bytes) -> tuple[int, int]:
    """The deepest running count of [/{ minus ]/} outside strings, and one plus the
    [ { , : outside strings, one byte at a time."""
    depth = deepest = 0
    values = 1
    in_string = escaped = False
    for byte in raw:
        ch = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            values += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
        elif ch in ",:":
            values += 1
    return deepest, values


def random_value(rng: random.Random, depth: int) -> object:
    kind = rng.random()
    if depth <= 0 or kind < 0.3:
        return rng.choice([1, -2.5, True, None, random_text(rng)])
    if kind < 0.65:
        return [random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {random_text(rng): random_value(rng, depth - 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice('ab[]{}"\\\\ ,:\n\u00e9') for _ in range(rng.randrange(8)))


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_the_scan_agrees_with_the_reference_on_random_json(
        chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # small chunks: strings and escapes across every kind of chunk boundary
    monkeypatch.setattr(jsonbody, "_CHUNK", chunk)
    rng = random.Random(13)
    for _ in range(300 if chunk < 8 else 1500):
        raw = json.dumps(random_value(rng, rng.randrange(1, 9)),
                         ensure_ascii=rng.random() < 0.5).encode()
        shape = scan(raw, 10_000)
        assert (shape.depth, shape.values) == reference(raw), raw


def test_the_scan_agrees_with_the_reference_on_random_bytes() -> None:
    # not JSON; without backslashes the automaton is the same whatever the input
    rng = random.Random(7)
    for _ in range(3000):
        raw = bytes(rng.choice(b'[]{}"a,: ') for _ in range(rng.randrange(60)))
        shape = scan(raw, 10_000)
        assert (shape.depth, shape.values) == reference(raw), raw


@pytest.mark.parametrize("build", [
    # many strings: the numpy paths rather than slices
    lambda rng: json.dumps([random_text(rng) for _ in range(6000)] + [[[["x"]]]]),
    lambda rng: json.dumps([[random_text(rng)], {"k": [1]}] * 3000),
    # quotes after runs of backslashes, every run length
    lambda rng: json.dumps({"\\" * n + '"': ["\\" * n + '"' + "[" * n] for n in range(40)}),
    lambda rng: json.dumps([{"a": "\\\"" * 50, "b": [[["\\\\"]]]}] * 2000),
])
def test_the_scan_agrees_with_the_reference_on_large_bodies(build: object) -> None:
    raw = build(random.Random(1)).encode()  # type: ignore[operator]
    shape = scan(raw, 10_000)
    assert (shape.depth, shape.values) == reference(raw)


def test_the_scan_stops_past_the_limit_and_is_cheap() -> None:
    raw = b"[" * 1_000_000 + b"]" * 1_000_000
    started = time.perf_counter()
    assert nesting_depth(raw, 64) > 64
    assert time.perf_counter() - started < 1.0
    assert nesting_depth(b"[" * 65 + b"]" * 65, 64) == 65
    assert nesting_depth(b"[" * 64 + b"]" * 64, 64) == 64


def test_json_loads_never_recurses_past_the_limit() -> None:
    # unterminated: the depth still counts (json.loads would recurse through it)
    with pytest.raises(BodyError) as caught:
        loads(b"[" * 100_000, max_depth=64)
    assert caught.value.code == "too_deep" and caught.value.details["limit"] == 64
    # brackets inside an unterminated string are not nesting: a plain syntax error
    with pytest.raises(BodyError) as caught:
        loads(b'{"a": "' + b"[" * 100_000, max_depth=64)
    assert caught.value.code == "malformed_json"


def test_too_many_values_are_refused_before_the_parse() -> None:
    raw = json.dumps({"o": [1] * 1000}).encode()
    assert scan(raw, 64).values == 1 + 1 + 1 + 1 + 999  # {, :, [, 1, commas
    assert loads(raw, max_depth=64, max_values=1003) == {"o": [1] * 1000}
    with pytest.raises(BodyError) as caught:
        loads(raw, max_depth=64, max_values=1002)
    assert caught.value.code == "too_many_values"
    assert caught.value.details == {"limit": 1002, "setting": "max_json_values"}


@pytest.mark.parametrize(("raw", "path", "key"), [
    ('{"a": 1, "a": 2}', '"a"', "a"),
    ('{"circuits": {"a": "x", "b": "y", "a": "z"}}', 'circuits."a"', "a"),
    ('{"tags": {"k": "1"}, "options": {"x": [0, {"q r": {"z": 1, "z": 1}}]}}',
     'options.x[1]."q r"."z"', "z"),
    ('[{"a": {}}, {"b": 1, "b": 1}]', '[1]."b"', "b"),
    # the outer repeat is found first, in document order
    ('{"o": {"i": 1, "i": 2}, "o": 3}', '"o"', "o"),
])
def test_a_duplicate_key_is_named_with_its_path(raw: str, path: str, key: str) -> None:
    with pytest.raises(BodyError) as caught:
        loads(raw.encode(), max_depth=64)
    error = caught.value
    assert error.code == "duplicate_key"
    assert error.details == {"key": key, "path": path}
    assert path in error.message


def test_a_long_duplicate_key_is_shortened_in_the_answer() -> None:
    key = "k" * 10_000
    with pytest.raises(BodyError) as caught:
        loads(json.dumps({"c": {}}).replace("{}", f'{{"{key}": 1, "{key}": 2}}').encode(),
              max_depth=64)
    assert len(caught.value.message) < 500
    assert caught.value.details["key"] == "k" * 100 + "..."


@pytest.mark.parametrize(("raw", "why"), [
    ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"a": ' + b"1" * 5000 + b"}", "digits"),
    (b'{"a": 1', "not valid JSON"),
])
def test_bodies_json_loads_would_take_or_crash_on_are_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(BodyError, match=why) as caught:
        loads(raw, max_depth=64)
    assert caught.value.code == "malformed_json"


def test_valid_bodies_come_back_as_json_loads_reads_them() -> None:
    doc = {"backend": "x", "circuits": {"a\"[": "OPENQASM 2.0;\ninclude \"qelib1.inc\";"},
           "tags": {"é": "ü"}, "options": {"n": [1, 2.5, None, True, {"d": []}]}}
    # the deepest: {} > options {} > n [] > {} > d []
    assert loads(json.dumps(doc).encode(), max_depth=5) == doc
    with pytest.raises(BodyError, match="more than 4 deep"):
        loads(json.dumps(doc).encode(), max_depth=4)


def test_the_repeat_marker_never_leaves_the_module() -> None:
    value = loads(b'{"a": {"b": 1}}', max_depth=8)
    assert type(value) is dict and type(value["a"]) is dict
    assert not any(isinstance(v, jsonbody._Repeated) for v in value.values())
