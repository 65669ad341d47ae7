"""backends.qasm: parsing, validation with locations, and conversion between versions."""

from __future__ import annotations

import pickle

import pytest

from qjobd.backends.qasm import NO_MEASUREMENT, ParsedCircuit, QasmError, convert, parse_circuit
from tests.conftest import BELL2, BELL3, GHZ2

GHZ_2 = "// a comment before the header\n" + GHZ2

GHZ_3 = """\
OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[1] a;
bit[2] b;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
a[0] = measure q[0];
b = measure q[1:2];
"""

FEED_FORWARD_3 = """\
OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
c[0] = measure q[0];
if (c[0]) { x q[1]; }
c[1] = measure q[1];
"""


def _error(source: str, label: str = "c") -> QasmError:
    with pytest.raises(QasmError) as caught:
        parse_circuit(label, source)
    return caught.value


def _location(error: QasmError) -> tuple[int | None, int | None]:
    return error.line, error.column


@pytest.mark.parametrize(
    ("source", "version", "qubits", "clbits"),
    [(BELL2, 2, 2, 2), (BELL3, 3, 2, 2), (GHZ_2, 2, 3, 3), (GHZ_3, 3, 3, 3)],
    ids=["bell-v2", "bell-v3", "ghz-v2", "ghz-v3"],
)
def test_valid_circuits_parse_with_their_widths(
    source: str, version: int, qubits: int, clbits: int
) -> None:
    parsed = parse_circuit("c", source)
    assert parsed == ParsedCircuit("c", source, version, qubits, clbits)


def test_the_same_source_is_reported_under_each_label() -> None:
    assert parse_circuit("a", BELL3).label == "a"
    assert parse_circuit("b", BELL3).label == "b"
    broken = BELL3.replace("h q[0];", "h q[0]")
    assert _error(broken, "a").label == "a"
    assert str(_error(broken, "b")).startswith("circuit 'b', line 6")


def test_a_source_without_header_is_openqasm_3() -> None:
    source = BELL3.removeprefix("OPENQASM 3.0;\n")
    assert parse_circuit("c", source).qasm_version == 3


def test_openqasm_3_minor_versions_are_accepted() -> None:
    assert parse_circuit("c", BELL3.replace("3.0", "3.1", 1)).qasm_version == 3
    assert parse_circuit("c", BELL3.replace("3.0", "3", 1)).qasm_version == 3


def test_v2_syntax_error_reports_1_based_line_and_column() -> None:
    error = _error(BELL2.replace("measure q -> c;", "measure q -> ;"), "bell")
    assert _location(error) == (7, 14)
    assert "classical argument" in error.reason
    assert str(error).startswith("circuit 'bell', line 7, column 14: ")


def test_v2_missing_semicolon_is_reported_where_the_next_statement_starts() -> None:
    error = _error(BELL2.replace("h q[0];", "h q[0]"))
    assert _location(error) == (6, 1)


def test_v3_parser_error_reports_1_based_line_and_column() -> None:
    error = _error(BELL3.replace("h q[0];", "h q[0]"))
    assert _location(error) == (6, 1)
    assert "missing ';'" in error.reason


def test_v3_lexer_error_reports_1_based_line_and_column() -> None:
    error = _error(BELL3.replace("cx q[0], q[1];", "  cx q[0], q[1] $;"))
    assert _location(error) == (6, 17)
    assert "token recognition error" in error.reason


def test_v3_error_inside_a_block_is_located() -> None:
    source = "OPENQASM 3.0;\nqubit q;\nbit c;\nif (c) {\n    pragma no\n}\nc = measure q;\n"
    assert _location(_error(source)) == (5, 5)


@pytest.mark.parametrize(
    ("source", "location"),
    [
        (BELL2.replace("h q[0];", "  foo q[0];"), (5, 3)),
        (BELL3.replace("h q[0];", "   foo q[0];"), (5, 4)),
    ],
    ids=["v2", "v3"],
)
def test_undefined_gate_is_located(source: str, location: tuple[int, int]) -> None:
    error = _error(source)
    assert _location(error) == location
    assert "foo" in error.reason


def test_v3_undefined_register_column_is_a_column_not_a_file_offset() -> None:
    error = _error(BELL3.replace("h q[0];", "h   r[0];"))
    assert _location(error) == (5, 5)
    assert "'r'" in error.reason


