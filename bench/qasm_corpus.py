"""Where Qiskit's native OpenQASM 3 importer and the reference path differ, on a corpus.

    python -m bench.qasm_corpus                      # generated programs only
    python -m bench.qasm_corpus --files DIR... --grammar-tests DIR --json out.json

Every OpenQASM 3 program of the corpus is read both ways: by the native importer
(``qiskit.qasm3.loads_experimental``, behind the rewrites of ``backends/_qasm_native``)
and by the reference path (the ``openqasm3`` ANTLR grammar and ``qiskit_qasm3_import``),
before the daemon's own validation (qubits, measurements, parameters). Each program
lands in one of five classes:

- ``agree``: both import it, to equal circuits (``QuantumCircuit.__eq__``);
- ``agree up to id``: equal but for ``id q;``, an ``IGate`` natively and a ``U(0, 0, 0)``
  on the reference path (the same operation: the facts, the counts and every conversion
  are as valid);
- ``fallback``: the native importer refuses and the reference path imports it (the
  daemon then uses the reference path: slower, the same answer as before);
- ``both refuse``: the reference path's error is the one reported;
- ``differ``: both import it, to different circuits;
- ``native only``: the native importer takes what the reference path refuses.

The daemon is correct on the corpus when the last two are empty (a ``differ`` or
``native only`` would be a program the native importer answers differently). The
corpus: generated programs (float angles as ``qiskit.qasm3.dumps`` writes them, ``pi``
expressions, every stdgates gate, random one-character mutations of both), Qiskit's
exporter output for any OpenQASM 2 files given (``--files``), OpenQASM 3 files given
(e.g. the OpenQASM specification's ``examples/``), and the statements of the grammar's
test suite (``--grammar-tests``: its ``reference/**/*.yaml`` sources, and each line of
its ``invalid/**/*.qasm`` inside a valid program).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import qiskit
import qiskit.qasm2
import qiskit.qasm3

from qjobd.backends import _qasm_native, qasm

CLASSES = ("agree", "agree up to id", "fallback", "both refuse", "differ", "native only")
ONE = ["h", "x", "y", "z", "s", "sdg", "t", "tdg", "sx", "id"]
ONE_ANGLE = ["rx", "ry", "rz", "p", "u1"]
TWO = ["cx", "cy", "cz", "ch", "swap"]
TWO_ANGLE = ["crx", "cry", "crz", "cp"]
HEAD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


@dataclass
class Outcome:
    name: str
    kind: str
    verdict: str
    native: str
    reference: str


def random_program(rng: random.Random, gates: int, qubits: int, *, angles: str = "float",
                   version: int = 3) -> str:
    """A random circuit of stdgates gates (the benchmark's kind when angles="float")."""
    if version == 2:
        lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];",
                 f"creg c[{qubits}];"]
    else:
        lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{qubits}] q;",
                 f"bit[{qubits}] c;"]
    for _ in range(gates):
        r = rng.random()
        if r < 0.3:
            lines.append(f"{rng.choice(ONE)} q[{rng.randrange(qubits)}];")
        elif r < 0.6:
            lines.append(f"{rng.choice(ONE_ANGLE)}({_angle(rng, angles)}) "
                         f"q[{rng.randrange(qubits)}];")
        else:
            a, b = rng.sample(range(qubits), 2)
            if rng.random() < 0.7:
                lines.append(f"{rng.choice(TWO)} q[{a}], q[{b}];")
            else:
                lines.append(f"{rng.choice(TWO_ANGLE)}({_angle(rng, angles)}) q[{a}], q[{b}];")
    lines.append("measure q -> c;" if version == 2 else "c = measure q;")
    return "\n".join(lines) + "\n"


def _angle(rng: random.Random, style: str) -> str:
    if style == "float":
        return repr(rng.uniform(-3.2, 3.2))
    forms = ["pi", "-pi", "pi/2", "-pi/4", "2*pi/3", "-2*pi/3", "pi*0.25", "0.5*pi", "tau/8",
             "π/8", "τ/3", "euler", "(pi/2) + 0.1", "pi - 1", "1/2", "3/2*pi", "-(pi/3)",
             "2 * (pi - 1.5)", "1.5e-3*pi", ".5", "3", "0.1 + 0.2 - 0.3"]
    return rng.choice(forms) if rng.random() < 0.7 else repr(rng.uniform(-3.2, 3.2))


