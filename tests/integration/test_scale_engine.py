"""What the engine does differently at scale (issue 7): schedule writes only when they are
news, a clean stop that stores every due time, the live next poll in the API, the spread
of a restart without a budget, and the scheduling lag it measures."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from typing import Any

import pytest

from qjobd.daemon.api import views
from qjobd.daemon.config import parse_config
from qjobd.daemon.engine.histogram import Histogram, quantile
from qjobd.daemon.engine.notify import BatchChanges
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.store.models import CircuitRecord, NewBatch
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import BELL2, eventually

#: steps 0.01, 0.02, 0.04 (the cap), no jitter: every interval is a step
POLLING = {"initial_interval": 0.01, "backoff_factor": 2.0, "max_interval": 0.04,
           "jitter": 0.0}


def _scheduler(store: Store, backend: ScriptedBackend, polling: dict[str, Any],
               rps: float = 0.0) -> Scheduler:
    configs = parse_config({"polling": polling, "backends": {
        "fake": {"type": "scripted", "requests_per_second": rps}}}).backends
    return Scheduler(store, {"fake": backend}, configs, BatchChanges())


async def _held_jobs(store: Store, scheduler: Scheduler, n: int) -> list[str]:
    circuits = [CircuitRecord(f"c{i}", BELL2, 2, 2, 2) for i in range(n)]
    batch, _ = await store.create_batch(NewBatch(
        owner_uid=0, backend="fake", shots=10, circuits=circuits,
        groups=[[c.label] for c in circuits]))
    scheduler.accepted(batch)
    return [j.id for j in batch.jobs]


async def test_polls_at_the_cap_are_not_written_and_a_clean_stop_stores_every_due_time(
        store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    scheduler = _scheduler(store, backend, POLLING)
    rows: list[tuple[str, str | None, float, float]] = []
    reschedule = store.reschedule

    async def counting(updates: Any) -> None:
        updates = list(updates)
        rows.extend(updates)
        await reschedule(updates)

    store.reschedule = counting  # type: ignore[method-assign]
    task = asyncio.create_task(scheduler.run())
    try:
        job_ids = await _held_jobs(store, scheduler, 3)
        await eventually(lambda: len(backend.jobs) == 3
                         and min(j.polls for j in backend.jobs.values()) >= 12)
        # 12 polls each, but only the steps up to the cap were news: 0.02, then 0.04
        assert len(rows) <= 3 * 2, rows
        runner = scheduler.runners["fake"]
        live = {job_id: runner.next_poll_at(job_id) for job_id in job_ids}
        assert all(t is not None and t > time.time() - 1 for t in live.values())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stored = (await store.get_batch((await store.get_job(job_ids[0])).batch_id)).jobs
    for job in stored:
        assert job.state == JobState.SUBMITTED and job.poll_interval == 0.04
        # the clean stop wrote the due time each job had when the engine stopped
        before = live[job.id]
        assert job.next_poll_at is not None and before is not None
        assert job.next_poll_at >= before


async def test_the_api_shows_the_engine_s_next_poll_not_the_stored_one(daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={"backend": "held",
                                                      "circuits": {"a": BELL2}})
    assert r.status_code == 201
    batch_id = r.json()["id"]

    async def stored_is_stale() -> bool:
        job = (await daemon.store.get_batch(batch_id)).jobs[0]
        return job.next_poll_at is not None and job.next_poll_at < time.time() - 0.3
    await eventually(stored_is_stale)  # held at the cap (0.05 s): no longer rewritten
    shown = (await daemon.client.get(f"/v1/batches/{batch_id}")).json()["jobs"][0]
    ts = shown["next_poll_at"].replace("Z", "+00:00")
    assert datetime.fromisoformat(ts).timestamp() > time.time() - 0.3


async def test_the_engine_measures_the_scheduling_lag_of_each_poll(store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    scheduler = _scheduler(store, backend, POLLING)
    task = asyncio.create_task(scheduler.run())
    try:
        await _held_jobs(store, scheduler, 5)
        await eventually(lambda: scheduler.stats()["fake"].poll_lag.count >= 20)
        lag = views.backend_view(scheduler.stats()["fake"], {})["poll_lag"]
        assert isinstance(lag, dict) and lag["polls"] >= 20
        assert lag["p50"] is not None and 0 <= lag["p50"] <= lag["p99"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_histogram_quantiles_interpolate_within_buckets() -> None:
    h = Histogram((0.1, 1.0))
    assert math.isnan(h.quantile(0.5))
    for value in (0.05, 0.05, 0.5, 2.0, -0.01):  # a negative lag (polled early) counts as 0
        h.observe(value)
    assert h.cumulative() == [(0.1, 3), (1.0, 4), (math.inf, 5)]
    assert h.quantile(0.4) == pytest.approx(0.1 * 2 / 3)
    assert h.quantile(0.7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert h.quantile(0.99) == 1.0  # in +Inf: the highest bound, a lower bound of the truth
    assert math.isnan(quantile([(0.25, 0), (math.inf, 0)], 0.5))
