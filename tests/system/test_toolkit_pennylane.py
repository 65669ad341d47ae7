"""qjobd.pennylane end to end: real PennyLane QNodes on the device qjobd.remote against a
real `qjobd serve` on the local backend (one daemon for the module)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pennylane as qml
import pytest
from pennylane import numpy as pnp
from pennylane.exceptions import DeviceError

from qjobd.client import Client
from qjobd.pennylane import QjobdDevice
from qjobd.testing.daemon_process import DaemonProcess
from tests.conftest import EXAMPLES, short_tmpdir
from tests.system.test_e2e import LOCAL_CONFIG

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def qjobd() -> Iterator[DaemonProcess]:
    d = DaemonProcess(short_tmpdir(), LOCAL_CONFIG)
    d.start()
    yield d
    d.stop()


def batches(d: DaemonProcess) -> list:
    with Client(d.socket) as client:
        return list(client.list(limit=1000))


def device(d: DaemonProcess, wires: object = 2) -> QjobdDevice:
    return qml.device("qjobd.remote", wires=wires, backend="local", socket=str(d.socket))


def test_the_device_is_found_by_its_entry_point(qjobd) -> None:
    dev = device(qjobd)
    assert isinstance(dev, QjobdDevice) and isinstance(dev, qml.devices.Device)
    assert dev.name == "qjobd.remote" and len(dev.wires) == 2


def test_expval_of_z_on_a_deterministic_circuit_is_exactly_plus_or_minus_one(qjobd) -> None:
    dev = device(qjobd)

    @qml.set_shots(50)
    @qml.qnode(dev)
    def circuit():
        qml.PauliX(wires=0)
        return qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1)), qml.var(qml.PauliZ(0))

    z0, z1, var = circuit()
    assert (z0, z1, var) == (-1.0, 1.0, 0.0)


def test_probs_counts_and_samples_put_wire_0_leftmost(qjobd) -> None:
    # |100> on three wires: PennyLane's index 0b100 = 4; a qjobd counts key reads "001"
    dev = device(qjobd, 3)

    @qml.set_shots(40)
    @qml.qnode(dev)
    def circuit():
        qml.PauliX(wires=0)
        return (qml.probs(wires=[0, 1, 2]), qml.probs(wires=[2, 0]), qml.counts(),
                qml.sample(wires=[0, 1, 2]))

    probs, probs_20, counts, samples = circuit()
    assert np.array_equal(probs, np.eye(8)[4])
    assert np.array_equal(probs_20, np.eye(4)[1])  # wire 2 = 0, wire 0 = 1: |01>
    assert dict(counts) == {"100": 40}
    assert samples.shape == (40, 3) and (samples == [1, 0, 0]).all()
    with Client(qjobd.socket) as client:
        [label] = client.results(dev.batch_ids[-1]).counts
        assert client.results(dev.batch_ids[-1]).counts[label] == {"001": 40}


def test_string_wire_labels_follow_the_devices_wire_order(qjobd) -> None:
    dev = device(qjobd, ["a", "b"])

    @qml.set_shots(20)
    @qml.qnode(dev)
    def circuit():
        qml.PauliX(wires="b")
        return qml.probs(wires=["a", "b"]), qml.expval(qml.PauliZ("a") @ qml.PauliZ("b"))

    probs, zz = circuit()
    assert np.array_equal(probs, np.eye(4)[1]) and zz == -1.0


def test_a_bell_pair_and_pauli_words_from_diagonalizing_gates(qjobd) -> None:
    dev = device(qjobd)

    @qml.set_shots(200)
    @qml.qnode(dev)
    def circuit():
        qml.Hadamard(wires=0)
        qml.CNOT(wires=[0, 1])
        return (qml.expval(qml.PauliX(0) @ qml.PauliX(1)),
                qml.expval(qml.PauliY(0) @ qml.PauliY(1)),
                qml.expval(qml.PauliZ(0) @ qml.PauliZ(1)), qml.sample())

    xx, yy, zz, samples = circuit()
    # |00> + |11>: XX = +1, YY = -1, ZZ = +1 exactly, whatever the shots
    assert (xx, yy, zz) == (1.0, -1.0, 1.0)
    assert set(map(tuple, samples.tolist())) == {(0, 0), (1, 1)}


def test_one_batch_per_execute_with_every_tape_in_it(qjobd, monkeypatch) -> None:
    dev = device(qjobd)
    executes = []
    original = QjobdDevice.execute

    def counted(self, circuits, execution_config=None):
        executes.append(len(circuits))
        return original(self, circuits, execution_config)

    monkeypatch.setattr(QjobdDevice, "execute", counted)

    @qml.set_shots(100)
    @qml.qnode(dev, diff_method="parameter-shift")
    def circuit(x):
        qml.RX(x, wires=0)
        qml.CNOT(wires=[0, 1])
        # X and Z do not commute: two tapes for one evaluation
        return qml.expval(qml.PauliZ(0) + 0.5 * qml.PauliX(0))

    before = len(batches(qjobd))
    circuit(pnp.array(0.3, requires_grad=True))
    assert executes == [2]  # one execute of two tapes ...
    assert len(batches(qjobd)) == before + 1  # ... is one batch of two circuits
    with Client(qjobd.socket) as client:
        assert sorted(client.results(dev.batch_ids[-1])) == ["tape0", "tape1"]

    executes.clear()
    before = len(batches(qjobd))
    gradient = qml.grad(circuit)(pnp.array(0.3, requires_grad=True))
    assert len(batches(qjobd)) == before + len(executes)
    assert max(executes) >= 4  # the shifted tapes of both groups went in one batch
    assert len(dev.batch_ids) == 1 + len(executes)
    assert -0.6 < gradient < 0.0  # d/dx cos(x) at 0.3 is -0.30; 100 shots


def test_without_shots_the_device_says_to_use_set_shots(qjobd) -> None:
    dev = device(qjobd)

    @qml.qnode(dev)
    def circuit():
        qml.Hadamard(wires=0)
        return qml.expval(qml.PauliZ(0))

    before = len(batches(qjobd))
    with pytest.raises(DeviceError, match=r"qml\.set_shots"):
        circuit()
    assert len(batches(qjobd)) == before


def test_shot_vectors_split_one_run(qjobd) -> None:
    dev = device(qjobd)

    @qml.set_shots([30, 10])
    @qml.qnode(dev)
    def circuit():
        qml.PauliX(wires=1)
        return qml.counts(wires=[0, 1])

    first, second = circuit()
    assert dict(first) == {"01": 30} and dict(second) == {"01": 10}
    with Client(qjobd.socket) as client:
        assert client.get(dev.batch_ids[-1]).shots == 40


def test_the_example_runs(qjobd) -> None:
    r = subprocess.run([sys.executable, str(EXAMPLES / "pennylane_qnode.py"), "--shots", "200",
                        "--steps", "2"], env=qjobd.env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "<Z0> = -1.000, probs(|00>,|01>,|10>,|11>) = [0.0, 0.0, 1.0, 0.0]" in r.stdout
    assert "(one per execute)" in r.stdout
