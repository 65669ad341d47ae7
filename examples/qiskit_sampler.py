"""Qiskit through qjobd: a Sampler run with parameters and two registers, then the
same result again from the job id alone, and a BackendV2 run with get_counts().

Needs a running daemon (`make run` in another shell, or `qjobd serve`); the socket is
found as qjobctl finds it ($QJOBD_SOCKET, the config file, the default path):

    .venv/bin/python examples/qiskit_sampler.py [--backend local] [--shots 1000]
"""

from __future__ import annotations

import argparse

import numpy as np
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter

from qjobd.qiskit import QjobdBackend, QjobdSampler


def circuit() -> QuantumCircuit:
    """A Bell pair measured into `pair` (2 bits) and a rotated qubit into `flag` (1 bit)."""
    theta = Parameter("theta")
    q = QuantumRegister(3, "q")
    pair, flag = ClassicalRegister(2, "pair"), ClassicalRegister(1, "flag")
    qc = QuantumCircuit(q, pair, flag, name="bell_and_flag")
    qc.h(q[0])
    qc.cx(q[0], q[1])
    qc.rx(theta, q[2])
    qc.measure([q[0], q[1]], pair)
    qc.measure(q[2], flag)
    return qc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local")
    parser.add_argument("--shots", type=int, default=1000)
    args = parser.parse_args()

    sampler = QjobdSampler(backend=args.backend)
    # one pub, three parameter values: one qjobd batch of three circuits
    job = sampler.run([(circuit(), [[0.0], [np.pi / 2], [np.pi]])], shots=args.shots)
    print("qjobd batch:", job.job_id())
    result = job.result()
    pub = result[0]
    for i, theta in enumerate(("0", "pi/2", "pi")):
        pair = pub.data.pair.get_counts(i)
        flag = pub.data.flag.get_counts(i)
        print(f"theta={theta:5} pair={dict(sorted(pair.items()))} "
              f"flag={dict(sorted(flag.items()))}")

    # any process, after any restart of this program or of the daemon: the id is enough
    again = QjobdSampler.job(job.job_id()).result()
    same = np.array_equal(again[0].data.pair.array, pub.data.pair.array)
    print("reattached:", "same arrays" if same else "DIFFERENT")

    backend = QjobdBackend(backend=args.backend)
    bell = QuantumCircuit(2, 2, name="bell")
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    counts = backend.run(bell, shots=args.shots).result().get_counts()
    print("backend counts:", dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
