"""The daemon on PostgreSQL rides out an outage of its database server: while the server
is down, submissions are refused with 503 and a job's completion cannot be stored; once
it is back, the daemon recovers by itself and nothing is lost. A server of the test's own
(qjobd/testing/postgres.py), stopped and started again; waits have deadlines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qjobd.store.states import JobState
from qjobd.testing.postgres import PostgresServer
from tests.conftest import BELL2, eventually, in_process_daemon


@pytest.fixture
def own_server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    with PostgresServer(bindir=postgres_server.bindir) as server:
        yield server


async def test_the_daemon_rides_out_a_database_outage(own_server, tmp_path, monkeypatch):
    # a write or a read waits this long for a connection before it fails
    monkeypatch.setattr("qjobd.store.postgres.POOL_TIMEOUT", 1.0)
    submission = {"backend": "held", "circuits": {"bell": BELL2}, "shots": 10}
    async with in_process_daemon(tmp_path, own_server.create_database()) as d:
        r = await d.client.post("/v1/batches", json=submission)
        assert r.status_code == 201
        batch_id = r.json()["id"]
        held = d.backends["held"]
        job_id = r.json()["jobs"][0]["id"]

        async def submitted() -> bool:
            job = await d.store.get_job(job_id)
            return job.state in (JobState.SUBMITTED, JobState.RUNNING)

        await eventually(submitted, 10)
        [remote_id] = held.jobs

        with own_server.down():
            failed = d.store.writer.stats.failed_commits
            held.finish(remote_id)  # the provider finishes while the store cannot record it
            refused = await d.client.post("/v1/batches", json=submission)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unavailable"
            await eventually(lambda: d.store.writer.stats.failed_commits > failed, 15)
            assert (await d.client.get(f"/v1/batches/{batch_id}")).status_code == 503

        async def completed() -> bool:
            r = await d.client.get(f"/v1/batches/{batch_id}")
            return r.status_code == 200 and r.json()["state"] == "completed"

        await eventually(completed, 30)
        results = (await d.client.get(f"/v1/batches/{batch_id}/results")).json()["results"]
        assert results["bell"]["counts"] == {"00": 10}
        again = await d.client.post("/v1/batches", json=submission)
        assert again.status_code == 201
        job = await d.store.get_job(job_id)
        assert job.state == JobState.COMPLETED and job.attempts == 1  # created once
