"""backends.qasm's sweep cache: circuits that differ only in their angles are parsed once.

The cache may only ever answer what a full parse would: these tests parse each source
both ways (fully, with every cache empty, and through parse_circuit after a sibling with
the same template warmed the cache) and compare, over random sources in and around the
subset the cache serves, valid and invalid ones.
"""

from __future__ import annotations

import random

import pytest

from qjobd.backends import qasm
from qjobd.backends.qasm import QasmError, parse_circuit, sweep_template

HEAD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def _full(source: str) -> tuple[int, int, int] | str:
    """What a full parse says, with no cache involved: the facts or the error."""
    try:
        version, circuit = qasm._load("c", source)
    except QasmError as exc:
        return str(exc)
    return version, circuit.num_qubits, circuit.num_clbits


def _cached(source: str) -> tuple[int, int, int] | str:
    try:
        parsed = parse_circuit("c", source)
    except QasmError as exc:
        return str(exc)
    return parsed.qasm_version, parsed.num_qubits, parsed.num_clbits


def _clear() -> None:
    qasm._FACTS.clear()
    qasm._SWEEPS = qasm._Templates(4096)


def _angle(rng: random.Random) -> str:
    value = rng.choice([rng.uniform(-10, 10), 0.0, 1e-30, 1e300, rng.uniform(0, 1)])
    text = rng.choice([f"{value:.6f}", f"{value:.3e}", repr(value)])
    return text if rng.random() < 0.8 else f"{text} * pi + {abs(value):.2f}"


def _statement(rng: random.Random, n: int) -> str:
    # now and then an index out of range, an undefined gate, a repeated qubit
    picks = rng.sample(range(n), n) if rng.random() < 0.95 else [0, 0, 0]
    q = [f"q[{i if rng.random() < 0.97 else n}]" for i in (picks * 3)[:3]]
    gate = rng.choice(["h", "x", "rz", "rx", "cx", "crz", "u3", "U", "ccx"] * 10 + ["foo"])
    if (gate in ("cx", "crz") and n < 2) or (gate == "ccx" and n < 3):
        gate = "h"
    if gate in ("rz", "rx"):
        return f"{gate}({_angle(rng)}) {q[0]};"
    if gate in ("crz", "rzz"):
        return f"{gate}({_angle(rng)}) {q[0]}, {q[1]};"
    if gate in ("u3", "U"):
        return f"{gate}({_angle(rng)}, {_angle(rng)}, {_angle(rng)}) {q[0]};"
    if gate == "cx":
        return f"cx {q[0]}, {q[1]};"
    if gate == "ccx":
        return f"ccx {q[0]}, {q[1]}, {q[2]};"
    return f"{gate} {q[0]};"


def _program(rng: random.Random) -> str:
    n = rng.randrange(1, 4)
    lines = [HEAD if rng.random() < 0.9 else "OPENQASM 3.0;\n", f"qubit[{n}] q;\n",
             f"bit[{n}] c;\n"]
    lines += [_statement(rng, n) + "\n" for _ in range(rng.randrange(1, 6))]
    ending = rng.random()
    if ending < 0.6:
        lines.append("c = measure q;\n")
    elif ending < 0.8:
        lines.append(f"measure q[0] -> c[{rng.randrange(n + 1)}];\n")
    if rng.random() < 0.1:
        lines.insert(rng.randrange(1, len(lines)), "// a comment; with a semicolon\n")
    return "".join(lines)


def _sibling(source: str, rng: random.Random) -> str:
    """The same source with other values for its float literals (the header's kept)."""
    head, _, body = source.partition(";")
    return head + ";" + qasm._SWEEP_FLOAT.sub(lambda _: f"{rng.uniform(0, 5):.5f}", body)


@pytest.mark.parametrize("seed", range(6))
def test_the_cache_answers_exactly_what_a_full_parse_answers(seed: int) -> None:
    rng = random.Random(seed)
    served = 0
    for _ in range(60):
        source = _program(rng)
        sibling = _sibling(source, rng)
        _clear()
        expected = _full(sibling)
        _clear()
        _cached(source)  # warms the cache with the sibling's template, if it parses
        hit = sweep_template(sibling) is not None and \
            qasm._SWEEPS.get(sweep_template(sibling) or "") is not None
        served += hit
        assert _cached(sibling) == expected, (source, sibling)
    _clear()
    assert served > 10, "the random programs should often be served from the cache"


def test_a_sweep_is_parsed_once() -> None:
    _clear()
    sources = [f"{HEAD}qubit[2] q;\nbit[2] c;\nh q[0];\nrz({i / 7:.6f}) q[0];\n"
               "cx q[0], q[1];\nc = measure q;\n" for i in range(50)]
    templates = {sweep_template(s) for s in sources}
    assert len(templates) == 1 and None not in templates
    for source in sources:
        assert parse_circuit("c", source).num_clbits == 2
    assert len(qasm._SWEEPS._items) == 1


@pytest.mark.parametrize("source", [
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nmeasure q -> c;\n',
    f"{HEAD}qubit q;\nbit c;\nrz(0.5 / 0.25) q;\nc = measure q;\n",           # division
    f"{HEAD}qubit q;\nbit c;\nrz(sin(0.5)) q;\nc = measure q;\n",              # function
    f"{HEAD}float x = 0.5;\nqubit q;\nbit c;\nrz(x) q;\nc = measure q;\n",      # variable
    f"{HEAD}input float t;\nqubit q;\nbit c;\nrz(t) q;\nc = measure q;\n",      # input
    f"{HEAD}qubit[int(2.5)] q;\nbit c;\nc[0] = measure q[0];\n",               # cast
    f"{HEAD}qubit q;\nbit c;\npow(0.5) @ x q;\nc = measure q;\n",              # modifier
    f"{HEAD}qubit q;\nbit c;\ndelay[0.5ns] q;\nc = measure q;\n",              # duration
    f"{HEAD}qubit q;\nbit c;\nc = measure q;\nif (c) {{ rz(0.5) q; }}\n",        # condition
    'OPENQASM 3.0;\ninclude "other.inc";\nqubit q;\nbit c;\nc = measure q;\n',  # include
    f"{HEAD}qubit q;\nbit c;\nrz(0.5) q; // §\nc = measure q;\n",              # a marker
])
def test_sources_outside_the_subset_are_always_parsed_in_full(source: str) -> None:
    assert sweep_template(source) is None


def test_errors_of_a_template_seen_valid_still_come_from_a_full_parse() -> None:
    _clear()
    good = f"{HEAD}qubit[2] q;\nbit[2] c;\nrz(0.1) q[0];\nc = measure q;\n"
    assert parse_circuit("a", good).num_qubits == 2
    broken = good.replace("rz(0.1) q[0];", "rz(0.2) q[2];")  # another template: index 2
    with pytest.raises(QasmError):
        parse_circuit("b", broken)
