"""qjobd.qiskit end to end: real Qiskit programs against a real `qjobd serve` on the local
backend (one daemon for the module; it is killed with -9 and restarted on the way)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, transpile
from qiskit.circuit import Clbit, Parameter
from qiskit.primitives import BaseSamplerV2, BitArray, PrimitiveResult, SamplerPubResult
from qiskit.providers import BackendV2, JobStatus

from qjobd.client import BatchFailed, Client
from qjobd.qiskit import METADATA_KEY, QjobdBackend, QjobdSampler
from qjobd.testing.daemon_process import DaemonProcess, wait_until
from tests.conftest import EXAMPLES, short_tmpdir
from tests.system.test_e2e import LOCAL_CONFIG, SLOW

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def qjobd() -> Iterator[DaemonProcess]:
    d = DaemonProcess(short_tmpdir(), LOCAL_CONFIG)
    d.start()
    yield d
    d.stop()


def batch_count(d: DaemonProcess) -> int:
    with Client(d.socket) as client:
        return len(client.list(limit=1000))


def registers_circuit() -> QuantumCircuit:
    """Two registers of different sizes, declared in another order than the qubits are
    measured: `hi` (3 bits) reads 101 always, `lo` (1 bit) reads whether theta is pi."""
    theta = Parameter("theta")
    q = QuantumRegister(4, "q")
    hi, lo = ClassicalRegister(3, "hi"), ClassicalRegister(1, "lo")
    qc = QuantumCircuit(q, hi, lo)
    qc.rx(theta, q[0])
    qc.x(q[1])
    qc.x(q[3])
    qc.measure(q[0], lo[0])
    qc.measure(q[1], hi[0])
    qc.measure(q[2], hi[1])
    qc.measure(q[3], hi[2])
    return qc


def bell(name: str = "bell") -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name=name)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def test_the_sampler_and_backend_are_qiskit_v2_interfaces() -> None:
    assert isinstance(QjobdSampler(), BaseSamplerV2)
    backend = QjobdBackend()
    assert isinstance(backend, BackendV2)
    assert backend.num_qubits >= 24 and {"cx", "rz", "h", "measure"} <= set(
        backend.operation_names)


def test_parameters_of_any_shape_and_two_registers_give_exact_bits(qjobd) -> None:
    before = batch_count(qjobd)
    values = np.array([[[0.0], [np.pi], [0.0]], [[np.pi], [0.0], [np.pi]]])  # shape (2, 3, 1)
    sampler = QjobdSampler(socket=qjobd.socket)
    job = sampler.run([(registers_circuit(), values), (registers_circuit(), [np.pi])], shots=20)
    result = job.result()
    assert isinstance(result, PrimitiveResult) and isinstance(result[0], SamplerPubResult)
    assert batch_count(qjobd) == before + 1  # one batch for both pubs, 7 circuits

    first = result[0].data
    assert first.shape == (2, 3)
    assert isinstance(first.hi, BitArray) and isinstance(first.lo, BitArray)
    assert (first.hi.num_bits, first.lo.num_bits) == (3, 1)
    assert first.hi.shape == first.lo.shape == (2, 3)
    for i, j in np.ndindex(2, 3):
        assert first.hi.get_counts((i, j)) == {"101": 20}
        assert first.lo.get_counts((i, j)) == {"1" if (i + j) % 2 else "0": 20}
    # the registers joined: the full key, hi leftmost
    assert result[0].join_data(["lo", "hi"]).get_counts((0, 1)) == {"1011": 20}
    second = result[1].data
    assert second.shape == ()  # one binding of one parameter: a scalar pub
    assert second.lo.get_counts() == {"1": 20} and second.hi.get_counts() == {"101": 20}

    # the job id is the batch id, and the batch holds the layout
    with Client(qjobd.socket) as client:
        batch = client.get(job.job_id())
        assert sorted(client.results(batch)) == sorted(
            label for labels in job.labels for label in labels)
    assert batch.metadata[METADATA_KEY]["pubs"][0] == {
        "shape": [2, 3], "shots": 20, "registers": [["hi", 3], ["lo", 1]]}
    assert job.labels[0][:2] == ["pub0[0,0]", "pub0[0,1]"] and job.labels[1] == ["pub1"]
    assert result.metadata["qjobd_batch_id"] == job.job_id()
    assert result[0].metadata["circuit_labels"] == job.labels[0]
    assert result[0].metadata["shots"] == 20
    assert job.done() and job.in_final_state() and job.status() == JobStatus.DONE


def test_a_bell_circuit_gives_only_00_and_11_and_shots_are_honoured(qjobd) -> None:
    sampler = QjobdSampler(socket=qjobd.socket, default_shots=12)
    job = sampler.run([bell(), (bell(), None, 40), (bell(), None, 7)])
    result = job.result()
    shots = [pub.data.c.num_shots for pub in result]
    assert shots == [12, 40, 7]
    assert [pub.metadata["shots"] for pub in result] == [12, 40, 7]
    counts = result[1].data.c.get_counts()
    assert set(counts) == {"00", "11"} and sum(counts.values()) == 40
    for pub in result:
        assert set(pub.data.c.get_counts()) <= {"00", "11"}
    with Client(qjobd.socket) as client:
        batch = client.get(job.job_id())
        assert batch.shots == 40  # one batch, run at the largest pub's shots
        assert {r.shots for r in client.results(batch).circuits.values()} == {40}
    # run(shots=) is the default for pubs that name none
    again = sampler.run([bell(), (bell(), None, 3)], shots=5).result()
    assert [pub.data.c.num_shots for pub in again] == [5, 3]


def test_each_shot_keeps_its_registers_together(qjobd) -> None:
    # a Bell pair measured into two registers: in every shot a == b
    a, b = ClassicalRegister(1, "a"), ClassicalRegister(1, "b")
    qc = QuantumCircuit(QuantumRegister(2, "q"), a, b)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure(0, a[0])
    qc.measure(1, b[0])
    result = QjobdSampler(socket=qjobd.socket).run([qc], shots=64).result()
    data = result[0].data
    assert np.array_equal(data.a.array, data.b.array)
    assert set(result[0].join_data().get_counts()) == {"00", "11"}


def test_circuits_without_registers_for_every_bit_are_refused_before_submitting(qjobd) -> None:
    loose = QuantumCircuit(1)
    loose.add_bits([Clbit()])
    loose.measure(0, 0)
    none = QuantumCircuit(1)
    before = batch_count(qjobd)
    sampler = QjobdSampler(socket=qjobd.socket)
    with pytest.raises(ValueError, match="exactly one register"):
        sampler.run([loose])
    with pytest.raises(ValueError, match="no classical register"):
        sampler.run([none])
    assert batch_count(qjobd) == before


def _reattach(d: DaemonProcess, code: str) -> dict:
    """Run ``code`` in a new interpreter (socket from $QJOBD_SOCKET); its JSON output."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=d.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_a_sampler_job_reattaches_from_a_new_process_after_kill_9_and_restart(qjobd) -> None:
    values = np.array([[0.0], [np.pi / 2], [np.pi]])
    job = QjobdSampler(socket=qjobd.socket).run(
        [(registers_circuit(), values), (bell(), None, 9)], shots=32)
    original = job.result()
    qjobd.kill()
    qjobd.start()
    seen = _reattach(qjobd, f"""
        import json
        from qjobd.qiskit import QjobdSampler
        result = QjobdSampler.job({job.job_id()!r}).result()   # the socket from the env
        print(json.dumps({{
            "pubs": [{{name: pub.data[name].array.tolist() for name in pub.data}}
                     for pub in result],
            "shapes": [list(pub.data.shape) for pub in result],
            "shots": [pub.metadata["shots"] for pub in result],
            "batch": result.metadata["qjobd_batch_id"]}}))
        """)
    assert seen["batch"] == job.job_id()
    assert seen["shapes"] == [[3], []] and seen["shots"] == [32, 9]
    for pub, arrays in zip(original, seen["pubs"], strict=True):
        assert sorted(arrays) == sorted(pub.data)
        for name, array in arrays.items():
            assert np.array_equal(np.array(array, dtype=np.uint8), pub.data[name].array)
    assert original[0].data.lo.get_counts(1).keys() <= {"0", "1"}
    assert original[0].data.lo.get_counts(2) == {"1": 32}


