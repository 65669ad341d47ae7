"""The local simulator's cost model (backends/_aer_cost.py): when Aer must simulate shot by
shot, how the estimate scales, the refusal it makes at submission, and its settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qjobd.backends import _aer_cost
from qjobd.backends.local import DEFAULT_MAX_ESTIMATED_SECONDS, LocalBackend
from qjobd.backends.qasm import OverLimit, check_circuit, load_circuit
from qjobd.daemon.api import validation
from qjobd.daemon.process.main import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = _aer_cost.CostModel(max_seconds=900, setting="[backends.local] max_estimated_seconds")
HEADER = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'


def layered(qubits: int, layers: int = 10, tail: str = "") -> str:
    """rx on every qubit and a CX chain per layer (not Clifford), measured at the end."""
    lines = [f"qreg q[{qubits}];", f"creg c[{qubits}];"]
    for layer in range(layers):
        lines += [f"rx(0.{layer % 9 + 1}) q[{i}];" for i in range(qubits)]
        lines += [f"cx q[{i}],q[{i + 1}];" for i in range(qubits - 1)]
    return HEADER + "\n".join(lines) + "\n" + tail + "measure q -> c;\n"


#: the issue's case: 18 qubits, a reset before the final measurement, at 4,000 shots
RESET_18 = layered(18, tail="reset q[0];\nh q[0];\n")
BELL = HEADER + "qreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
GHZ_20 = HEADER + "qreg q[20];\ncreg c[20];\nrx(0.3) q[0];\n" + "".join(
    f"cx q[{i}],q[{i + 1}];\n" for i in range(19)) + "measure q -> c;\n"


def estimate(source: str, shots: int = 4000, method: str = "automatic") -> _aer_cost.Estimate:
    answer = _aer_cost.estimate(load_circuit("c", source), shots, MODEL, method=method,
                                source=source)
    assert answer is not None
    return answer


# -- sampled or shot by shot -------------------------------------------------------------

def test_terminal_measurements_only_are_sampled_from_one_run() -> None:
    for source in (BELL, GHZ_20, layered(12)):
        assert _aer_cost.per_shot(load_circuit("c", source), source) is None
        assert estimate(source).runs == 1


def test_a_reset_makes_every_shot_a_run_and_names_its_line() -> None:
    why = _aer_cost.per_shot(load_circuit("c", RESET_18), RESET_18)
    assert why is not None and why.reason == "a reset"
    assert why.line == RESET_18.splitlines().index("reset q[0];") + 1
    assert estimate(RESET_18).runs == 4000


def test_a_gate_on_a_measured_qubit_is_a_mid_circuit_measurement() -> None:
    source = HEADER + ("qreg q[3];\ncreg c[3];\nh q[0];\n// measure here is a comment\n"
                       "measure q[0] -> c[0];\nbarrier q;\nh q[0];\nmeasure q -> c;\n")
    why = _aer_cost.per_shot(load_circuit("c", source), source)
    assert why is not None and "mid-circuit measurement" in why.reason
    assert why.line == 7  # the measurement, not the comment above it


def test_a_gate_after_a_measurement_on_another_qubit_still_samples() -> None:
    # Aer agrees (measure_sampling: True): the gate commutes with the measurement
    source = HEADER + "qreg q[2];\ncreg c[2];\nh q[0];\nmeasure q[0] -> c[0];\nh q[1];\n" \
                      "measure q[1] -> c[1];\n"
    assert _aer_cost.per_shot(load_circuit("c", source), source) is None


def test_measuring_twice_at_the_end_still_samples() -> None:
    source = HEADER + "qreg q[2];\ncreg c[2];\nh q[0];\nmeasure q[0] -> c[0];\nmeasure q -> c;\n"
    assert _aer_cost.per_shot(load_circuit("c", source), source) is None


def test_a_classical_condition_is_simulated_shot_by_shot() -> None:
    source = HEADER + "qreg q[2];\ncreg c[2];\nh q[0];\nmeasure q[0] -> c[0];\n" \
                      "if (c==1) x q[1];\nmeasure q -> c;\n"
    why = _aer_cost.per_shot(load_circuit("c", source), source)
    assert why is not None and "control flow" in why.reason and why.line == 7


# -- how the estimate scales --------------------------------------------------------------

def test_the_estimate_is_runs_times_operations_times_amplitudes_times_the_constant() -> None:
    e = estimate(RESET_18)
    assert e.method == "statevector" and e.qubits == 18
    assert e.operations == 10 * (18 + 17) + 2 + 18
    assert e.seconds == pytest.approx(4000 * e.operations * 2**18 * MODEL.seconds_per_amplitude_op)


def test_per_shot_cost_grows_with_shots_and_sampled_cost_does_not() -> None:
    assert estimate(RESET_18, 8000).seconds == pytest.approx(2 * estimate(RESET_18).seconds)
    assert estimate(layered(18), 8000).seconds == estimate(layered(18), 10).seconds


def test_each_qubit_doubles_the_statevector_estimate_per_operation() -> None:
    small, large = estimate(layered(16, tail="reset q[0];\n")), estimate(
        layered(17, tail="reset q[0];\n"))
    assert large.seconds / large.operations == pytest.approx(2 * small.seconds / small.operations)


def test_a_density_matrix_costs_the_square_and_an_unmodelled_method_is_not_estimated() -> None:
    sv = estimate(layered(8), method="statevector")
    dm = estimate(layered(8), method="density_matrix")
    assert dm.seconds == pytest.approx(sv.seconds * 2**8 * _aer_cost.DENSITY_MATRIX_FACTOR)
    # a reset is a channel on a density matrix: Aer still samples (its measure_sampling)
    assert estimate(layered(8, tail="reset q[0];\n"), method="density_matrix").runs == 1
    assert _aer_cost.estimate(load_circuit("c", BELL), 10, MODEL,
                              method="matrix_product_state") is None


def test_a_clifford_circuit_is_estimated_as_aers_automatic_method_runs_it_stabilizer() -> None:
    clifford = HEADER + "qreg q[20];\ncreg c[20];\n" + "".join(
        f"h q[{i}];\ncx q[{i}],q[{(i + 1) % 20}];\n" for i in range(20)) * 8 + \
        "reset q[0];\nmeasure q -> c;\n"
    e = estimate(clifford)
    assert e.method == "stabilizer" and e.runs == 4000
    assert e.seconds < 1 < estimate(clifford, method="statevector").seconds


def test_a_for_loops_body_counts_once_per_iteration() -> None:
    source = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
              "for int i in [0:9] {\n  rx(0.1) q[0];\n  cx q[0], q[1];\n}\nc = measure q;\n")
    e = estimate(source)
    assert e.operations == 1 + 10 * 2 + 2 and e.runs == 4000


def test_a_gate_of_the_programs_own_counts_as_the_gates_it_is_made_of() -> None:
    source = HEADER + ("gate layer a, b { rx(0.1) a; rx(0.2) b; cx a, b; cx b, a; }\n"
                       "gate twice a, b { layer a, b; layer b, a; }\n"
                       "qreg q[2];\ncreg c[2];\n" + "twice q[0], q[1];\n" * 5
                       + "reset q[0];\nmeasure q -> c;\n")
    e = estimate(source)
    assert e.operations == 5 * 2 * 4 + 1 + 2 and e.runs == 4000


def test_the_explanation_gives_the_figure_and_its_terms() -> None:
    text = estimate(RESET_18).explain()
    assert re.fullmatch(r"its simulation is estimated at \d+ s \(\d+ min\): 4000 runs, one "
                        r"per shot because of a reset at line \d+, x 370 operations x 2\*\*18 "
                        r"amplitudes x 7e-09 s \(statevector\)", text), text
    assert "1 run (all 4000 shots sampled from it) x" in estimate(layered(18)).explain()


# -- the check at submission ---------------------------------------------------------------

def test_check_circuit_refuses_over_the_limit_with_the_estimate_and_the_limit() -> None:
    with pytest.raises(OverLimit) as caught:
        check_circuit("slow", RESET_18, cost=_aer_cost.CostCheck(MODEL, 4000))
    error = caught.value
    assert error.limit == "estimated seconds" and error.maximum == 900
    assert error.value is not None and error.value > 900
    assert error.line == RESET_18.splitlines().index("reset q[0];") + 1
    assert "over the limit of 900 s" in str(error) and "circuit 'slow'" in str(error)
    # fewer shots, or no limit: accepted
    check_circuit("slow", RESET_18, cost=_aer_cost.CostCheck(MODEL, 100))
    unlimited = _aer_cost.CostModel(max_seconds=0, setting="")
    check_circuit("slow", RESET_18, cost=_aer_cost.CostCheck(unlimited, 4000))


def test_ordinary_circuits_pass_the_default_limit_at_the_most_shots() -> None:
    model = LocalBackend("local", {"workers": 1}).capabilities.simulation_cost
    assert model is not None and model.max_seconds == DEFAULT_MAX_ESTIMATED_SECONDS
    for source in (BELL, GHZ_20, layered(20)):
        check_circuit("ok", source, cost=_aer_cost.CostCheck(model, 1_000_000))
    with pytest.raises(OverLimit):
        check_circuit("slow", RESET_18, cost=_aer_cost.CostCheck(model, 4000))


def test_the_plan_checks_the_batchs_shots_and_method() -> None:
    backend = LocalBackend("local", {"workers": 1})
    plan = validation.circuit_plan(backend, shots=4000, options={"method": "statevector"})
    assert plan.cost == _aer_cost.CostCheck(backend.capabilities.simulation_cost, 4000,
                                            "statevector")  # type: ignore[arg-type]
    assert "[backends.local] max_estimated_seconds" in plan.sources["estimated seconds"]
    [refused] = validation.check_chunk([("slow", RESET_18)], plan)
    assert isinstance(refused, OverLimit)
    assert "[backends.local] max_estimated_seconds sets it" in refused.reason
    assert validation.circuit_plan(backend).cost is None  # no shots: nothing estimated


# -- settings ----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [("max_estimated_seconds", -1),
                                            ("max_estimated_seconds", "1h"),
                                            ("seconds_per_amplitude_op", 0),
                                            ("seconds_per_amplitude_op", True)])
def test_a_bad_cost_setting_is_refused_naming_it(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        LocalBackend("local", {key: value})


async def test_a_reload_applies_new_cost_settings_and_keeps_them_if_bad() -> None:
    backend = LocalBackend("local", {"workers": 1})
    await backend.reconfigure({"workers": 1, "max_estimated_seconds": 60,
                               "seconds_per_amplitude_op": 1e-8})
    model = backend.capabilities.simulation_cost
    assert model is not None and (model.max_seconds, model.seconds_per_amplitude_op) == (60, 1e-8)
    with pytest.raises(ValueError, match="max_estimated_seconds"):
        await backend.reconfigure({"max_estimated_seconds": -5})
    assert backend.capabilities.simulation_cost == model


def test_check_config_shows_the_estimate_limit_and_where_it_is_set(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text('[backends.sim]\ntype = "local"\nmax_estimated_seconds = 60\n'
                    "seconds_per_amplitude_op = 1e-8\n")
    assert main(["check-config", "--config", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)["circuit_limits"]["sim"]
    assert shown["max_estimated_seconds"] == 60
    assert shown["seconds_per_amplitude_op"] == 1e-8
    assert "[backends.sim] max_estimated_seconds" in shown["estimated_seconds_from"]


@pytest.mark.parametrize("doc", ["README.md", "systemd/qjobd.toml"])
def test_the_estimate_limit_is_documented_with_its_default(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert re.search(rf"^#? ?max_estimated_seconds = {DEFAULT_MAX_ESTIMATED_SECONDS}(?=\s|$)",
                     text, re.M), f"{doc} does not show max_estimated_seconds"
