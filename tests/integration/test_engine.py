"""The engine (scheduler + per-backend runner) against a scripted backend and a real store.

Restarts are simulated by stopping one scheduler and starting another on the same
database, with a new backend object that talks to the same fake "provider".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from qjobd.backends.base import Capabilities, Circuit, Counts, RemoteState
from qjobd.daemon.config import parse_config
from qjobd.daemon.engine.notify import BatchChanges
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.store.models import Batch, CircuitRecord, NewBatch
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import BELL2, FAST_POLLING, eventually


def configs(rps: float = 0.0) -> dict:
    return parse_config({"polling": FAST_POLLING, "backends": {
        "fake": {"type": "scripted", "requests_per_second": rps}}}).backends


@contextlib.asynccontextmanager
async def running(store: Store, backend: ScriptedBackend, rps: float = 0.0
                  ) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(store, {"fake": backend}, configs(rps), BatchChanges())
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def new_batch(store: Store, n: int = 1, **kw: object) -> Batch:
    circuits = [CircuitRecord(f"c{i}", BELL2, 2, 2, 2) for i in range(n)]
    batch, _ = await store.create_batch(NewBatch(
        owner_uid=0, backend="fake", shots=10, circuits=circuits,
        groups=[[c.label] for c in circuits], **kw))  # type: ignore[arg-type]
    return batch


async def batch_is(store: Store, batch_id: str, state: JobState) -> None:
    async def check() -> bool:
        return (await store.get_batch(batch_id, with_jobs=False)).state == state
    await eventually(check)


async def test_jobs_run_to_completion_with_results_stored(store: Store) -> None:
    backend = ScriptedBackend("fake", {})
    async with running(store, backend) as scheduler:
        batch = await new_batch(store, 3)
        scheduler.accepted(batch)
        await batch_is(store, batch.id, JobState.COMPLETED)
    results = await store.results(batch.id)
    assert [r.label for r in results] == ["c0", "c1", "c2"]
    assert all(r.counts == {"00": 10} for r in results)
    assert backend.submits == 3


async def test_an_unknown_remote_status_is_recorded_and_the_job_keeps_polling(
        store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    async with running(store, backend) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await eventually(lambda: len(backend.jobs) == 1)
        job = next(iter(backend.jobs.values()))
        job.state, job.raw = RemoteState.UNKNOWN, "calibrating"

        async def recorded() -> bool:
            j = (await store.get_batch(batch.id)).jobs[0]
            return j.remote_status == "calibrating"
        await eventually(recorded)
        polls = backend.status_calls
        await eventually(lambda: backend.status_calls >= polls + 3)  # still polling
        assert (await store.get_batch(batch.id)).jobs[0].state == JobState.SUBMITTED
        events = await store.events(batch_id=batch.id)
        assert any(e.kind == "remote_status" and e.detail == {"remote_status": "calibrating"}
                   for e in events)
        job.hold = False  # the provider gets over it
        await batch_is(store, batch.id, JobState.COMPLETED)


async def test_a_restart_resumes_polling_without_resubmitting(store: Store) -> None:
    first = ScriptedBackend("fake", {"hold": True})
    async with running(store, first) as scheduler:
        batch = await new_batch(store, 4)
        scheduler.accepted(batch)

        async def all_submitted() -> bool:
            b = await store.get_batch(batch.id)
            return all(j.state == JobState.SUBMITTED for j in b.jobs)
        await eventually(all_submitted)
    assert first.submits == 4
    second = ScriptedBackend("fake", {})
    second.share_remote(first)
    for job in second.jobs.values():
        job.hold = False
    async with running(store, second):
        await batch_is(store, batch.id, JobState.COMPLETED)
    assert second.submits == 0  # nothing created twice
    assert len(second.jobs) == 4


async def test_an_interrupted_submission_found_by_key_is_adopted_not_resubmitted(
        store: Store) -> None:
    provider = ScriptedBackend("fake", {})
    batch = await new_batch(store)
    job = batch.jobs[0]
    # the crash: intent stored, create reached the provider, its answer never stored
    await store.transition(job.id, JobState.SUBMITTING)
    from qjobd.backends.base import SubmitRequest
    remote_id = await provider.submit(SubmitRequest(job.submission_key, [], shots=10))
    provider.jobs[remote_id].counts = {"c0": {"11": 10}}
    restarted = ScriptedBackend("fake", {})
    restarted.share_remote(provider)
    async with running(store, restarted):
        await batch_is(store, batch.id, JobState.COMPLETED)
    assert restarted.submits == 0
    stored = await store.get_batch(batch.id)
    assert stored.jobs[0].remote_id == remote_id


async def test_an_interrupted_submission_the_provider_never_saw_is_submitted_once(
        store: Store) -> None:
    batch = await new_batch(store)
    await store.transition(batch.jobs[0].id, JobState.SUBMITTING)
    backend = ScriptedBackend("fake", {})
    async with running(store, backend):
        await batch_is(store, batch.id, JobState.COMPLETED)
    assert backend.submits == 1
    assert [op for _, op in backend.calls][:2] == ["lookup", "submit"]
    events = await store.events(batch_id=batch.id)
    assert any("submitting again" in str(e.detail) for e in events)


async def test_without_lookup_an_interrupted_submission_fails_rather_than_risk_a_duplicate(
        store: Store) -> None:
    batch = await new_batch(store)
    await store.transition(batch.jobs[0].id, JobState.SUBMITTING)
    backend = ScriptedBackend("fake", {})
    backend.capabilities = Capabilities(lookup_by_key=False, default_shots=100)
    async with running(store, backend):
        await batch_is(store, batch.id, JobState.FAILED)
    assert backend.submits == 0
    assert "duplicate" in (await store.get_batch(batch.id)).jobs[0].error


async def test_status_errors_back_off_and_retry_until_the_job_completes(store: Store) -> None:
    backend = ScriptedBackend("fake", {})
    backend.fail_status = 5
    async with running(store, backend) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await batch_is(store, batch.id, JobState.COMPLETED)
        assert scheduler.stats()["fake"].errors >= 5


async def test_a_429_pauses_the_backend_for_retry_after(store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    async with running(store, backend) as scheduler:
        batch = await new_batch(store, 3)
        scheduler.accepted(batch)
        await eventually(lambda: len(backend.jobs) == 3)
        backend.rate_limit_next = 0.4
        await eventually(lambda: any(op == "status" for _, op in backend.calls[-1:]) and
                    backend.rate_limit_next is None)
        limited_at = backend.calls[-1][0]
        await eventually(lambda: backend.calls[-1][0] > limited_at)
        gap = backend.calls[-1][0] - limited_at
        assert gap >= 0.4 - 0.01, f"a request came {gap:.3f} s into a 0.4 s pause"
        assert scheduler.stats()["fake"].paused_for == 0


async def test_the_request_budget_is_shared_by_all_requests(store: Store) -> None:
    backend = ScriptedBackend("fake", {"polls_to_finish": 3})
    async with running(store, backend, rps=20) as scheduler:
        batch = await new_batch(store, 10)
        scheduler.accepted(batch)
        await batch_is(store, batch.id, JobState.COMPLETED)
    times = [t for t, _ in backend.calls]
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u - t < 1.0)
        assert in_window <= 21, f"{in_window} requests within 1 s at a budget of 20/s"


async def test_polls_due_together_are_merged_into_one_status_request(store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    async with running(store, backend) as scheduler:
        batch = await new_batch(store, 50)
        scheduler.accepted(batch)
        await eventually(lambda: len(backend.jobs) == 50)
        await eventually(lambda: backend.status_calls >= 10)
    polled = sum(j.polls for j in backend.jobs.values())
    assert polled / backend.status_calls > 5, "polls were not coalesced"


async def test_unreadable_results_fail_the_job_with_a_clear_error(store: Store) -> None:
    backend = ScriptedBackend("fake", {})
    backend.corrupt_results = True
    async with running(store, backend) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await batch_is(store, batch.id, JobState.FAILED)
    assert "results could not be read" in (await store.get_batch(batch.id)).jobs[0].error


async def test_a_cancel_during_the_create_request_cancels_the_remote_job(store: Store) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    gate = asyncio.Event()
    real_submit = backend.submit

    async def slow_submit(request, **kw):
        await gate.wait()
        return await real_submit(request, **kw)

    backend.submit = slow_submit  # type: ignore[method-assign]
    async with running(store, backend) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)

        async def submitting() -> bool:
            return (await store.get_batch(batch.id)).jobs[0].state == JobState.SUBMITTING
        await eventually(submitting)
        scheduler.cancel(await store.get_batch(batch.id))
        gate.set()
        await batch_is(store, batch.id, JobState.CANCELED)
    assert [j.state for j in backend.jobs.values()] == [RemoteState.CANCELED]


@pytest.mark.parametrize("settle", ["cancel", "resume"])
async def test_an_upload_interrupted_by_a_crash_is_settled_once_without_a_duplicate(
        store: Store, settle: str) -> None:
    first = ScriptedBackend("fake", {})
    first.upload_gate = asyncio.Event()  # never set: the daemon "dies" mid-upload
    async with running(store, first) as scheduler:
        batch = await new_batch(store)
        scheduler.accepted(batch)

        async def created() -> bool:
            job = (await store.get_batch(batch.id)).jobs[0]
            return job.state == JobState.SUBMITTING and job.remote_id is not None
        await eventually(created)
    partial = (await store.get_batch(batch.id)).jobs[0].remote_id
    second = ScriptedBackend("fake", {})
    second.share_remote(first)
    second.on_interrupted = settle
    async with running(store, second):
        await batch_is(store, batch.id, JobState.COMPLETED)
    job = (await store.get_batch(batch.id)).jobs[0]
    reasons = [str(e.detail) for e in await store.events(batch_id=batch.id)]
    if settle == "resume":
        assert job.remote_id == partial and second.submits == 0
        assert any("settled" in r for r in reasons)
    else:
        assert job.remote_id != partial and second.submits == 1
        assert first.jobs[partial].state == RemoteState.CANCELED
        assert any(f"partial job {partial} was canceled" in r for r in reasons)


async def test_a_lost_create_on_an_inert_backend_is_submitted_again(store: Store) -> None:
    batch = await new_batch(store)
    await store.transition(batch.jobs[0].id, JobState.SUBMITTING)
    backend = ScriptedBackend("fake", {})
    backend.capabilities = Capabilities(lookup_by_key=False, lost_create_is_inert=True,
                                        default_shots=100)
    async with running(store, backend):
        await batch_is(store, batch.id, JobState.COMPLETED)
    assert backend.submits == 1
    assert any("can never run" in str(e.detail) for e in await store.events(batch_id=batch.id))


async def test_a_job_that_starts_keeps_its_backoff_instead_of_polling_from_1s_again(
        store: Store) -> None:
    polling = {"initial_interval": 0.01, "backoff_factor": 2.0, "max_interval": 10.0,
               "jitter": 0.0}
    backends = parse_config({"polling": polling, "backends": {
        "fake": {"type": "scripted"}}}).backends
    backend = ScriptedBackend("fake", {"hold": True})
    scheduler = Scheduler(store, {"fake": backend}, backends, BatchChanges())
    task = asyncio.create_task(scheduler.run())

    def poll_times() -> list[float]:
        return [t for t, op in backend.calls if op == "status"]
    try:
        batch = await new_batch(store)
        scheduler.accepted(batch)
        await eventually(lambda: len(backend.jobs) == 1)
        remote = next(iter(backend.jobs.values()))
        await eventually(lambda: remote.polls >= 5)  # waiting in the provider's queue
        seen = len(poll_times())
        remote.state, remote.raw = RemoteState.RUNNING, "running"  # it starts
        await eventually(lambda: len(poll_times()) >= seen + 2)
        assert (await store.get_batch(batch.id)).jobs[0].state == JobState.RUNNING
        times = poll_times()
        # the poll that saw the start came after five or more in the queue, which took
        # the interval to 0.01 * 2**5 at least; a reset would poll again 0.01 s later
        assert times[seen + 1] - times[seen] >= 0.01 * 2 ** 5 - 0.005
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)



def counting_circuit_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids of every ``store.circuits`` read (the real read still runs)."""
    reads: list[str] = []
    real = store.circuits

    async def circuits(job_id: str) -> list[CircuitRecord]:
        reads.append(job_id)
        return await real(job_id)

    monkeypatch.setattr(store, "circuits", circuits)
    return reads