def test_backend_run_gives_counts_in_circuit_order(qjobd) -> None:
    backend = QjobdBackend(socket=qjobd.socket)
    deterministic = registers_circuit().assign_parameters([np.pi])
    deterministic.name = "fixed"
    circuits = [bell("first"), transpile(deterministic, backend=backend), bell("third")]
    job = backend.run(circuits, shots=25)
    result = job.result()
    assert result.job_id == job.job_id()
    counts = result.get_counts()
    assert len(counts) == 3
    # Qiskit's formatting: registers separated by a space, the last register leftmost
    assert counts[1] == {"1 101": 25}
    assert set(counts[0]) <= {"00", "11"} and sum(counts[0].values()) == 25
    assert result.get_counts(circuits[1]) == {"1 101": 25}
    assert result.get_counts("third") == counts[2]
    assert job.status() == JobStatus.DONE
    with Client(qjobd.socket) as client:
        assert client.get(job.job_id()).shots == 25
    # reattached by id: the same counts, in the same order
    assert QjobdBackend.job(job.job_id(), socket=qjobd.socket).result().get_counts() == counts
    with pytest.raises(ValueError, match=r"not submitted by qjobd\.qiskit\.QjobdSampler"):
        QjobdSampler.job(job.job_id(), socket=qjobd.socket)
    # the backend's default shots
    assert backend.options.shots == 1024
    assert sum(backend.run(bell()).result().get_counts().values()) == 1024


