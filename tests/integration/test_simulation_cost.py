"""Cost before work: the local simulator's circuits are estimated at submission, through the
real API, and one that would run for most of an hour is refused before anything is stored."""

from __future__ import annotations

import asyncio
import re

import pytest

from qjobd.backends import _aer_cost
from qjobd.backends.local import LocalBackend
from qjobd.backends.qasm import load_circuit
from qjobd.daemon.api import validation
from qjobd.daemon.api.parsing import ParsePool
from tests.conftest import BELL2, BELL3, GHZ2, Daemon, count_rows, eventually
from tests.unit.test_aer_cost import GHZ_20, RESET_18, layered

pytestmark = pytest.mark.local

#: the line of RESET_18's reset, which the refusal names
RESET_LINE = RESET_18.splitlines().index("reset q[0];") + 1


def _limit(daemon: Daemon, **config: object) -> None:
    """Give the daemon's `local` the cost model a backend configured with ``config`` has."""
    configured = LocalBackend("local", {"workers": 1, **config})
    daemon.backends["local"].capabilities = configured.capabilities


async def test_the_18_qubit_reset_circuit_at_4000_shots_is_refused_naming_estimate_and_limit(
        daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={
        "backend": "local", "shots": 4000, "circuits": {"bell": BELL3, "slow": RESET_18}})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "over_limit"
    (detail,) = error["details"]
    assert detail["label"] == "slow" and detail["line"] == RESET_LINE
    limit = detail["limit"]
    assert limit["name"] == "estimated seconds" and limit["max"] == 900
    assert limit["value"] > 900
    message = error["message"]
    assert message.startswith(f"circuit 'slow', line {RESET_LINE}: ")
    estimated = re.search(r"estimated at (\d+) s", message)
    assert estimated is not None and int(estimated[1]) == pytest.approx(limit["value"], abs=1)
    assert f"one per shot because of a reset at line {RESET_LINE}" in message
    assert "over the limit of 900 s" in message
    assert "[backends.local] max_estimated_seconds sets it" in message
    assert count_rows(daemon.db) == {"batches": 0, "jobs": 0, "circuits": 0, "results": 0,
                                     "events": 0}


async def test_ordinary_circuits_are_accepted_at_many_shots(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={
        "backend": "local", "shots": 100_000,
        "circuits": {"bell2": BELL2, "bell3": BELL3, "ghz": GHZ2, "ghz20": GHZ_20,
                     "layers20": layered(20, layers=2)}})
    assert r.status_code == 201, r.text
    await daemon.client.post(f"/v1/batches/{r.json()['id']}/cancel")


async def test_no_limit_configured_accepts_the_circuit_and_a_low_one_refuses_a_small_one(
        daemon: Daemon) -> None:
    _limit(daemon, max_estimated_seconds=0)
    r = await daemon.client.post("/v1/batches", json={
        "backend": "local", "shots": 4000, "circuits": {"slow": RESET_18}})
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]
    await daemon.client.post(f"/v1/batches/{batch_id}/cancel")

    async def canceled() -> bool:
        batch = (await daemon.client.get(f"/v1/batches/{batch_id}")).json()
        return bool(batch["state"] == "canceled")
    await eventually(canceled, 20)

    # 10 shots: a few seconds, under the default; over a limit of 1 s
    small = {"backend": "local", "shots": 10, "circuits": {"small": RESET_18}}
    _limit(daemon, max_estimated_seconds=1)
    r = await daemon.client.post("/v1/batches", json=small)
    assert r.status_code == 422, r.text
    assert "over the limit of 1 s" in r.json()["error"]["message"]
    _limit(daemon)
    r = await daemon.client.post("/v1/batches", json=small)
    assert r.status_code == 201, r.text
    await daemon.client.post(f"/v1/batches/{r.json()['id']}/cancel")


async def test_a_faster_machines_constant_changes_the_estimate(daemon: Daemon) -> None:
    _limit(daemon, seconds_per_amplitude_op=1e-10)  # 60 times this machine's
    r = await daemon.client.post("/v1/batches", json={
        "backend": "local", "shots": 4000, "circuits": {"slow": RESET_18}})
    assert r.status_code == 201, r.text
    await daemon.client.post(f"/v1/batches/{r.json()['id']}/cancel")


async def test_the_estimate_is_made_in_the_parse_workers() -> None:
    backend = LocalBackend("local", {"workers": 1})  # not started: only its capabilities
    pool = ParsePool(1)
    pool.start()
    try:
        with pytest.raises(validation.InvalidCircuits) as caught:
            await validation.check_circuits({"slow": RESET_18, "bell": BELL3}, backend,
                                            pool=pool, shots=4000)
        (detail,) = caught.value.details
        assert detail["label"] == "slow" and detail["limit"]["name"] == "estimated seconds"
        checked = await validation.check_circuits({"slow": RESET_18}, backend, pool=pool,
                                                  shots=10)
        assert [r.label for r in checked.records] == ["slow"]
    finally:
        await pool.aclose()


@pytest.mark.parametrize("tail", ["", "reset q[0];\n", "measure q[0] -> c[0];\nh q[0];\n",
                                  "measure q[0] -> c[0];\nh q[1];\n",
                                  "measure q[0] -> c[0];\nif (c==1) x q[1];\n",
                                  "measure q[0] -> c[0];\nbarrier q;\n"])
async def test_the_models_sampling_call_is_aers(tail: str) -> None:
    from qiskit_aer import AerSimulator

    source = layered(4, layers=2, tail=tail)
    circuit = load_circuit("c", source)
    result = await asyncio.to_thread(
        lambda: AerSimulator(max_parallel_threads=1).run(circuit, shots=50).result())
    sampled = result.results[0].metadata["measure_sampling"]
    assert (_aer_cost.per_shot(circuit, source) is None) == sampled


@pytest.mark.parametrize("gate", ["h", "rx(0.3)", "s", "t"])
async def test_the_models_method_is_the_one_aers_automatic_picks(gate: str) -> None:
    from qiskit_aer import AerSimulator

    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\n'
              f"{gate} q[0];\ncx q[0],q[1];\nreset q[2];\nmeasure q -> c;\n")
    circuit = load_circuit("c", source)
    result = await asyncio.to_thread(
        lambda: AerSimulator(max_parallel_threads=1).run(circuit, shots=20).result())
    model = _aer_cost.CostModel(max_seconds=0, setting="")
    estimate = _aer_cost.estimate(circuit, 20, model, source=source)
    assert estimate is not None
    assert estimate.method == result.results[0].metadata["method"]
