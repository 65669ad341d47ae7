"""divi's own examples, made small, for tests/system/test_divi.py, and a divi program the
tests run (and kill) as a process of its own.

The examples are divi's tutorials (``tutorials/optimization/qaoa_graph_problems.py`` and
``tutorials/chemistry/vqe_h2_molecule.py`` of qoroquantum/divi) with fewer iterations and
shots; only the backend is qjobd's. Each returns what the tutorial prints.

As a process (``python -m tests.system.divi_programs --socket S --backend ionq --run-key K
--log FILE [--checkpoint DIR]``) it runs a seeded QAOA (MaxCut on a 4-cycle, Monte Carlo
optimizer) through ``QjobdBackend``, appending one JSON line per ``submit_circuits`` call
to FILE as the call returns (its batch ids and how many circuits it sent), and prints the
outcome as JSON at the end. With ``--checkpoint`` it checkpoints every iteration and, when
the directory holds a checkpoint, resumes from it (divi's ``load_state``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from divi.backends import ExecutionResult, normalise_circuit_batch
from divi.qprog import QAOA, VQE, HartreeFockAnsatz
from divi.qprog.optimizers import (
    MonteCarloOptimizer,
    PymooMethod,
    PymooOptimizer,
    ScipyMethod,
    ScipyOptimizer,
)
from divi.qprog.problems import (
    MaxCliqueProblem,
    MaxCutProblem,
    MaxWeightMatchingProblem,
    MolecularProblem,
    is_valid_matching,
)

from qjobd.divi import QjobdBackend


def qaoa_max_clique(backend: Any) -> dict[str, Any]:
    """The tutorial's part 1: max clique on the bull graph, constrained mixer, CMA-ES."""
    graph = nx.bull_graph()
    qaoa = QAOA(
        MaxCliqueProblem(graph, use_constrained_mixer=True),
        n_layers=2,
        optimizer=PymooOptimizer(method=PymooMethod.CMAES, population_size=4),
        max_iterations=2,
        backend=backend,
        seed=1,
    )
    qaoa.run()
    return {"best_loss": qaoa.best_loss, "solution": sorted(qaoa.solution),
            "circuits": qaoa.total_circuit_count}


def qaoa_matching(backend: Any) -> dict[str, Any]:
    """The tutorial's part 2: maximum-weight matching, penalty formulation, COBYLA."""
    graph = nx.Graph()
    graph.add_weighted_edges_from([(0, 1, 5.0), (1, 2, 1.0), (2, 3, 5.0), (3, 4, 3.0)])
    qaoa = QAOA(
        MaxWeightMatchingProblem(graph, penalty_weight=10.0),
        n_layers=2,
        optimizer=ScipyOptimizer(method=ScipyMethod.COBYLA),
        max_iterations=3,
        backend=backend,
        seed=1,
    )
    qaoa.run()
    return {"best_loss": qaoa.best_loss, "solution": qaoa.solution,
            "valid": is_valid_matching(qaoa.solution),
            "circuits": qaoa.total_circuit_count}


def vqe_h2(backend: Any) -> dict[str, Any]:
    """The VQE tutorial's H2 molecule (part 2's set-up: QWC grouping, Nelder-Mead)."""
    import pennylane as qp

    mol = qp.qchem.Molecule(symbols=["H", "H"], coordinates=np.array([(0, 0, 0), (0, 0, 0.5)]))
    problem = MolecularProblem.from_molecule(mol)
    vqe = VQE(
        problem=problem,
        n_layers=1,
        ansatz=HartreeFockAnsatz(),
        optimizer=ScipyOptimizer(method=ScipyMethod.NELDER_MEAD),
        max_iterations=1,
        seed=2000,
        backend=backend,
        grouping_strategy="qwc",
    )
    vqe.run()
    return {"best_loss": vqe.best_loss, "eigenstate": [int(b) for b in vqe.eigenstate],
            "circuits": vqe.total_circuit_count}


EXAMPLES = {"qaoa_max_clique": qaoa_max_clique, "qaoa_matching": qaoa_matching,
            "vqe_h2": vqe_h2}


class LoggedBackend(QjobdBackend):
    """QjobdBackend that appends each call's batch ids and circuit count to a file."""

    def __init__(self, log: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def submit_circuits(self, payloads: Any, **kwargs: Any) -> ExecutionResult:
        result = super().submit_circuits(payloads, **kwargs)
        line = {"job_id": result.job_id, "circuits": len(normalise_circuit_batch(payloads))}
        with self.log.open("a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        return result


def rerun_program(backend: Any, iterations: int, checkpoint: Path | None) -> QAOA:
    """A seeded QAOA: the same circuits in the same order every time it runs."""
    problem = MaxCutProblem(nx.cycle_graph(4))
    if checkpoint is not None and any(checkpoint.glob("checkpoint_*")):
        qaoa = QAOA.load_state(checkpoint_dir=checkpoint, backend=backend, problem=problem,
                               n_layers=1)
        qaoa.max_iterations = iterations
    else:
        qaoa = QAOA(problem, n_layers=1,
                    optimizer=MonteCarloOptimizer(population_size=4, n_best_sets=2),
                    max_iterations=iterations, backend=backend, seed=5)
    return qaoa


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.system.divi_programs")
    p.add_argument("--socket", required=True)
    p.add_argument("--backend", default="ionq")
    p.add_argument("--run-key")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--shots", type=int, default=100)
    args = p.parse_args(argv)
    backend = LoggedBackend(args.log, args.backend, shots=args.shots, socket=args.socket,
                            run_key=args.run_key)
    qaoa = rerun_program(backend, args.iterations, args.checkpoint)
    if args.checkpoint is not None:
        from divi.qprog.checkpointing import CheckpointConfig

        qaoa.run(checkpoint_config=CheckpointConfig(checkpoint_dir=args.checkpoint))
    else:
        qaoa.run()
    print(json.dumps({"best_loss": qaoa.best_loss, "solution": sorted(qaoa.solution),
                      "iterations": qaoa.current_iteration}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
