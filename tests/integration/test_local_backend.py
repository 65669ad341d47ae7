"""backends.local: real Aer in real worker processes, presented like a remote provider."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Collection

import anyio
import pytest

from qjobd.backends.base import Circuit, RemoteState, SubmitRequest
from qjobd.backends.errors import Rejected
from qjobd.backends.local import LocalBackend
from qjobd.backends.qasm import parse_circuit
from tests.conftest import BELL3, GHZ2

X_ON_QUBIT_0 = """\
OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
x q[0];
measure q[0] -> c[0];
"""

NON_CLIFFORD = """\
OPENQASM 2.0;
include "qelib1.inc";
qreg q[1];
creg c[1];
h q[0];
t q[0];
h q[0];
measure q[0] -> c[0];
"""


def _slow_source(qubits: int = 20, layers: int = 10) -> str:
    """Seconds per shot: the mid-circuit measurements make Aer simulate every shot."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];", f"creg c[{qubits}];"]
    for layer in range(layers):
        lines += [f"rx(0.{layer + 1}) q[{i}];" for i in range(qubits)]
        lines += [f"cx q[{i}],q[{i + 1}];" for i in range(qubits - 1)]
        lines.append("measure q[0] -> c[0];")
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


SLOW = _slow_source()


def circuit(label: str, source: str) -> Circuit:
    parsed = parse_circuit(label, source)
    return Circuit(label, source, parsed.qasm_version, parsed.num_clbits)


def request(*circuits: Circuit, shots: int = 1000, **options: object) -> SubmitRequest:
    return SubmitRequest(
        submission_key=f"key-{circuits[0].label}", circuits=circuits, shots=shots, options=options
    )


async def wait_for(
    backend: LocalBackend, remote_id: str, states: Collection[RemoteState]
) -> RemoteState:
    with anyio.fail_after(15):
        while True:
            state = (await backend.status([remote_id]))[remote_id].state
            if state in states:
                return state
            await anyio.sleep(0.01)


async def run_to_counts(backend: LocalBackend, c: Circuit, shots: int, **options: object) -> dict:
    remote_id = await backend.submit(request(c, shots=shots, **options))
    assert await wait_for(backend, remote_id, {RemoteState.COMPLETED}) is RemoteState.COMPLETED
    return (await backend.results(remote_id, [c]))[c.label]


def worker_processes() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("qjobd-")]


def exists(pid: int | None) -> bool:
    """Whether the process is still there, zombie included (a reaped one has no /proc entry)."""
    return os.path.exists(f"/proc/{pid}")


@pytest.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    backend = LocalBackend("local", {"workers": 2})
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
async def one_worker() -> AsyncIterator[LocalBackend]:
    backend = LocalBackend("local", {"workers": 1})
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_bell_counts_are_only_00_and_11_and_sum_to_the_shots(backend: LocalBackend) -> None:
    counts = await run_to_counts(backend, circuit("bell", BELL3), 2000)
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 2000


async def test_two_registers_give_one_key_without_spaces(backend: LocalBackend) -> None:
    counts = await run_to_counts(backend, circuit("ghz", GHZ2), 500)
    assert set(counts) == {"000", "111"}
    assert sum(counts.values()) == 500


async def test_keys_are_in_qiskit_order_highest_clbit_leftmost(backend: LocalBackend) -> None:
    assert await run_to_counts(backend, circuit("x", X_ON_QUBIT_0), 100) == {"01": 100}


async def test_the_same_seed_gives_the_same_counts(backend: LocalBackend) -> None:
    bell = circuit("bell", BELL3)
    first = await run_to_counts(backend, bell, 1000, seed_simulator=7, method="statevector")
    second = await run_to_counts(backend, bell, 1000, seed_simulator=7, method="statevector")
    assert first == second


async def test_a_job_is_queued_then_completes(backend: LocalBackend) -> None:
    remote_id = await backend.submit(request(circuit("bell", BELL3)))
    first = (await backend.status([remote_id]))[remote_id]
    assert first.state in (RemoteState.QUEUED, RemoteState.RUNNING)
    assert first.raw == first.state.value
    assert await wait_for(backend, remote_id, {RemoteState.COMPLETED}) is RemoteState.COMPLETED


async def test_unknown_ids_are_absent_from_status(backend: LocalBackend) -> None:
    remote_id = await backend.submit(request(circuit("bell", BELL3)))
    assert set(await backend.status([remote_id, "no-such-job"])) == {remote_id}
    with pytest.raises(Rejected):
        await backend.results("no-such-job", [circuit("bell", BELL3)])


async def test_a_simulation_that_fails_reports_failed_with_the_error(
    backend: LocalBackend,
) -> None:
    remote_id = await backend.submit(
        request(circuit("t", NON_CLIFFORD), method="stabilizer", shots=10)
    )
    assert await wait_for(backend, remote_id, {RemoteState.FAILED, RemoteState.COMPLETED}) is (
        RemoteState.FAILED
    )
    status = (await backend.status([remote_id]))[remote_id]
    assert status.error
    assert "stabilizer" in status.error
    with pytest.raises(Rejected):
        await backend.results(remote_id, [circuit("t", NON_CLIFFORD)])


