"""divi's QAOA through qjobd: MaxCut on a ring of six nodes (README, "divi").

    make run                                  # a daemon, in another terminal
    .venv/bin/python examples/divi_qaoa.py    # needs qjobd[divi]

Every evaluation of the optimizer is one qjobd batch on the daemon's ``local`` backend
(``--backend NAME`` for another one of its config). The run is named by ``--run-key``:
kill the script (Ctrl+C, kill -9) and start it again with the same key, and what it had
already submitted is not run again; run it twice and the second run is served from the
first run's batches. A new key is a new run.
"""

from __future__ import annotations

import argparse

import networkx as nx
from divi.qprog import QAOA
from divi.qprog.optimizers import ScipyMethod, ScipyOptimizer
from divi.qprog.problems import MaxCutProblem

from qjobd.divi import QjobdBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="local", help="a backend of the daemon's config")
    parser.add_argument("--run-key", default="examples/divi_qaoa maxcut ring-6")
    args = parser.parse_args()

    ring = nx.cycle_graph(6)
    backend = QjobdBackend(args.backend, shots=1000, run_key=args.run_key)
    qaoa = QAOA(
        MaxCutProblem(ring),
        n_layers=1,
        optimizer=ScipyOptimizer(method=ScipyMethod.COBYLA),
        max_iterations=10,
        backend=backend,
        seed=42,  # the same circuits on every run: a rerun reuses the batches
    )
    qaoa.run()
    backend.close()
    cut = nx.cut_size(ring, qaoa.solution)
    print(f"best loss {qaoa.best_loss:.3f}; solution {sorted(qaoa.solution)}: a cut of "
          f"{cut} edges (the most is 6); {qaoa.total_circuit_count} circuits")


if __name__ == "__main__":
    main()
