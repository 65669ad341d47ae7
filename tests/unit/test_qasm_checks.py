"""backends.qasm's submission checks: limits from the declarations before anything is built,
Qiskit's native importer where it agrees with the reference path, errors that say what to
do, and OpenQASM 3 a provider parses itself."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator

import pytest

from bench.qasm_corpus import classify, generated, random_program
from qjobd.backends import _qasm_native, qasm
from qjobd.backends.qasm import CircuitLimits, OverLimit, QasmError, check_circuit
from tests.conftest import BELL2, BELL3

LIMITS = CircuitLimits(max_qubits=24, max_clbits=4096, max_operations=1000)
HEAD3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


@pytest.fixture
def native() -> Iterator[None]:
    """Qiskit's native importer on in this process, as in a parse worker."""
    _qasm_native.enable()
    try:
        yield
    finally:
        _qasm_native.disable()


def _refusal(source: str, limits: CircuitLimits = LIMITS, **kwargs: object) -> QasmError:
    with pytest.raises(QasmError) as caught:
        check_circuit("c", source, limits=limits, **kwargs)  # type: ignore[arg-type]
    return caught.value


# -- limits, from the declarations ----------------------------------------------------


@pytest.mark.parametrize(("source", "where"), [
    ("OPENQASM 3.0;\nqubit[100000000] q;\nbit c;\nc = measure q[0];\n", (2, 1)),
    ("OPENQASM 2.0;\nqreg q[100000000];\ncreg c[1];\nmeasure q[0] -> c[0];\n", (2, 1)),
    ("qubit[20] a;\n  qubit[2**40] q;\nbit c;\nc = measure q[0];\n", (2, 3)),
    ("const int n = 100000000;\nqubit[n] q;\nbit c;\nc = measure q[0];\n", (2, 1)),
    ("qubit[3] q;\nbit c;\nh $100000000;\nc = measure q[0];\n", (3, 3)),
], ids=["v3", "v2", "arithmetic", "const", "hardware"])
def test_a_huge_qubit_declaration_is_refused_before_anything_is_built(
        source: str, where: tuple[int, int]) -> None:
    started = time.perf_counter()
    error = _refusal(source)
    assert time.perf_counter() - started < 0.5  # no allocation: a scan
    assert isinstance(error, OverLimit)
    assert (error.limit, error.maximum) == ("qubits", 24)
    assert (error.line, error.column) == where
    assert error.to_dict()["limit"]["max"] == 24


def test_a_huge_classical_register_is_refused_too() -> None:
    error = _refusal("OPENQASM 3.0;\nqubit q;\nbit[100000000] c;\nc[0] = measure q;\n")
    assert isinstance(error, OverLimit) and error.limit == "classical bits"


def test_a_width_that_is_not_a_constant_is_refused_naming_the_register() -> None:
    error = _refusal("OPENQASM 3.0;\ninput int n;\nqubit[n] q;\nbit c;\nc = measure q[0];\n")
    assert "'q'" in error.reason and "not a constant" in error.reason
    assert (error.line, error.column) == (3, 1)


def test_parameters_of_subroutines_declare_no_qubits() -> None:
    declared = qasm._declarations.scan("def f(qubit[100] a, qubit b) { }\nqubit[2] q;\n")
    assert declared.total("qubits") == 2


def test_declarations_in_comments_and_strings_do_not_count() -> None:
    source = BELL3 + '// qubit[100000000] r;\n/* qreg r[100000000]; */\npragma "qubit[9] z;"\n'
    assert qasm._declarations.scan(source).total("qubits") == 2


def test_too_many_statements_are_refused_before_parsing() -> None:
    source = HEAD3 + "qubit q;\nbit c;\n" + "h q;\n" * 1001 + "c = measure q;\n"
    error = _refusal(source)
    assert isinstance(error, OverLimit) and error.limit == "operations"


def test_operations_are_counted_after_parsing_broadcasts_included() -> None:
    source = HEAD3 + "qubit[10] q;\nbit[10] c;\nh q;\nc = measure q;\n"
    assert check_circuit("c", source).operations == 20
    error = _refusal(source, CircuitLimits(max_operations=12))
    assert isinstance(error, OverLimit) and (error.limit, error.value) == ("operations", 20)


