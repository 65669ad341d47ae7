"""A cancel at any instant after the 201 leaves nothing running.

The window that mattered was between a job's intent being stored (``submitting``) and
its remote id being known: a cancel that came then ended the job in the store while its
create went out anyway, and the remote job ran on untracked. Each test cancels at many
points of the submission (counted in event-loop turns, then in milliseconds) and checks
the provider: every remote job that was created was canceled, and an ordinary cancel is
not an error in the log.
"""

from __future__ import annotations

import asyncio

import pytest
import structlog

from qjobd.backends.base import RemoteState
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import Daemon, eventually
from tests.integration.test_engine import batch_is, new_batch, running

TURNS = range(0, 40)


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("turns", TURNS)
async def test_a_cancel_at_any_turn_of_the_submission_leaves_no_remote_job_running(
        store: Store, turns: int) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    async with running(store, backend) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await _turns(turns)
        with structlog.testing.capture_logs() as logs:
            scheduler.cancel(await store.get_batch(batch.id))
            await batch_is(store, batch.id, JobState.CANCELED)

            async def nothing_runs() -> bool:
                return all(j.state == RemoteState.CANCELED for j in backend.jobs.values())
            await eventually(nothing_runs, 5)
    assert [e for e in logs if e["log_level"] in ("error", "critical", "warning")] == []


async def test_a_batch_the_resume_found_and_the_api_then_handed_over_is_driven_once(
        store: Store) -> None:
    """A batch stored while the daemon starts can be read by the scheduler's resume before
    the API hands it over (found by the suite, 1 run in about 40 of the test above): the
    job is still driven by one submitter, and a cancel still reaches its remote job."""
    backend = ScriptedBackend("fake", {"hold": True})
    batch = await new_batch(store)  # stored before the start: the resume finds it
    async with running(store, backend) as scheduler:
        await scheduler.resumed.wait()
        with structlog.testing.capture_logs() as logs:
            scheduler.accepted(batch)  # and then the API's hand-over
            await eventually(lambda: backend.submits == 1)
            await _turns(20)
            scheduler.cancel(await store.get_batch(batch.id))
            await batch_is(store, batch.id, JobState.CANCELED)

            async def nothing_runs() -> bool:
                return all(j.state == RemoteState.CANCELED for j in backend.jobs.values())
            await eventually(nothing_runs, 5)
    assert backend.submits == 1 and len(backend.jobs) == 1
    assert [e for e in logs if e["log_level"] in ("error", "critical", "warning")] == []


async def test_a_cancel_before_the_intent_is_stored_sends_no_create(store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    real_circuits = store.circuits
    gate = asyncio.Event()

    async def slow_circuits(job_id: str):  # the submitter is building its request
        await gate.wait()
        return await real_circuits(job_id)

    store.circuits = slow_circuits  # type: ignore[method-assign]
    async with running(store, backend) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await eventually(lambda: gate is not None and not gate.is_set())
        await _turns(5)
        scheduler.cancel(await store.get_batch(batch.id))
        await _turns(5)
        gate.set()
        await batch_is(store, batch.id, JobState.CANCELED)
    assert backend.submits == 0 and backend.jobs == {}


@pytest.mark.local
@pytest.mark.parametrize("delay_ms", [0, 1, 2, 3, 5, 8, 13, 21, 34, 55])
async def test_a_cancel_ms_after_the_201_leaves_the_local_simulator_idle(
        daemon: Daemon, delay_ms: int) -> None:
    # a circuit the simulator runs shot by shot for seconds (a mid-circuit reset)
    stalling = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[16];\ncreg c[16];\n'
                + "".join(f"h q[{i}];\ncx q[{i}], q[{(i + 1) % 16}];\n" for i in range(16)) * 8
                + "reset q[0];\nmeasure q -> c;\n")
    r = await daemon.client.post("/v1/batches", json={
        "backend": "local", "shots": 4000, "circuits": {"s": stalling}})
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]
    with structlog.testing.capture_logs() as logs:
        await asyncio.sleep(delay_ms / 1000)
        cancel = await daemon.client.post(f"/v1/batches/{batch_id}/cancel")
        assert cancel.status_code in (200, 202)

        async def ended() -> bool:
            b = (await daemon.client.get(f"/v1/batches/{batch_id}")).json()
            return b["state"] in ("canceled", "completed")
        await eventually(ended, 20)
        local = daemon.backends["local"]

        def idle() -> bool:
            h = local.health()
            return h["running"] == 0 and h.get("queued", 0) == 0
        await eventually(idle, 5)
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
