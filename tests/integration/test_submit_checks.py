"""The submit path's circuit checks through the API: limits answered before anything is
built, in the parse workers and never on the event loop, errors that help, and OpenQASM 3
sent as written to a provider that parses it itself."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from qjobd.backends import qasm
from qjobd.backends.ionq import IonQBackend
from qjobd.backends.qoro import QoroBackend
from qjobd.daemon.api import validation
from qjobd.daemon.api.parsing import ParsePool, ParsePoolClosed
from qjobd.daemon.config import parse_config
from qjobd.daemon.process.wiring import wire
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import BELL2, BELL3, FAST_POLLING, Daemon, count_rows

HUGE = "OPENQASM 3.0;\nqubit[100000000] q;\nbit c;\nc = measure q[0];\n"
CONST = """OPENQASM 3.0;
include "stdgates.inc";
const int n = 3;
qubit[n] q;
bit[n] c;
h q[0];
c = measure q;
"""


def _provider_parsed(daemon: Daemon) -> None:
    """Make the scripted backend `fake` one that parses OpenQASM 3 itself, like IonQ."""
    backend = daemon.backends["fake"]
    backend.capabilities = dataclasses.replace(  # type: ignore[misc]
        backend.capabilities, qasm_versions=frozenset({3}), provider_parsed=frozenset({3}))


async def test_a_huge_qubit_declaration_is_refused_at_once_and_stores_nothing(
        daemon: Daemon) -> None:
    started = time.perf_counter()
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"ok": BELL3, "huge": HUGE}})
    assert time.perf_counter() - started < 2
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "over_limit"
    (detail,) = error["details"]
    assert detail["label"] == "huge" and (detail["line"], detail["column"]) == (2, 1)
    assert detail["limit"] == {"name": "qubits", "max": 10, "value": 100_000_000}
    assert "backend 'fake' takes at most 10 qubits" in error["message"]
    assert count_rows(daemon.db)["batches"] == 0


@pytest.mark.local
async def test_the_local_backends_qubit_limit_names_the_setting(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={"backend": "local",
                                                      "circuits": {"huge": HUGE}})
    assert r.status_code == 422
    assert "backend 'local' takes at most" in r.json()["error"]["message"]
    assert "[backends.local] max_qubits" in r.json()["error"]["message"]


async def test_too_many_operations_is_a_413_naming_the_circuit_and_the_setting(
        daemon: Daemon) -> None:
    body = BELL3.replace("h q[0];", "h q[0];\n" * 30)
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"deep": body}})
    assert r.status_code == 201  # under the default of 1,000,000
    limits = parse_config({"daemon": {"max_operations": 10}}).daemon
    with pytest.raises(validation.CircuitsTooLarge) as caught:
        await validation.check_circuits({"deep": body}, daemon.backends["fake"], limits)
    (detail,) = caught.value.details
    assert detail["label"] == "deep" and detail["limit"]["name"] == "operations"
    assert "[daemon] max_operations" in detail["reason"]


async def test_a_missing_include_is_told_the_line_to_add(daemon: Daemon) -> None:
    source = BELL3.replace('include "stdgates.inc";\n', "")
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"bell": source}})
    assert r.status_code == 422
    assert 'add the line include "stdgates.inc";' in r.json()["error"]["message"]


async def test_openqasm_2_without_its_version_line_is_told_so(daemon: Daemon) -> None:
    source = BELL2.removeprefix("OPENQASM 2.0;\n")
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"bell": source}})
    assert r.status_code == 422
    assert "no version line" in r.json()["error"]["message"]


async def test_openqasm_3_qiskit_cannot_import_goes_as_written_with_the_skipped_checks_said(
        daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"c": CONST}})
    assert r.status_code == 422  # the scripted backend is simulated by Qiskit's rules
    assert "ConstantDeclaration" in r.json()["error"]["message"]
    _provider_parsed(daemon)
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"c": CONST}})
    assert r.status_code == 201, r.text
    batch = r.json()
    (warning,) = batch["warnings"]
    assert warning.startswith("circuit 'c': Qiskit cannot import this program")
    shown = (await daemon.client.get(f"/v1/batches/{batch['id']}")).json()
    assert shown["warnings"] == batch["warnings"]
    circuits = await daemon.store.circuits(batch["jobs"][0]["id"])
    assert circuits[0].source == CONST and circuits[0].num_clbits == 3


async def test_a_checked_batch_has_no_warnings(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"bell": BELL3}})
    assert r.status_code == 201 and r.json()["warnings"] == []


def test_ionq_limits_qubits_by_target_and_takes_openqasm_3_as_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IONQ_API_KEY", "k")
    assert IonQBackend("i", {}).capabilities.max_qubits == 29
    aria = IonQBackend("i", {"target": "qpu.aria-1"}).capabilities
    assert (aria.max_qubits, aria.provider_parsed) == (25, frozenset({3}))
    assert "qpu.aria-1" in aria.max_qubits_reason
    assert IonQBackend("i", {"target": "qpu.new"}).capabilities.max_qubits is None
    assert IonQBackend("i", {"max_qubits": 7}).capabilities.max_qubits == 7
    with pytest.raises(ValueError, match="max_qubits"):
        IonQBackend("i", {"max_qubits": 0})


def test_qoro_limits_qubits_by_setting_else_by_the_daemons_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QORO_API_KEY", "k")
    assert QoroBackend("q", {}).capabilities.max_qubits is None  # Qoro publishes none
    assert QoroBackend("q", {"max_qubits": 12}).capabilities.max_qubits == 12
    plan = validation.circuit_plan(QoroBackend("q", {"qpu_system_name": "x"}))
    assert plan.limits.max_qubits == 1024 and "[daemon] max_qubits" in plan.sources["qubits"]


# -- with the parse workers -------------------------------------------------------------


@pytest.fixture
async def pooled(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ParsePool, Store]]:
    """A daemon in-process whose circuits are checked by one real parse worker."""
    config = parse_config({
        "daemon": {"socket": str(tmp_path / "s.sock"), "database": str(tmp_path / "q.db"),
                   "validation_timeout": 20},
        "polling": FAST_POLLING, "backends": {"fake": {"type": "scripted"}}})
    store = await Store.open(config.daemon.database)
    pool = ParsePool(1)
    pool.start()
    await pool.run("sleep", (0.0,))  # its worker is ready
    wired = wire(config, store, {"fake": ScriptedBackend("fake", {})}, pool)
    task = asyncio.create_task(wired.scheduler.run())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=wired.app),
                               base_url="http://qjobd", timeout=60)
    try:
        yield client, pool, store
    finally:
        await client.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.aclose()
        await store.close()


async def test_circuits_are_checked_in_the_parse_workers(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, pool, _ = pooled
    monkeypatch.setattr(qasm, "check_circuit", lambda *a, **k: pytest.fail("parsed here"))
    r = await client.post("/v1/batches", json={"backend": "fake",
                                               "circuits": {"a": BELL3, "b": BELL2}})
    assert r.status_code == 201, r.text
    assert pool.stats["tasks"] >= 1
    # what the worker found is kept: the job's submission does not parse again
    parsed = qasm.parse_circuit("a", BELL3)
    assert parsed.num_clbits == 2


async def test_the_api_answers_others_while_a_worker_is_busy(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store]) -> None:
    client, pool, _ = pooled
    busy = asyncio.create_task(pool.run("sleep", (1.5,)))
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    assert (await client.get("/v1/health")).status_code == 200
    assert time.perf_counter() - started < 0.5
    await busy


async def test_a_validation_over_its_time_limit_is_a_413_and_frees_the_worker(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store], tmp_path: Path) -> None:
    _, pool, _ = pooled
    limits = parse_config({"daemon": {"validation_timeout": 1}}).daemon
    slow = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[2] q;\nbit[2] c;\n"
    slow += "U(pi, 0, pi) q[0];\n" * 20000 + "c = measure q;\n"  # the reference path: slow
    started = time.perf_counter()
    with pytest.raises(validation.CircuitsTooLarge) as caught:
        await validation.check_circuits({"slow": slow}, ScriptedBackend("fake", {}), limits,
                                        pool)
    assert caught.value.details[0]["limit"]["name"] == "time"
    assert time.perf_counter() - started < 3
    assert pool.stats["abandoned"] == 1
    assert await pool.run("sleep", (0.01,)) == 0.01  # a fresh worker took its place


async def test_a_closed_pool_answers_503_and_stores_nothing(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store], tmp_path: Path) -> None:
    client, pool, _ = pooled
    pool.close()
    r = await client.post("/v1/batches", json={"backend": "fake", "circuits": {"a": BELL3}})
    assert r.status_code == 503
    assert count_rows(tmp_path / "q.db")["batches"] == 0
    with pytest.raises(ParsePoolClosed):
        await pool.run("sleep", (0.01,))


async def test_a_worker_that_died_idle_is_replaced_before_the_next_task(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store]) -> None:
    import os
    import signal

    _, pool, _ = pooled
    (slot,) = pool._slots
    assert slot.process is not None
    os.kill(slot.process.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert await pool.run("sleep", (0.01,)) == 0.01
    assert pool.stats["died"] == 0


async def test_a_circuit_that_kills_its_worker_fails_alone(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, pool, _ = pooled
    killer = BELL3.replace("h q[0];", "h q[0];\n// kill the worker")
    original = pool._submit

    def submit(kind: str, args: tuple[object, ...], group: object):  # type: ignore[no-untyped-def]
        if kind == "check" and any("kill the worker" in src for _, src in args[0]):  # type: ignore[index]
            # a chunk with the killer: the worker "dies" (a task that exits the process)
            return original("exit", (), group)
        return original(kind, args, group)

    monkeypatch.setattr(pool, "_submit", submit)
    checked = validation.check_circuits({"ok": BELL3, "bad": killer, "ok2": BELL2},
                                        ScriptedBackend("fake", {}), pool=pool)
    with pytest.raises(validation.CircuitsTooLarge) as caught:
        await checked
    (detail,) = caught.value.details
    assert detail["label"] == "bad" and detail["limit"]["name"] == "parser memory"


async def test_the_daemons_cache_misses_are_answered_by_a_worker(
        pooled: tuple[httpx.AsyncClient, ParsePool, Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, pool, _ = pooled
    qasm._FACTS.clear()
    qasm._WIRE.clear()
    monkeypatch.setattr(qasm, "_offload", pool.offload)  # as the service sets it
    monkeypatch.setattr(qasm, "_load", lambda *a: pytest.fail("parsed in the daemon"))
    source = BELL3.replace("cx", "cy")
    parsed = await asyncio.to_thread(qasm.parse_circuit, "c", source)
    assert (parsed.num_qubits, parsed.num_clbits) == (2, 2)
    wire = await asyncio.to_thread(qasm.convert, parsed, frozenset({2}))
    assert wire.startswith("OPENQASM 2.0;")
