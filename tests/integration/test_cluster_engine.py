"""The engines of two nodes on one PostgreSQL store, in one process, sharing one scripted
provider: a node whose leases may have run out sends no create, and the node that takes
its jobs over runs each of them exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from qjobd.daemon.engine.notify import BatchChanges
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import eventually
from tests.integration.test_engine import batch_is, configs, new_batch

pytest.importorskip("psycopg")

from qjobd.store.cluster import Cluster
from qjobd.store.postgres import PostgresStore

LEASE = 2.0


@contextlib.asynccontextmanager
async def node(url: str, name: str, backend: ScriptedBackend) -> AsyncIterator[Scheduler]:
    store = await PostgresStore.open(url)
    cluster = Cluster(store, name, LEASE)
    await cluster.join()
    scheduler = Scheduler(store, {"fake": backend}, configs(0.0), BatchChanges(), cluster)
    task = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(scheduler.resumed.wait(), 10)
        yield scheduler
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_a_node_whose_leases_may_have_run_out_sends_no_create(store: Store) -> None:
    backend = ScriptedBackend("fake", {})
    scheduler = Scheduler(store, {"fake": backend}, configs(0.0), BatchChanges())
    runner = scheduler.runners["fake"]
    runner.leases_valid = lambda: False  # cut off from the database past its lease
    task = asyncio.create_task(scheduler.run())
    try:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await eventually(lambda: not runner.held(), 5)  # let go of
        job = (await store.get_batch(batch.id)).jobs[0]
        # the intent is stored (the taker looks it up), but nothing was sent
        assert job.state == JobState.SUBMITTING and backend.submits == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_cut_off_node_does_nothing_more_and_the_taker_runs_each_job_once(
        postgres_url: str) -> None:
    backend = ScriptedBackend("fake", {"hold": True})  # jobs run until released
    async with node(postgres_url, "a", backend) as a, node(postgres_url, "b", backend) as b:
        batch = await new_batch(a.store, 4)
        a.accepted(batch)
        await eventually(lambda: backend.submits == 4, 10)
        # a is cut off: it renews nothing more, and trusts its leases no longer
        assert a.leases is not None and b.leases is not None
        a.leases.round = _stalled  # type: ignore[method-assign]
        a.leases._trusted_until = 0.0
        # b sees a's leases run out and takes the jobs over, as a restart would
        await eventually(lambda: len(b.runners["fake"].held()) == 4, 4 * LEASE + 5)
        for job in backend.jobs.values():  # the provider finishes them now
            job.hold = False
        await batch_is(b.store, batch.id, JobState.COMPLETED)
        # a's engine let go of every job once its fenced writes failed, or kept them
        # untouched: none of its writes landed after b's claim
        events = await b.store.events(batch_id=batch.id)
        completed_by = [e for e in events
                        if e.kind == "job_state" and e.state == JobState.COMPLETED]
        assert len(completed_by) == 4
    assert backend.submits == 4  # each job created once: b found a's, sent none again


async def _stalled() -> None:
    await asyncio.sleep(3600)