class ResultsSeen(ScriptedBackend):
    """The scripted backend, keeping the circuits each ``results`` call is given."""

    def __init__(self, name: str, config: dict) -> None:
        super().__init__(name, config)
        self.given: list[list[str]] = []

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        self.given.append([c.source for c in circuits])
        return await super().results(remote_id, circuits)


def distinct(n: int) -> list[CircuitRecord]:
    return [CircuitRecord(f"c{i}", BELL2.replace("h q[0];", f"h q[0];\n// {i}"), 2, 2, 2)
            for i in range(n)]


def cached(scheduler: Scheduler) -> int:
    return scheduler.stats()["fake"].circuits_cached


@pytest.mark.parametrize("grouping", ["a job each", "one job"])
async def test_circuits_handed_over_with_the_batch_are_not_read_back(
        store: Store, monkeypatch: pytest.MonkeyPatch, grouping: str) -> None:
    reads = counting_circuit_reads(store, monkeypatch)
    backend = ResultsSeen("fake", {})
    circuits = distinct(3)
    groups = ([[c.label] for c in circuits] if grouping == "a job each"
              else [[c.label for c in circuits]])
    async with running(store, backend) as scheduler:
        await scheduler.resumed.wait()  # else the resume may read the new batch itself
        batch, _ = await store.create_batch(NewBatch(
            owner_uid=0, backend="fake", shots=10, circuits=circuits, groups=groups))
        scheduler.accepted(batch, circuits)
        await batch_is(store, batch.id, JobState.COMPLETED)
        assert cached(scheduler) == 0  # let go as each job ended
    assert reads == []  # neither for the creates nor for the results
    # each job sent, and given to results, its own circuits as stored, in their order
    sent = [[c.source for c in job.request.circuits] for job in backend.jobs.values()]
    assert sorted(sent) == sorted(backend.given) == sorted(
        [[c.source for c in circuits if c.label in group] for group in groups])
    assert [r.label for r in await store.results(batch.id)] == ["c0", "c1", "c2"]