def generated(seed: int, count: int) -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    for i in range(count):
        yield f"float-{i}", random_program(rng, rng.randrange(1, 60), rng.randrange(2, 6))
        yield f"pi-{i}", random_program(rng, rng.randrange(1, 60), rng.randrange(2, 6),
                                        angles="expr")
    for i in range(count):
        base = random_program(rng, rng.randrange(1, 20), rng.randrange(2, 5),
                              angles=rng.choice(["float", "expr"]))
        yield f"mutant-{i}", _mutated(rng, base)
    for gate in _qasm_native.STDGATES:
        yield f"gate-{gate}", _gate_program(gate)
    yield from _constructs()


def _mutated(rng: random.Random, source: str) -> str:
    at = rng.randrange(len(HEAD), len(source))
    choice = rng.random()
    if choice < 0.4:
        return source[:at] + source[at + 1:]
    if choice < 0.8:
        return source[:at] + rng.choice("()[];,.-+*/=$q0 1xh\n") + source[at:]
    return source[:at] + source[at + 1:at + 2] + source[at:at + 1] + source[at + 2:]


def _gate_program(gate: str) -> str:
    sizes = {"ccx": 3, "cswap": 3}
    params = {"p": 1, "rx": 1, "ry": 1, "rz": 1, "cp": 1, "crx": 1, "cry": 1, "crz": 1,
              "phase": 1, "cphase": 1, "u1": 1, "u2": 2, "u3": 3, "cu": 4}
    width = sizes.get(gate, 2 if gate[0] == "c" or gate in ("swap", "CX") else 1)
    if gate in ("cx", "cy", "cz", "cp", "crx", "cry", "crz", "ch", "cu", "cphase", "CX"):
        width = 2
    args = ", ".join(f"{0.1 * (i + 1)}" for i in range(params.get(gate, 0)))
    call = f"{gate}({args})" if args else gate
    operands = ", ".join(f"q[{i}]" for i in range(width))
    return f"{HEAD}qubit[3] q;\nbit[3] c;\n{call} {operands};\nc = measure q;\n"


def _constructs() -> Iterator[tuple[str, str]]:
    body = {
        "reset": "reset q[0];", "U": "U(0.1, 0.2, 0.3) q[0];", "gphase": "gphase(0.5);",
        "if-braces": "c[0] = measure q[0];\nif (c[0]) { x q[1]; }",
        "if-bare": "c[0] = measure q[0];\nif (c[0]) x q[1];",
        "if-int": "c[0] = measure q[0];\nif (c == 1) { x q[1]; }",
        "for": "for int i in [0:1] { h q[i]; }", "while": "c[0] = measure q[0];\nwhile (c[0]) "
        "{ x q[0]; c[0] = measure q[0]; }", "ctrl": "ctrl @ x q[0], q[1];",
        "inv": "inv @ s q[0];", "pow": "pow(2) @ x q[0];", "gate-def": "gate g(t) a { rx(t) a; }"
        "\ng(0.5) q[0];", "slice": "cx q[0], q[1:2];", "set": "h q[{0, 1}];",
        "broadcast": "h q;", "barrier-all": "barrier;", "barrier": "barrier q[0], q[1];",
        "measure-arrow": "measure q[0] -> c[0];", "measure-bare": "measure q[0];",
        "delay": "delay[100ns] q[0];", "let": "let r = q[0:1];\nh r;",
        "legacy": "qreg r[2];\ncreg d[2];\nh r[0];\nmeasure r -> d;",
        "hardware": "h $0;\nc[0] = measure $0;", "int-angle": "rx(3) q[0];",
        "index-out": "h q[7];", "undefined-gate": "foo q[0];", "undefined-qubit": "h r[0];",
        "arity": "rx q[0];", "too-many-qubits": "h q[0], q[1];", "shadow": "bit pi;\nrx(pi) q[0];",
        "redeclare": "qubit[2] q;", "no-include": None, "version-3": None,
    }
    for name, statement in body.items():
        if name == "no-include":
            yield name, "OPENQASM 3.0;\nqubit[3] q;\nbit[3] c;\nh q[0];\nc = measure q;\n"
        elif name == "version-3":
            yield name, 'OPENQASM 3;\ninclude "stdgates.inc";\nqubit q;\nbit c;\nc = measure q;\n'
        else:
            yield name, f"{HEAD}qubit[3] q;\nbit[3] c;\n{statement}\nc = measure q;\n"


