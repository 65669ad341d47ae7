"""PennyLane through qjobd: a QNode on the device qjobd.remote, its gradient by the
parameter-shift rule, and a few steps of gradient descent; every execute is one batch.

Needs a running daemon (`make run` in another shell, or `qjobd serve`); the socket is
found as qjobctl finds it ($QJOBD_SOCKET, the config file, the default path):

    .venv/bin/python examples/pennylane_qnode.py [--backend local] [--shots 2000]
"""

from __future__ import annotations

import argparse

import pennylane as qml
from pennylane import numpy as pnp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local")
    parser.add_argument("--shots", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    dev = qml.device("qjobd.remote", wires=2, backend=args.backend)

    @qml.set_shots(args.shots)
    @qml.qnode(dev, diff_method="parameter-shift")
    def energy(x: float) -> float:
        qml.RX(x, wires=0)
        qml.CNOT(wires=[0, 1])
        # cos(x): two groups of commuting terms, two circuits of one batch
        return qml.expval(qml.PauliZ(1) + 0.5 * qml.PauliX(0) @ qml.PauliX(1))

    @qml.set_shots(args.shots)
    @qml.qnode(dev)
    def state() -> tuple:
        qml.PauliX(wires=0)  # |10>: wire 0 is the leftmost bit of probs' index
        return qml.expval(qml.PauliZ(0)), qml.probs(wires=[0, 1])

    z0, probs = state()
    print(f"<Z0> = {z0:+.3f}, probs(|00>,|01>,|10>,|11>) = {[round(float(p), 3) for p in probs]}")

    x = pnp.array(0.5, requires_grad=True)
    optimizer = qml.GradientDescentOptimizer(stepsize=0.4)
    for step in range(args.steps):
        x, value = optimizer.step_and_cost(energy, x)
        print(f"step {step}: energy {float(value):+.3f}, x -> {float(x):.3f}")
    print(f"batches sent: {len(dev.batch_ids)} (one per execute)")


if __name__ == "__main__":
    main()