def test_a_backend_job_reattaches_from_a_new_process_after_kill_9_mid_run(qjobd) -> None:
    slow = QuantumCircuit.from_qasm_str(SLOW)
    slow.name = "slow"
    fixed = registers_circuit().assign_parameters([0.0])
    job = QjobdBackend(socket=qjobd.socket).run([slow, fixed], shots=10)
    with Client(qjobd.socket) as client:
        wait_until(lambda: client.get(job.job_id()).state == "running", 60, "a running batch")
    qjobd.kill()
    qjobd.start()
    seen = _reattach(qjobd, f"""
        import json
        from qjobd.qiskit import QjobdBackend
        job = QjobdBackend.job({job.job_id()!r})
        print(json.dumps({{"counts": job.result().get_counts(), "status": job.status().name}}))
        """)
    assert seen["status"] == "DONE"
    slow_counts, fixed_counts = seen["counts"]
    assert sum(slow_counts.values()) == 10 and all(len(k) == 18 for k in slow_counts)
    assert fixed_counts == {"0 101": 10}


def test_cancel_ends_a_backend_job_canceled(qjobd) -> None:
    slow = QuantumCircuit.from_qasm_str(SLOW)
    job = QjobdBackend(socket=qjobd.socket).run([slow, slow, slow], shots=10)
    assert job.cancel()
    assert job.cancel()  # idempotent
    with Client(qjobd.socket) as client:
        wait_until(lambda: client.get(job.job_id()).terminal, 60, "a terminal batch")
    assert job.status() == JobStatus.CANCELLED
    with pytest.raises(BatchFailed) as failed:
        job.result()
    assert failed.value.state == "canceled"


def test_the_example_runs(qjobd) -> None:
    r = subprocess.run([sys.executable, str(EXAMPLES / "qiskit_sampler.py"), "--shots", "50"],
                       env=qjobd.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reattached: same arrays" in r.stdout
    assert "theta=pi    pair=" in r.stdout and "flag={'1': 50}" in r.stdout