def exported(files: list[Path]) -> Iterator[tuple[str, str]]:
    """OpenQASM 3 programs from files: v3 as is, v2 through Qiskit's own v3 exporter."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if re.match(r"\s*(?://[^\n]*\s*)*OPENQASM\s+2", text):
            try:
                circuit = qiskit.qasm2.loads(
                    text, custom_instructions=qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
                yield f"exported:{path.name}", qiskit.qasm3.dumps(circuit)
            except Exception:  # a file Qiskit cannot read or export: not this corpus
                continue
        else:
            yield f"file:{path.name}", text


def grammar_tests(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.glob("reference/**/*.yaml")):
        match = re.search(r"^source: \|\n((?:  .*\n|\n)*)", path.read_text(), re.MULTILINE)
        if match:
            snippet = "\n".join(line[2:] for line in match[1].splitlines())
            yield f"grammar:{path.stem}", f"{HEAD}{snippet}\n"
    for path in sorted(root.glob("invalid/**/*.qasm")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.strip().startswith("//"):
                yield (f"invalid:{path.stem}:{number}",
                       f"{HEAD}qubit[4] q;\nbit[4] c;\n{line}\nc = measure q;\n")


def classify(name: str, source: str) -> Outcome:
    kind = name.split(":")[0].split("-")[0]
    try:
        native = _qasm_native.load(source)
        native_text = f"{native.num_qubits} qubits, {len(native.data)} instructions"
    except _qasm_native.Refused as exc:
        native, native_text = None, f"refused: {exc.reason[:120]}"
    try:
        reference = qasm._load_qasm3(name, source)
        reference_text = f"{reference.num_qubits} qubits, {len(reference.data)} instructions"
    except (qasm.QasmError, qasm._Unimportable) as exc:
        error = exc if isinstance(exc, qasm.QasmError) else exc.error
        reference, reference_text = None, f"refused: {error.reason[:120]}"
    if native is not None and reference is not None:
        if native == reference:
            verdict = "agree"
        else:
            verdict = "agree up to id" if _equal_up_to_id(native, reference) else "differ"
    elif native is None:
        verdict = "fallback" if reference is not None else "both refuse"
    else:
        # the daemon reads an empty native circuit with the reference path too
        verdict = "both refuse" if native.num_qubits == 0 else "native only"
    return Outcome(name, kind, verdict, native_text, reference_text)


def _equal_up_to_id(native: qiskit.QuantumCircuit, reference: qiskit.QuantumCircuit) -> bool:
    if (native.qregs, native.cregs, len(native.data)) != (
            reference.qregs, reference.cregs, len(reference.data)):
        return False
    for a, b in zip(native.data, reference.data, strict=True):
        if a == b:
            continue
        if (a.qubits, a.clbits) != (b.qubits, b.clbits):
            return False
        if not (a.operation.name == "id" and b.operation.name == "u"
                and all(float(p) == 0 for p in b.operation.params)):
            return False
    return True


def run(programs: Iterator[tuple[str, str]]) -> list[Outcome]:
    return [classify(name, source) for name, source in programs]


def report(outcomes: list[Outcome]) -> str:
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        by_kind[outcome.kind][outcome.verdict] += 1
    lines = ["| programs | " + " | ".join(CLASSES) + " |",
             "|---|" + "---:|" * len(CLASSES)]
    for kind, counts in sorted(by_kind.items()):
        total = sum(counts.values())
        lines.append(f"| {kind} ({total}) | " + " | ".join(str(counts[c]) for c in CLASSES)
                     + " |")
    reasons = collections.Counter(
        re.sub(r"\d+", "N", o.native.removeprefix("refused: "))[:70]
        for o in outcomes if o.verdict == "fallback")
    lines += ["", "Why the native importer refused, where the reference path imports "
              "(most frequent first):", ""]
    lines += [f"- {n} x {reason}" for reason, n in reasons.most_common(15)]
    bad = [o for o in outcomes if o.verdict in ("differ", "native only")]
    lines += ["", f"differ or native only: {len(bad)}"]
    lines += [f"- {o.name}: native {o.native}; reference {o.reference}" for o in bad]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="*", type=Path, default=[],
                        help="directories of .qasm files (OpenQASM 2 ones are exported to 3)")
    parser.add_argument("--grammar-tests", type=Path,
                        help="the OpenQASM repository's source/grammar/tests directory")
    parser.add_argument("--generated", type=int, default=300, help="random programs per kind")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args(argv)
    _qasm_native.enable()
    files = sorted(p for d in args.files for p in d.rglob("*.qasm"))
    programs = [*generated(args.seed, args.generated), *exported(files)]
    if args.grammar_tests:
        programs += list(grammar_tests(args.grammar_tests))
    started = time.perf_counter()
    outcomes = run(iter(programs))
    print(report(outcomes))
    print(f"\n{len(outcomes)} programs in {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 1 if any(o.verdict in ("differ", "native only") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
