# qjobd: everything a newcomer needs is one of these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit lint clean install

# the venv, with qjobd and the worked plugin (examples/plugin, docs/plugins.md) installed
# editable: the suite runs that plugin through its entry point
$(STAMP): pyproject.toml examples/plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet -e examples/plugin
	touch $(STAMP)

## run: set everything up and run the daemon in the foreground on its embedded defaults
run: $(STAMP)
	$(BIN)/qjobd serve

## test: set everything up and run the whole test suite, every tier (and the linter)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

## test-unit: the unit tier alone (no server, no subprocess, no sleeping): seconds
test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

## install: install qjobd as a hardened systemd service (as root): its own virtual
## environment in /opt/qjobd, the units, sysusers, /etc/qjobd; see README "Run as a service".
## Variables: PREFIX, SYSCONFDIR, UNITDIR, BINDIR, DESTDIR, EXTRAS (e.g. postgresql; see
## systemd/install.sh).
install:
	PYTHON=$(PYTHON) sh systemd/install.sh

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

## bench: qjobd against IonQ's own polling helper on the fake IonQ at N = 1,000 and 10,000
## and 100 (about 13 minutes on 2 cores); prints the figures, rewrites docs/benchmarks.md's
## table and draws docs/benchmarks.png
.PHONY: bench
BENCH_ARGS ?= --n 100,1000,10000 --scale 20 --side-timeout 300
bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench.ionq_bench $(BENCH_ARGS) --doc docs/benchmarks.md
	$(BIN)/python -m bench.plot

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

## bench-scale: 100,000 in-flight jobs, a restart, submission rates and CPU per poll against
## the fake IonQ (about 4 minutes on 2 cores), then store growth under retention; prints
## each figure with its target and ratio, writes bench/results/scale_bench.json and the
## "Scale" section of docs/benchmarks.md. SCALE_ARGS=--quick for a look; PROFILE=1 runs
## the daemon under py-spy (speedscope files in bench/results/profiles/).
.PHONY: bench-scale
SCALE_ARGS ?=
bench-scale: $(VENV)/.bench-installed
	$(BIN)/python -m bench.scale_bench $(SCALE_ARGS) --doc docs/benchmarks.md \
		$(if $(PROFILE),--profile bench/results/profiles)
	$(BIN)/python -m bench.store_growth --json bench/results/store_growth.json

## bench-roundtrip: a Bell circuit's submit, wait and results over the socket on the local
## backend against the same circuit in a bare script (qasm2.loads + AerSimulator().run) and
## in a warm loop (about 2 minutes on 2 cores); prints the medians, the ratio and its target
## (5x the bare script), writes bench/results/roundtrip_bench.json and the "Local round
## trip" section of docs/benchmarks.md. ROUNDTRIP_ARGS=--runs 5 for a look.
.PHONY: bench-roundtrip
ROUNDTRIP_ARGS ?=
bench-roundtrip: $(STAMP)
	$(BIN)/python -m bench.roundtrip_bench $(ROUNDTRIP_ARGS) --doc docs/benchmarks.md

## bench-divi: divi's QAOA (MaxCut, 8 qubits, 2 layers, COBYLA) through qjobd on the local
## backend against divi's own QiskitSimulator running the same program (about 4 minutes on
## 2 cores); prints both wall times, where each spent it, the ratio and its target (1.5x),
## writes bench/results/divi_bench.json and the "divi through qjobd" section of
## docs/benchmarks.md. DIVI_ARGS=--runs 1 for a look.
.PHONY: bench-divi
DIVI_ARGS ?=
bench-divi: $(STAMP)
	$(BIN)/python -m bench.divi_bench $(DIVI_ARGS) --doc docs/benchmarks.md

## bench-submit: the submit path (about 2 minutes on 2 cores): a 332-circuit batch (2,000
## gates each, half OpenQASM 3) to the fake Qoro, its time to 201 next to Qiskit's own parse
## time for the same circuits (and the ratio), cost per gate, health p99 during it, RSS
## growth, then daemon CPU per job for 500 single-circuit OpenQASM 3 batches to the fake
## IonQ; writes bench/results/submit_bench.json and the "Submission" section of
## docs/benchmarks.md. SUBMIT_ARGS=--quick for a look.
.PHONY: bench-submit
SUBMIT_ARGS ?=
bench-submit: $(STAMP)
	$(BIN)/python -m bench.submit_bench $(SUBMIT_ARGS) --doc docs/benchmarks.md \
		--json bench/results/submit_bench.json

## bench-cost: calibrate the local backend's cost model (backends/_aer_cost.py) with real
## Aer runs of 10 to 22 qubits, sampled and shot by shot, one thread (about 3 minutes on 2
## cores); prints seconds per amplitude operation for each and the model's estimate next
## to each measured time, writes bench/results/aer_cost_bench.json (figures:
## docs/benchmarks.md, "Simulation cost"). COST_ARGS=--quick for a look.
.PHONY: bench-cost
COST_ARGS ?=
bench-cost: $(STAMP)
	$(BIN)/python -m bench.aer_cost_bench $(COST_ARGS) --json bench/results/aer_cost_bench.json

## bench-cluster: several daemons on one PostgreSQL store (a server of its own) and the
## fake IonQ (about 12 minutes on 2 cores): job polls per second and CPU per poll (the
## daemons' and PostgreSQL's) with 1, 2 and 3 nodes, 3,000 jobs in flight, and the time
## from a node's kill -9 to its jobs being polled again (lease_seconds 15 and 3); writes
## bench/results/cluster_bench.json, docs/bench-cluster.png and the "Several daemons"
## section of docs/benchmarks.md. Needs PostgreSQL's server binaries (Debian's package
## postgresql; see qjobd/testing/postgres.py). CLUSTER_ARGS=--quick for a look.
.PHONY: bench-cluster
CLUSTER_ARGS ?=
bench-cluster: $(STAMP)
	$(BIN)/python -m bench.cluster_bench $(CLUSTER_ARGS) --doc docs/benchmarks.md
