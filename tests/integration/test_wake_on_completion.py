"""A backend that knows when its jobs end (``Backend.when_terminal``: the local simulator)
wakes waiters at once, not at the job's next scheduled poll.

The daemon here polls every 5 s at first: without the hook each round trip would take
that long. The race test drives many jobs ending while their scheduled polls are also
due or in flight: each job's results are still fetched once, with no engine errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from qjobd.backends.base import Backend, Circuit, Counts, RemoteState, SubmitRequest
from qjobd.backends.local import LocalBackend
from qjobd.daemon.config import parse_config
from qjobd.daemon.process.wiring import wire
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import BELL2, BELL3, eventually

SLOW_POLLING = {"initial_interval": 5.0, "backoff_factor": 1.5, "max_interval": 30.0,
                "jitter": 0.1}
FAST_POLLING = {"initial_interval": 0.01, "backoff_factor": 1.5, "max_interval": 0.05,
                "jitter": 0.1}


class Signalling(ScriptedBackend):
    """The scripted backend, holding every job until ``end(remote_id)``, which also
    completes the job's ``when_terminal`` future."""

    capabilities = ScriptedBackend.capabilities

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, {**config, "hold": True})
        self.ended: dict[str, asyncio.Future[None]] = {}
        self.fetched: Counter[str] = Counter()

    def _future(self, remote_id: str) -> asyncio.Future[None]:
        future = self.ended.get(remote_id)
        if future is None:
            future = self.ended[remote_id] = asyncio.get_running_loop().create_future()
        return future

    def when_terminal(self, remote_id: str) -> asyncio.Future[None] | None:
        return self._future(remote_id)

    def end(self, remote_id: str) -> None:
        self.finish(remote_id)
        self._future(remote_id).set_result(None)

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        self.fetched[remote_id] += 1
        return await super().results(remote_id, circuits)


@dataclass
class InProcess:
    client: httpx.AsyncClient
    backend: Backend


async def _daemon(tmp_path: Path, backend: Backend, polling: dict[str, float]
                  ) -> AsyncIterator[InProcess]:
    config = parse_config({
        "daemon": {"socket": str(tmp_path / "s.sock"), "database": str(tmp_path / "q.db")},
        "backends": {"b": {"type": "scripted", "polling": polling}},
    })
    store = await Store.open(config.daemon.database)
    await backend.start()
    wired = wire(config, store, {"b": backend})
    task = asyncio.create_task(wired.scheduler.run())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=wired.app),
                               base_url="http://qjobd")
    try:
        yield InProcess(client, backend)
    finally:
        await client.aclose()
        wired.changes.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.aclose()
        await store.close()


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for daemon in _daemon(tmp_path, LocalBackend("b", {"workers": 1}), SLOW_POLLING):
        yield daemon


@pytest.fixture
async def signalling(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[InProcess]:
    polling = getattr(request, "param", SLOW_POLLING)
    async for daemon in _daemon(tmp_path, Signalling("b", {}), polling):
        yield daemon


async def _round_trip(client: httpx.AsyncClient, circuits: dict[str, str]) -> dict[str, Any]:
    r = await client.post("/v1/batches", json={"backend": "b", "circuits": circuits,
                                               "shots": 100})
    assert r.status_code == 201, r.text
    batch = (await client.get(f"/v1/batches/{r.json()['id']}/wait",
                              params={"timeout": 30})).json()
    assert batch["state"] == "completed", batch
    return (await client.get(f"/v1/batches/{batch['id']}/results")).json()


async def test_local_completion_wakes_the_waiter_before_the_first_poll(local: InProcess
                                                                        ) -> None:
    await _round_trip(local.client, {"warm": BELL2})  # the worker's first job
    started = time.monotonic()
    results = await _round_trip(local.client, {"bell": BELL2, "bell3": BELL3})
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"{elapsed:.2f} s: woken by the poll (5 s), not by the backend"
    assert sum(results["results"]["bell"]["counts"].values()) == 100
    assert set(results["results"]["bell3"]["counts"]) <= {"00", "11"}


async def test_the_local_backend_says_when_a_job_ends() -> None:
    backend = LocalBackend("local", {"workers": 1})
    await backend.start()
    try:
        source = Circuit("bell", BELL2, 2, 2)
        remote_id = await backend.submit(SubmitRequest("k1", [source], 10))
        ended = backend.when_terminal(remote_id)
        assert ended is not None and backend.when_terminal(remote_id) is ended
        await asyncio.wait_for(ended, 60)
        assert (await backend.status([remote_id]))[remote_id].state is RemoteState.COMPLETED
        # asked after the end: done at once
        later = LocalBackend.when_terminal(backend, remote_id)
        assert later is not None and later.done()
        assert backend.when_terminal("no-such-job") is None
        # a cancel ends a job too
        queued = [await backend.submit(SubmitRequest(f"k{i}", [source], 10))
                  for i in range(3)]
        futures = [backend.when_terminal(r) for r in queued]
        await backend.cancel(queued[-1:])
        assert futures[-1] is not None and futures[-1].done()
    finally:
        await backend.aclose()


async def test_a_signalled_end_is_polled_at_once(signalling: InProcess) -> None:
    backend = signalling.backend
    assert isinstance(backend, Signalling)
    r = await signalling.client.post("/v1/batches", json={
        "backend": "b", "circuits": {"a": BELL2}, "shots": 5})
    batch_id = r.json()["id"]
    waiting = asyncio.create_task(signalling.client.get(
        f"/v1/batches/{batch_id}/wait", params={"timeout": 30}))
    await eventually(lambda: backend.jobs)
    await asyncio.sleep(0.1)
    [remote_id] = backend.jobs
    ended = time.monotonic()
    backend.end(remote_id)
    batch = (await asyncio.wait_for(waiting, 10)).json()
    assert batch["state"] == "completed" and time.monotonic() - ended < 1.0
    assert backend.fetched == {remote_id: 1}
    # the job's scheduled poll (due in ~5 s) finds nothing to do: it was not re-filed
    assert backend.status_calls == 1


@pytest.mark.parametrize("signalling", [FAST_POLLING], indirect=True)
@pytest.mark.parametrize("seed", [14, 15, 16])
async def test_ends_racing_scheduled_polls_fetch_each_result_once(signalling: InProcess,
                                                                  seed: int) -> None:
    backend = signalling.backend
    assert isinstance(backend, Signalling)
    rng = random.Random(seed)
    circuits = {f"c{i}": BELL2 for i in range(60)}
    with structlog.testing.capture_logs() as logs:
        r = await signalling.client.post("/v1/batches", json={
            "backend": "b", "circuits": circuits, "shots": 5})
        batch_id = r.json()["id"]
        await eventually(lambda: len(backend.jobs) == len(circuits))
        # polls every 10-50 ms, filled 100 ids a request: ends land while polls are due,
        # in flight, or taken early to fill a request
        for remote_id in rng.sample(sorted(backend.jobs), len(backend.jobs)):
            backend.end(remote_id)
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02]))
        batch = (await signalling.client.get(f"/v1/batches/{batch_id}/wait",
                                             params={"timeout": 30})).json()
    assert batch["state"] == "completed"
    assert set(backend.fetched.values()) == {1} and len(backend.fetched) == len(circuits)
    problems = [e for e in logs if e.get("log_level") in ("warning", "error", "critical")]
    assert problems == []