async def test_without_them_each_job_s_circuits_are_read_once(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = counting_circuit_reads(store, monkeypatch)
    backend = ResultsSeen("fake", {})
    async with running(store, backend) as scheduler:
        await scheduler.resumed.wait()
        batch = await new_batch(store, 3)
        scheduler.accepted(batch)  # as a resume finds them: nothing in hand
        await batch_is(store, batch.id, JobState.COMPLETED)
        assert cached(scheduler) == 0
    assert sorted(reads) == sorted(j.id for j in batch.jobs)  # for the create, not again
    assert sorted(backend.given) == sorted([[BELL2]] * 3)
    assert all(r.counts == {"00": 10} for r in await store.results(batch.id))


@pytest.mark.parametrize("how", ["canceled", "released"])
async def test_the_circuits_of_a_job_that_leaves_the_engine_are_let_go(
        store: Store, how: str) -> None:
    backend = ScriptedBackend("fake", {"hold": True})
    circuits = distinct(2)
    async with running(store, backend) as scheduler:
        await scheduler.resumed.wait()
        batch, _ = await store.create_batch(NewBatch(
            owner_uid=0, backend="fake", shots=10, circuits=circuits,
            groups=[[c.label] for c in circuits]))
        scheduler.accepted(batch, circuits)
        assert cached(scheduler) == 2
        await eventually(lambda: len(backend.jobs) == 2)
        if how == "canceled":
            await store.request_cancel(batch.id)
            scheduler.cancel(await store.get_batch(batch.id))
            await batch_is(store, batch.id, JobState.CANCELED)
        else:  # its lease passed to another node
            scheduler.runners["fake"].release([j.id for j in batch.jobs], "a test")
        assert cached(scheduler) == 0
