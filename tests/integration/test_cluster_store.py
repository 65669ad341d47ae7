"""store/cluster.py on the suite's PostgreSQL server: two nodes on one database, each with a
store of its own, as two daemons would be. Leases are claimed once, fenced writes of a node
that lost its lease change nothing, names are unique, a clean stop hands its jobs over, and
job moves and cancels reach the other node's listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from qjobd.store.errors import LeaseLost, StoreUnavailable
from qjobd.store.models import CircuitRecord, NewBatch
from qjobd.store.states import JobState
from tests.conftest import eventually

pytest.importorskip("psycopg")

from qjobd.store.cluster import Cluster
from qjobd.store.postgres import PostgresStore

BELL2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\nmeasure q -> c;\n'
LEASE = 5.0


@contextlib.asynccontextmanager
async def node(url: str, name: str) -> AsyncIterator[Cluster]:
    store = await PostgresStore.open(url)
    cluster = Cluster(store, name, LEASE)
    try:
        await cluster.join()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            await cluster.leave()
        await store.close()


async def submit(cluster: Cluster, n: int = 1) -> list[str]:
    circuits = [CircuitRecord(f"c{i}", BELL2, 2, 2, 2) for i in range(n)]
    batch, _ = await cluster.store.create_batch(NewBatch(
        owner_uid=0, backend="fake", shots=10, circuits=circuits,
        groups=[[c.label] for c in circuits]))
    return [j.id for j in batch.jobs]


async def expire(cluster: Cluster) -> None:
    """As if the node had been cut off for longer than its leases."""
    await cluster.store.execute("UPDATE nodes SET lease_until = 0 WHERE name = %s",
                                (cluster.node,))


async def test_a_batch_is_leased_to_its_submitter_and_held_by_it_alone(
        postgres_url: str) -> None:
    async with node(postgres_url, "a") as a, node(postgres_url, "b") as b:
        jobs = await submit(a, 3)
        assert await a.held() == {j: 1 for j in jobs}
        assert await b.held() == {}
        assert await b.claimable(["fake"]) == 0  # held: nothing for b to take
        assert await b.claim(["fake"], 10) == []


async def test_a_node_that_lost_its_lease_cannot_write_and_the_taker_can(
        postgres_url: str) -> None:
    async with node(postgres_url, "a") as a, node(postgres_url, "b") as b:
        (job,) = await submit(a)
        await a.store.transition(job, JobState.SUBMITTING, epoch=1)
        await expire(a)
        (claimed,) = await b.claim(["fake"], 10)
        assert (claimed.job.id, claimed.epoch, claimed.taken_over) == (job, 2, True)
        assert claimed.job.state == JobState.SUBMITTING  # b settles it as a restart would
        with pytest.raises(LeaseLost, match="leased to b"):
            await a.store.transition(job, JobState.SUBMITTED, remote_id="r-a", epoch=1)
        with pytest.raises(LeaseLost):
            await a.store.record_remote_id(job, "r-a", epoch=1)
        stored = await a.store.get_job(job)
        assert (stored.state, stored.remote_id) == (JobState.SUBMITTING, None)  # unchanged
        await b.store.transition(job, JobState.SUBMITTED, remote_id="r-b", epoch=2)
        assert (await a.store.get_job(job)).remote_id == "r-b"
        assert job not in await a.held() and (await b.held())[job] == 2


async def test_two_claimers_split_the_unheld_jobs_and_never_take_one_twice(
        postgres_url: str) -> None:
    async with node(postgres_url, "a") as a, node(postgres_url, "b") as b, \
            node(postgres_url, "c") as c:
        jobs = await submit(c, 40)
        await expire(c)
        assert await a.claimable(["fake"]) == 40
        share = Cluster.share(40, 2)
        got_a, got_b = await asyncio.gather(a.claim(["fake"], share), b.claim(["fake"], share))
        ids_a, ids_b = {x.job.id for x in got_a}, {x.job.id for x in got_b}
        assert not ids_a & ids_b and ids_a | ids_b == set(jobs)
        assert len(ids_a) == len(ids_b) == 20
        assert await c.held() == {}  # c's writes are fenced out from now on


async def test_a_second_node_of_the_same_name_is_refused(postgres_url: str) -> None:
    async with node(postgres_url, "a"):
        with pytest.raises(StoreUnavailable, match="another qjobd runs as node 'a'"):
            async with node(postgres_url, "a"):
                pass
    async with node(postgres_url, "a"):  # given back by the first one's stop
        pass


async def test_a_clean_stop_hands_the_jobs_over_at_once(postgres_url: str) -> None:
    async with node(postgres_url, "b") as b:
        async with node(postgres_url, "a") as a:
            jobs = await submit(a, 2)
            assert len(await b.nodes()) == 2
        # a left: no wait for its leases to expire
        assert await b.claimable(["fake"]) == 2
        assert {x.job.id for x in await b.claim(["fake"], 10)} == set(jobs)
        assert [n.name for n in await b.nodes(live_only=False)] == ["b"]


async def test_moves_and_cancels_reach_the_other_nodes_listener(postgres_url: str) -> None:
    async with node(postgres_url, "a") as a, node(postgres_url, "b") as b:
        moved: list[str] = []
        canceled: list[str] = []

        async def on_cancel(payload: str) -> None:
            canceled.append(payload)

        listener = asyncio.create_task(b.listen(on_batch=moved.append, on_cancel=on_cancel,
                                                on_pause=lambda *_: None))
        try:
            await asyncio.wait_for(b.listening(), 10)
            (job,) = await submit(a)
            batch_id = job.rsplit("-", 1)[0]
            await a.store.transition(job, JobState.SUBMITTING, epoch=1)
            await eventually(lambda: f"a|{batch_id}" in moved, 10)
            assert await a.store.request_cancel(batch_id)
            await eventually(lambda: canceled == [f"a|{batch_id}"], 10)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


async def test_a_restarted_node_takes_back_all_its_own_jobs_and_only_a_share_of_others(
        postgres_url: str) -> None:
    async with node(postgres_url, "b") as b:
        async with node(postgres_url, "c") as c:
            others = await submit(c, 10)
            await expire(c)
        async with node(postgres_url, "a") as a:
            mine = await submit(a, 30)
        # a restarts (its leases unexpired: a kill -9 a moment ago)
        async with node(postgres_url, "a") as a:
            own = await a.claim(["fake"], 0, own=True)
            assert {x.job.id for x in own} == set(mine) and all(x.epoch == 2 for x in own)
            assert not any(x.taken_over for x in own)
            share = Cluster.share(await a.claimable(["fake"]), 2)
            got = await a.claim(["fake"], share)
            assert len(got) == 5 and {x.job.id for x in got} <= set(others)
            assert all(x.taken_over for x in got)
            assert len(await b.claim(["fake"], 10)) == 5