def test_over_limit_errors_cross_process_boundaries() -> None:
    import pickle

    error = OverLimit("c", "too wide", 2, 1, "qubits", 24, 30)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.limit, copy.maximum, copy.value, copy.line) == ("qubits", 24, 30, 2)
    assert copy.relabeled("d").label == "d" and copy.relabeled("d").limit == "qubits"


# -- errors that say what to do ---------------------------------------------------------


@pytest.mark.parametrize(("source", "line"), [
    ("OPENQASM 3.0;\nqubit[2] q;\nbit[2] c;\nh q[0];\nc = measure q;\n",
     'include "stdgates.inc";'),
    ("OPENQASM 2.0;\nqreg q[2];\ncreg c[2];\nh q[0];\nmeasure q -> c;\n",
     'include "qelib1.inc";'),
], ids=["v3", "v2"])
def test_a_standard_gate_without_its_include_is_told_the_line_to_add(source: str,
                                                                      line: str) -> None:
    error = _refusal(source)
    assert f"add the line {line}" in error.reason
    assert (error.line, error.column) == (4, 1)


def test_an_unknown_gate_gets_no_include_hint() -> None:
    assert "add the line" not in _refusal(BELL3.replace("h q[0];", "foo q[0];")).reason


def test_openqasm_2_without_a_version_line_is_told_so() -> None:
    source = BELL2.removeprefix("OPENQASM 2.0;\n")
    error = _refusal(source)
    assert "no version line" in error.reason and '"OPENQASM 2.0;"' in error.reason
    assert "it is valid OpenQASM 2" in error.reason


def test_openqasm_3_without_a_version_line_still_parses() -> None:
    assert check_circuit("c", BELL3.removeprefix("OPENQASM 3.0;\n")).qasm_version == 3


# -- the native importer ----------------------------------------------------------------


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("angles", ["float", "expr"])
def test_the_native_importer_reads_what_it_can_with_the_reference_paths_facts(
        angles: str) -> None:
    rng = random.Random(5)
    for _ in range(10):
        source = random_program(rng, 40, 4, angles=angles)
        checked = check_circuit("c", source)
        assert checked.path == "native"
        reference = qasm._load_qasm3("c", source)
        assert (checked.num_qubits, checked.num_clbits) == (reference.num_qubits,
                                                            reference.num_clbits)


@pytest.mark.usefixtures("native")
def test_with_the_native_importer_errors_are_still_the_reference_paths(
        capfd: pytest.CaptureFixture[str]) -> None:
    error = _refusal(BELL3.replace("h q[0];", "h q[0]"))
    assert (error.line, error.column, error.reason) == (6, 1, "missing ';' at 'cx'")
    error = _refusal(BELL3.replace("h q[0];", "h q[5];"))
    assert error.reason == "IndexError: index out of range"
    out, err = capfd.readouterr()
    assert "Error" not in out + err  # the importer's printout is captured, not leaked


@pytest.mark.usefixtures("native")
def test_the_native_importer_never_reads_an_included_file(
        capfd: pytest.CaptureFixture[str]) -> None:
    error = _refusal(BELL3.replace("stdgates.inc", "/etc/passwd"))
    assert error.reason == "non-stdgates imports not currently supported"
    out, err = capfd.readouterr()
    assert "root:" not in out + err


@pytest.mark.usefixtures("native")
def test_the_native_importers_refusal_is_parsed_from_its_printout() -> None:
    with pytest.raises(_qasm_native.Refused) as caught:
        _qasm_native.load(HEAD3 + "qubit[2] q;\nbit[2] c;\ncx q[0];\nc = measure q;\n")
    assert (caught.value.reason, caught.value.line, caught.value.column) == (
        "NumGateQubitsError", 5, 4)


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("statement", ["rx(-1.0x84) q[0];", "h q[0];;", "OPENQASM 3.0;",
                                       "rz(.5) q[0];"])
def test_what_the_natives_grammar_takes_but_the_language_does_not_never_reaches_it(
        statement: str) -> None:
    outcome = classify("x", HEAD3 + f"qubit[2] q;\nbit[2] c;\n{statement}\nc = measure q;\n")
    assert outcome.verdict in ("both refuse", "fallback"), outcome