def test_v2_out_of_range_index_is_located() -> None:
    error = _error(BELL2.replace("h q[0];", "h q[5];"))
    assert _location(error) == (5, 5)
    assert "out-of-range" in error.reason


def test_v3_out_of_range_index_is_located_at_its_statement() -> None:
    error = _error(BELL3.replace("h q[0];", "h q[0];\n  x q[5];"))
    assert error.reason == "IndexError: index out of range"
    assert _location(error) == (6, 3)


@pytest.mark.parametrize(
    ("header", "location"),
    [("OPENQASM 4.0;", (1, 10)), ("/* old */\n  OPENQASM 1.0;", (2, 12))],
)
def test_unsupported_version_is_refused_at_the_version(
    header: str, location: tuple[int, int]
) -> None:
    error = _error(f"{header}\nqubit q;\nbit c;\nc = measure q;\n")
    assert "unsupported OpenQASM version" in error.reason
    assert _location(error) == location


def test_openqasm_2_1_is_refused_by_the_v2_parser() -> None:
    error = _error(BELL2.replace("2.0", "2.1", 1))
    assert _location(error) == (1, 10)


@pytest.mark.parametrize("source", ["", "  \n\t\n"])
def test_empty_source_is_refused(source: str) -> None:
    error = _error(source)
    assert error.reason == "the source is empty"
    assert _location(error) == (None, None)


def test_a_comment_only_source_is_refused() -> None:
    assert _error("// nothing here\n").reason == "the program has no statements"


@pytest.mark.parametrize(
    "source",
    [
        BELL3.replace("c = measure q;\n", ""),
        BELL2.replace("creg c[2];\n", "").replace("measure q -> c;\n", ""),
        "OPENQASM 3.0;\nbit[2] c;\n",
    ],
    ids=["v3-unmeasured", "v2-no-clbits", "no-qubits"],
)
def test_a_circuit_without_measurements_is_refused(source: str) -> None:
    error = _error(source)
    assert error.reason in (NO_MEASUREMENT, "the circuit has no qubits")


def test_a_measurement_inside_control_flow_counts() -> None:
    source = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\nbit c;\nbit d;\n'
    source += "h q;\nif (d) { c = measure q; }\n"
    assert parse_circuit("c", source).num_clbits == 2


def test_unbound_input_parameters_are_refused() -> None:
    source = BELL3.replace("h q[0];", "input float theta;\nrx(theta) q[0];")
    assert "unbound parameters: theta" in _error(source).reason


def test_v2_includes_cannot_read_the_daemons_files() -> None:
    error = _error(BELL2.replace("qelib1.inc", "/etc/passwd"))
    assert "unable to find '/etc/passwd'" in error.reason


def test_error_serialises_for_the_api_and_across_processes() -> None:
    error = QasmError("bell", "bad", 6, 9)
    assert error.to_dict() == {"label": "bell", "line": 6, "column": 9, "reason": "bad"}
    assert str(error) == "circuit 'bell', line 6, column 9: bad"
    assert str(QasmError("bell", "bad", 6)) == "circuit 'bell', line 6: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.label, copy.reason, copy.line, copy.column) == ("bell", "bad", 6, 9)


@pytest.mark.parametrize("source", [BELL3, GHZ_2, FEED_FORWARD_3])
def test_a_source_in_an_accepted_version_is_sent_unchanged(source: str) -> None:
    parsed = parse_circuit("c", source)
    assert convert(parsed, frozenset({parsed.qasm_version})) is source


@pytest.mark.parametrize(("source", "target"), [(BELL3, 2), (GHZ_3, 2), (BELL2, 3), (GHZ_2, 3)])
def test_conversion_round_trips(source: str, target: int) -> None:
    parsed = parse_circuit("c", source)
    converted = convert(parsed, frozenset({target}))
    again = parse_circuit("c", converted)
    assert again.qasm_version == target
    assert (again.num_qubits, again.num_clbits) == (parsed.num_qubits, parsed.num_clbits)


def test_classical_control_flow_has_no_openqasm_2_form() -> None:
    parsed = parse_circuit("ff", FEED_FORWARD_3)
    with pytest.raises(QasmError) as caught:
        convert(parsed, frozenset({2}))
    assert caught.value.label == "ff"
    assert "OpenQASM 2" in caught.value.reason