async def test_a_canceled_queued_job_never_runs_and_cancel_is_idempotent(
    one_worker: LocalBackend,
) -> None:
    slow = await one_worker.submit(request(circuit("slow", SLOW)))
    await wait_for(one_worker, slow, {RemoteState.RUNNING})
    queued = await one_worker.submit(request(circuit("bell", BELL3)))
    assert (await one_worker.status([queued]))[queued].state is RemoteState.QUEUED

    await one_worker.cancel([queued])
    await one_worker.cancel([queued, "no-such-job"])
    assert (await one_worker.status([queued]))[queued].state is RemoteState.CANCELED

    # Free the worker; the job queued after the canceled one runs, the canceled one never.
    await one_worker.cancel([slow])
    after = await one_worker.submit(request(circuit("bell", BELL3)))
    await wait_for(one_worker, after, {RemoteState.COMPLETED})
    assert (await one_worker.status([queued]))[queued].state is RemoteState.CANCELED
    with pytest.raises(Rejected):
        await one_worker.results(queued, [circuit("bell", BELL3)])


async def test_canceling_a_running_job_stops_its_worker_which_is_replaced(
    one_worker: LocalBackend,
) -> None:
    slow = await one_worker.submit(request(circuit("slow", SLOW)))
    await wait_for(one_worker, slow, {RemoteState.RUNNING})
    [worker] = [p.pid for p in worker_processes()]

    await one_worker.cancel([slow])
    assert (await one_worker.status([slow]))[slow].state is RemoteState.CANCELED
    await one_worker.cancel([slow])

    counts = await run_to_counts(one_worker, circuit("bell", BELL3), 100)
    assert sum(counts.values()) == 100
    assert (await one_worker.status([slow]))[slow].state is RemoteState.CANCELED
    [replacement] = worker_processes()
    assert replacement.pid != worker
    assert not exists(worker)


async def test_a_worker_that_dies_mid_job_fails_the_job_and_is_replaced(
    one_worker: LocalBackend,
) -> None:
    slow = await one_worker.submit(request(circuit("slow", SLOW)))
    await wait_for(one_worker, slow, {RemoteState.RUNNING})
    [worker] = [p.pid for p in worker_processes()]
    assert worker is not None

    os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would

    assert await wait_for(one_worker, slow, {RemoteState.FAILED}) is RemoteState.FAILED
    error = (await one_worker.status([slow]))[slow].error
    assert error is not None
    assert "SIGKILL" in error
    assert sum((await run_to_counts(one_worker, circuit("bell", BELL3), 10)).values()) == 10


async def test_aclose_during_a_long_simulation_is_quick_and_leaves_no_processes() -> None:
    backend = LocalBackend("local", {"workers": 2})
    await backend.start()
    slow = await backend.submit(request(circuit("slow", SLOW)))
    await wait_for(backend, slow, {RemoteState.RUNNING})
    pids = [p.pid for p in worker_processes()]
    assert len(pids) == 2

    with anyio.fail_after(2):
        await backend.aclose()
        await backend.aclose()

    assert worker_processes() == []
    assert [pid for pid in pids if exists(pid)] == []


async def test_circuits_wider_than_max_qubits_are_rejected() -> None:
    backend = LocalBackend("local", {"workers": 1, "max_qubits": 2})
    assert backend.capabilities.max_qubits == 2
    await backend.start()
    try:
        with pytest.raises(Rejected, match="at most 2"):
            await backend.submit(request(circuit("ghz", GHZ2)))
        with pytest.raises(Rejected, match="shots"):
            await backend.submit(request(circuit("bell", BELL3), shots=0))
        with pytest.raises(Rejected, match="colour"):
            await backend.submit(request(circuit("bell", BELL3), colour="red"))
    finally:
        await backend.aclose()


def test_options_are_checked_by_name() -> None:
    backend = LocalBackend("local", {})
    backend.validate_options({"seed_simulator": 3, "method": "matrix_product_state"})
    with pytest.raises(ValueError, match="'shots_per_second'"):
        backend.validate_options({"shots_per_second": 3})
    with pytest.raises(ValueError, match="method"):
        backend.validate_options({"method": "unitary"})
    with pytest.raises(ValueError, match="seed_simulator"):
        backend.validate_options({"seed_simulator": True})


@pytest.mark.parametrize(
    "config",
    [{"workers": 0}, {"workers": "2"}, {"max_qubits": -1}, {"max_qubits": 2.5}, {"wokers": 2}],
)
def test_bad_config_is_refused(config: dict) -> None:
    with pytest.raises(ValueError):
        LocalBackend("local", config)