@pytest.mark.usefixtures("native")
def test_on_generated_programs_the_two_importers_never_differ() -> None:
    outcomes = [classify(name, source) for name, source in generated(3, 15)]
    assert not [o for o in outcomes if o.verdict in ("differ", "native only")]
    assert sum(o.verdict.startswith("agree") for o in outcomes) > 20


def test_folded_arguments_are_the_reference_paths_values_to_the_bit() -> None:
    rng = random.Random(11)
    atoms = ["pi", "π", "tau", "euler", "2", "3", "0.5", "1.5e-3", "(pi/3)", "7"]
    for _ in range(300):
        expression = rng.choice(atoms)
        for _ in range(rng.randrange(1, 5)):
            expression = f"{expression} {rng.choice('+-*/')} {rng.choice(atoms)}"
        if rng.random() < 0.3:
            expression = f"-({expression})"
        source = HEAD3 + f"qubit q;\nbit c;\nrz({expression}) q;\nc = measure q;\n"
        try:
            reference = qasm._load_qasm3("c", source).data[0].operation.params[0]
        except (QasmError, qasm._Unimportable):
            continue  # e.g. division by zero: never folded either
        folded = _qasm_native.constant(expression)
        assert folded is not None, expression
        assert math.isclose(float(reference), folded, rel_tol=0, abs_tol=0) or (
            float(reference) == folded), expression


# -- OpenQASM 3 a provider parses itself --------------------------------------------------

SUBROUTINE = HEAD3 + """const int n = 3;
def flip(qubit a) { x a; }
qubit[n] q;
bit[n] c;
flip(q[0]);
c = measure q;
"""


def test_openqasm_3_qiskit_cannot_import_is_accepted_for_a_provider_that_parses_it() -> None:
    checked = check_circuit("c", SUBROUTINE, provider_parsed=frozenset({3}))
    assert (checked.path, checked.num_qubits, checked.num_clbits) == ("grammar", 3, 3)
    (note,) = checked.skipped
    assert "ConstantDeclaration" in note and "sent to the provider as written" in note


def test_without_such_a_provider_it_is_refused_naming_the_construct() -> None:
    error = _refusal(SUBROUTINE)
    assert "ConstantDeclaration is not supported" in error.reason


def test_a_provider_parsed_program_must_still_pass_the_reference_grammar() -> None:
    error = _refusal(SUBROUTINE.replace("flip(q[0]);", "flip(q[0]"),
                     provider_parsed=frozenset({3}))
    assert error.line == 8


def test_a_provider_parsed_program_whose_counts_width_is_unknown_is_refused() -> None:
    source = HEAD3 + "input int[8] n;\nqubit q;\nbit[n] c;\nc[0] = measure q;\n"
    error = _refusal(source, provider_parsed=frozenset({3}))
    assert "'c'" in error.reason and "not a constant" in error.reason


def test_a_provider_parsed_program_is_held_to_the_limits() -> None:
    source = SUBROUTINE.replace("const int n = 3;", "const int n = 3 * 10;")
    error = _refusal(source, provider_parsed=frozenset({3}))
    assert isinstance(error, OverLimit) and error.value == 30


def test_a_provider_parsed_program_that_measures_nothing_is_refused() -> None:
    source = SUBROUTINE.replace("c = measure q;\n", "")
    assert _refusal(source, provider_parsed=frozenset({3})).reason == qasm.NO_MEASUREMENT


def test_a_genuine_error_is_not_taken_for_a_missing_feature() -> None:
    source = SUBROUTINE.replace("x a;", "foo a;").replace("flip(q[0]);", "foo q[0];")
    assert "foo" in _refusal(source, provider_parsed=frozenset({3})).reason


# -- conversions and the daemon's caches ----------------------------------------------------


def test_a_checked_conversion_is_kept_for_the_jobs_submission() -> None:
    checked = check_circuit("c", BELL3, versions=frozenset({2}))
    assert checked.wire_version == 2 and checked.wire.startswith("OPENQASM 2.0;")
    qasm._WIRE.clear()
    qasm.remember(checked)
    parsed = qasm.parse_circuit("c", BELL3)
    assert qasm.convert(parsed, frozenset({2})) is checked.wire


def test_remembered_facts_answer_parse_circuit_without_parsing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = BELL3.replace("h q[0];", "h q[1];")
    checked = check_circuit("c", source)
    qasm._FACTS.clear()
    qasm.remember(checked)
    monkeypatch.setattr(qasm, "_load", lambda *a: pytest.fail("parsed again"))
    assert qasm.parse_circuit("d", source).num_qubits == 2


def test_a_cache_miss_in_the_daemon_is_parsed_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offload(kind: str, args: tuple[object, ...]) -> object:
        calls.append(kind)
        return qasm.offloaded(kind, args)

    qasm._FACTS.clear()
    qasm._WIRE.clear()
    monkeypatch.setattr(qasm, "_offload", offload)
    parsed = qasm.parse_circuit("c", BELL3.replace("cx", "cz"))
    qasm.convert(parsed, frozenset({2}))
    assert calls == ["facts", "convert"]


def _operations_by_index(circuit: object) -> list[tuple[object, ...]]:
    c = circuit  # a QuantumCircuit: its operations by qubit and clbit index
    return [(i.operation.name, tuple(float(p) for p in i.operation.params),
             tuple(c.find_bit(q).index for q in i.qubits),  # type: ignore[attr-defined]
             tuple(c.find_bit(b).index for b in i.clbits))  # type: ignore[attr-defined]
            for i in c.data]  # type: ignore[attr-defined]


@pytest.mark.usefixtures("native")
def test_the_native_subset_is_written_as_openqasm_2_with_the_same_operations() -> None:
    import qiskit.qasm2

    translated = 0
    for name, source in generated(7, 40):
        try:
            circuit = _qasm_native.load(source)
        except _qasm_native.Refused:
            continue  # written only once the importer took it
        wire = _qasm_native.to_qasm2(source)
        assert wire is not None, name
        again = qiskit.qasm2.loads(wire,
                                   custom_instructions=qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
        assert _operations_by_index(again) == _operations_by_index(circuit), name
        translated += 1
    assert translated > 50
    checked = check_circuit("c", generated_program(), versions=frozenset({2}))
    assert checked.path == "native" and checked.wire.startswith("OPENQASM 2.0;\ninclude")


@pytest.mark.usefixtures("native")
def test_a_name_openqasm_2_cannot_take_leaves_the_conversion_to_qiskit() -> None:
    source = HEAD3 + "qubit[2] Q;\nbit[2] c;\nh Q[0];\nc = measure Q;\n"
    assert _qasm_native.to_qasm2(source) is None
    checked = check_circuit("c", source, versions=frozenset({2}))
    assert checked.wire is not None and "qreg" in checked.wire


def generated_program() -> str:
    return random_program(random.Random(2), 30, 3, angles="expr")


def test_a_subroutine_called_like_a_gate_is_told_how_to_call_it() -> None:
    source = SUBROUTINE.replace("flip(q[0]);", "flip q[0];")
    error = _refusal(source, provider_parsed=frozenset({3}))
    assert "'flip' is a subroutine (def): call it as flip(...)" in error.reason
    assert error.line == 7


@pytest.mark.usefixtures("native")
def test_a_conversion_offloaded_to_a_worker_is_written_statement_by_statement() -> None:
    wire = qasm.offloaded("convert", ("c", BELL3, frozenset({2})))
    assert wire == _qasm_native.to_qasm2(BELL3)
    assert wire.startswith('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];')


def test_a_provider_parsed_program_may_include_only_the_standard_library() -> None:
    source = SUBROUTINE.replace('include "stdgates.inc";', 'include "mine.inc";')
    error = _refusal(source, provider_parsed=frozenset({3}))
    assert error.reason == "non-stdgates imports not currently supported"


def test_a_provider_parsed_program_with_an_input_is_refused() -> None:
    source = SUBROUTINE.replace("const int n = 3;", "const int n = 3;\ninput angle theta;")
    error = _refusal(source, provider_parsed=frozenset({3}))
    assert "input (theta)" in error.reason and error.line == 4
