"""The IonQ backend inside the daemon's engine, against the fake IonQ over real HTTP.

The daemon's parts run in-process (store on a real file, scheduler, API through ASGI);
the fake runs in a thread with its own event loop and speaks IonQ's v0.4 wire format.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from qjobd.backends.ionq import IonQBackend
from qjobd.store.models import CircuitRecord, NewBatch
from qjobd.store.states import JobState
from qjobd.store.store import Store
from qjobd.testing.fake_ionq import FakeIonQ
from qjobd.testing.harness import Harness, backend_daemon
from tests.conftest import BELL2, BELL3, count_rows, eventually

KEY = "sk-test-7f3a9c2e11d04b"
GHZ3 = BELL3.replace("qubit[2] q;", "qubit[3] q;").replace("bit[2] c;", "bit[3] c;") \
    .replace("c = measure q;", "cx q[1], q[2];\nc = measure q;")


@pytest.fixture
def fake() -> Iterator[FakeIonQ]:
    with FakeIonQ(api_key=KEY, duration=(0.05, 0.3)) as f:
        yield f


def daemon(fake: FakeIonQ, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
           rps: float = 0.0, db: Path | None = None, polling: dict | None = None
           ) -> AbstractAsyncContextManager[Harness[IonQBackend]]:
    return backend_daemon(IonQBackend, "ionq", fake.base_url, KEY, tmp_path, monkeypatch,
                          shots=200, wait_limit=30, wait_poll=5, rps=rps, db=db,
                          polling=polling)


def files_contain(db: Path, text: str) -> bool:
    """Whether the database file or its WAL holds ``text`` anywhere, in any page."""
    return any(text.encode() in p.read_bytes()
               for p in (db, Path(f"{db}-wal")) if p.exists())


async def test_every_label_gets_the_counts_the_provider_planted(fake, tmp_path, monkeypatch):
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"bell2": BELL2, "bell3": BELL3, "ghz": GHZ3})
        done = await h.wait(batch["id"])
        assert done["state"] == "completed"
        results = await h.results(batch["id"])
    for job in done["jobs"]:
        (label,) = job["labels"]
        width = 3 if label == "ghz" else 2
        assert results[label]["counts"] == fake.expected_counts(job["remote_id"], width)
        assert sum(results[label]["counts"].values()) == 200
    # OpenQASM 2 went out converted to 3, one job per circuit, with the submission key
    bodies = {j.metadata["qjobd_label"]: j for j in fake.jobs.values()}
    assert set(bodies) == {"bell2", "bell3", "ghz"}
    assert all(j.metadata["qjobd_key"].startswith("qjobd-") for j in bodies.values())
    assert fake.duplicate_keys() == {}


async def test_a_failed_job_reports_the_providers_code_and_message(fake, tmp_path, monkeypatch):
    fake.configure(failure_rate=1.0, failure={"code": "CompilationError",
                                              "message": "gate rzz is not supported"})
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL3})
        done = await h.wait(batch["id"])
    assert done["state"] == "failed"
    assert done["jobs"][0]["error"] == "CompilationError: gate rzz is not supported"
    assert done["jobs"][0]["remote_status"] == "failed"


async def test_an_unknown_status_is_kept_raw_and_the_job_still_completes(
        fake, tmp_path, monkeypatch):
    fake.configure(unknown_rate=1.0, unknown_status="calibrating", unknown_seconds=0.5)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL3})
        done = await h.wait(batch["id"])
        events = await h.store.events(batch_id=batch["id"])
    assert done["state"] == "completed"
    assert any(e.kind == "remote_status" and e.detail == {"remote_status": "calibrating"}
               for e in events)


async def test_server_errors_are_retried_until_every_job_completes(fake, tmp_path, monkeypatch):
    fake.configure(error_rate=0.3)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({f"c{i}": BELL3 for i in range(10)})
        done = await h.wait(batch["id"], limit=60)
        assert h.scheduler.stats()["ionq"].errors > 0
    assert done["state"] == "completed", [j["error"] for j in done["jobs"]]
    assert fake.duplicate_keys() == {}, "a retried create made a second job"


async def test_no_request_arrives_during_a_retry_after_pause(fake, tmp_path, monkeypatch):
    fake.configure(duration=(1.0, 1.5))
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL3, "b": BELL3})

        async def both_submitted() -> bool:
            return all(j.remote_id for j in (await h.store.get_batch(batch["id"])).jobs)
        await eventually(both_submitted)
        fake.rate_limit(1, retry_after=0.6)
        await eventually(lambda: fake.requests(status=429))
        limited_at = fake.requests(status=429)[0][0]
        done = await h.wait(batch["id"])
    assert done["state"] == "completed"
    after = [r[0] - limited_at for r in fake.requests() if r[0] > limited_at]
    assert after and min(after) >= 0.6 - 0.02, f"a request came {min(after):.3f}s into a pause"


async def test_the_request_budget_is_never_exceeded(fake, tmp_path, monkeypatch):
    async with daemon(fake, tmp_path, monkeypatch, rps=25) as h:
        batch = await h.submit({f"c{i}": BELL3 for i in range(40)})
        done = await h.wait(batch["id"], limit=60)
    assert done["state"] == "completed"
    assert fake.requests_in_any_window(1.0) <= 26


async def test_a_lost_create_answer_is_reconciled_without_a_second_job(
        fake, tmp_path, monkeypatch):
    fake.drop_create_response(1)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL3})
        done = await h.wait(batch["id"])
    assert done["state"] == "completed"
    assert len(fake.jobs) == 1 and fake.duplicate_keys() == {}
    assert done["jobs"][0]["remote_id"] == next(iter(fake.jobs))


async def test_a_job_in_flight_at_a_crash_is_found_by_key_after_restart(
        fake, tmp_path, monkeypatch):
    fake.stall_create(1.0, n=1)  # the create happens, its answer is late: the "crash" window
    db = tmp_path / "q.sqlite3"
    async with daemon(fake, tmp_path, monkeypatch, db=db) as h:
        batch = await h.submit({"a": BELL3})
        await eventually(lambda: fake.jobs)
        # the daemon dies here: intent stored, remote job created, its id never stored
        assert (await h.store.get_batch(batch["id"])).jobs[0].state == "submitting"
    async with daemon(fake, tmp_path, monkeypatch, db=db) as h:
        done = await h.wait(batch["id"])
    assert done["state"] == "completed"
    assert len(fake.jobs) == 1 and fake.duplicate_keys() == {}


async def test_cancel_reaches_the_provider_for_every_job(fake, tmp_path, monkeypatch):
    fake.configure(duration=(30.0, 40.0))
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({f"c{i}": BELL3 for i in range(5)})

        async def all_remote() -> bool:
            return all(j.remote_id for j in (await h.store.get_batch(batch["id"])).jobs)
        await eventually(all_remote)
        r = await h.client.post(f"/v1/batches/{batch['id']}/cancel")
        assert r.status_code == 202
        done = await h.wait(batch["id"])
    assert done["state"] == "canceled"
    assert all(fake.status(j["remote_id"]) == "canceled" for j in done["jobs"])
    assert fake.requests(method="PUT"), "no cancel request reached the provider"


async def test_a_batch_timeout_cancels_the_remote_jobs(fake, tmp_path, monkeypatch):
    fake.configure(duration=(30.0, 40.0))
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL3}, timeout=0.5)
        done = await h.wait(batch["id"])
    assert done["state"] == "timed_out"
    assert fake.status(done["jobs"][0]["remote_id"]) == "canceled"


async def test_the_api_key_never_reaches_logs_answers_or_the_database(
        fake, tmp_path, monkeypatch, caplog):
    fake.configure(failure_rate=1.0, error_rate=0.2)
    caplog.set_level(logging.DEBUG)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL3, "b": BELL3})
        done = await h.wait(batch["id"])
        health = (await h.client.get("/v1/health")).text
    assert KEY not in health and KEY not in str(done)
    assert KEY not in caplog.text
    assert not files_contain(h.db, KEY)


async def test_a_thousand_jobs_complete_with_coalesced_polls(fake, tmp_path, monkeypatch):
    fake.configure(duration=(0.5, 1.5))
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({f"c{i:04}": BELL3 for i in range(1000)}, shots=50)
        done = await h.wait(batch["id"], limit=120)
        rows = count_rows(h.db)
    assert done["state"] == "completed"
    assert rows["results"] == 1000
    creates = len(fake.requests(method="POST"))
    polls = fake.requests(route="GET /jobs")
    assert creates == 1000 and fake.duplicate_keys() == {}
    ids_per_poll = sum(r[5] for r in polls) / len(polls)
    assert ids_per_poll > 10, f"only {ids_per_poll:.1f} ids per status request"


async def test_a_restart_with_5000_jobs_in_flight_never_exceeds_the_budget(
        fake, tmp_path, monkeypatch):
    fake.configure(duration=(120.0, 180.0))  # all still running while we watch
    remote_ids = fake.plant(5000, BELL3)
    db = tmp_path / "q.sqlite3"
    store = await Store.open(db)
    circuits = [CircuitRecord(f"c{i}", BELL3, 3, 2, 2) for i in range(5000)]
    batch, _ = await store.create_batch(NewBatch(
        owner_uid=0, backend="ionq", shots=100, circuits=circuits,
        groups=[[c.label] for c in circuits]))
    overdue = time.time() - 60  # the daemon was down for a minute: every poll is late
    await asyncio.gather(*(store.transition(j.id, JobState.SUBMITTING) for j in batch.jobs))
    await asyncio.gather(*(store.transition(j.id, JobState.SUBMITTED, remote_id=rid,
                                            poll_interval=30.0, next_poll_at=overdue)
                           for j, rid in zip(batch.jobs, remote_ids, strict=True)))
    await store.close()

    async with daemon(fake, tmp_path, monkeypatch, rps=50, db=db):
        polled: set[str] = set()

        def all_polled() -> bool:
            polled.update(fake.polled_ids())
            return len(polled) >= 5000
        await eventually(all_polled, limit=60)
    assert fake.requests_in_any_window(1.0) <= 51
    assert not fake.requests(method="POST"), "a resumed job was submitted again"


#: one job's polls, with no jitter to blur the counts
STEADY_POLLING = {"initial_interval": 0.05, "max_interval": 0.3, "jitter": 0.0}


async def _run_one(h: Harness[IonQBackend], fake: FakeIonQ, label: str) -> tuple[int, float]:
    """Run a one-circuit batch: the polls of its job, and seconds from its remote end
    to its result being stored."""
    batch = await h.submit({label: BELL2})
    done = await h.wait(batch["id"])
    assert done["state"] == "completed"
    job = await h.job(batch["id"])
    assert job.finished_at is not None and job.remote_id is not None
    return fake.polls_by_id[job.remote_id], job.finished_at - fake.jobs[job.remote_id].completed_at


async def test_predicted_times_spare_polls_without_delaying_the_result(
        fake, tmp_path, monkeypatch):
    fake.configure(duration=3.0)
    polling = {**STEADY_POLLING, "near_end_factor": 1.0}  # the cap after the wait, as before
    async with daemon(fake, tmp_path, monkeypatch, polling=polling) as h:
        with_predictions = await _run_one(h, fake, "predicted")
        fake.configure(predictions=False)
        without = await _run_one(h, fake, "unpredicted")
    # without predictions: the backoff schedule, ~6 polls up to the 0.3 s cap, then one
    # every 0.3 s (~13); with them, one poll, a wait of half the predicted 3 s, then one
    # every 0.3 s (~7)
    assert without[0] >= 10, without
    assert with_predictions[0] <= 0.7 * without[0], (with_predictions, without)
    # after the stretched wait, polls come at the schedule's cap: seen within one interval
    assert with_predictions[1] <= 0.3 + 0.2, with_predictions


async def test_an_overestimated_prediction_delays_a_result_by_at_most_its_cap(
        fake, tmp_path, monkeypatch):
    # the job ends 0.2 s after its create, IonQ says 100 times that: trusted, the wait
    # after the first poll (0.05 s) would be ~7 s; prediction_max_wait cuts it to 0.5 s
    fake.configure(duration=0.2, prediction_bias=100.0)
    polling = {**STEADY_POLLING, "prediction_max_wait": 0.5}
    async with daemon(fake, tmp_path, monkeypatch, polling=polling) as h:
        polls, late = await _run_one(h, fake, "overestimated")
    assert polls == 2, polls  # the first, and the one after the capped wait
    assert late <= 0.5, late


async def test_a_short_job_is_not_found_later_for_its_prediction(fake, tmp_path, monkeypatch):
    # the real schedule's proportions (1 s, x1.5, cap 30 s) divided by 20, and a job of
    # 10 s real: after the predicted wait, polls go on from that wait's length, not from
    # the near-end cap (24 s real), which would find it ~1 s (20 s real) late
    fake.configure(duration=0.5)
    polling = {"initial_interval": 0.05, "max_interval": 1.5, "jitter": 0.0}
    async with daemon(fake, tmp_path, monkeypatch, polling=polling) as h:
        _, late = await _run_one(h, fake, "short")
    assert late <= 0.4, late


async def test_after_a_predicted_wait_the_job_is_polled_at_the_near_end_interval(
        fake, tmp_path, monkeypatch):
    fake.configure(duration=2.0)
    polling = {**STEADY_POLLING, "max_interval": 0.4, "near_end_factor": 0.5}
    async with daemon(fake, tmp_path, monkeypatch, polling=polling) as h:
        await _run_one(h, fake, "near-end")
    times = [r[0] for r in fake.requests(route="GET /jobs")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # one wait of half the predicted ~2 s, then polls every 0.5 x 0.4 s (not 0.4 s)
    assert [g > 0.6 for g in gaps] == [True] + [False] * (len(gaps) - 1), gaps
    assert gaps[0] == pytest.approx(1.0, abs=0.25)
    assert len(gaps) >= 4 and statistics.median(gaps[1:]) < 0.3, gaps


async def test_a_stretched_wait_cut_short_is_stored_so_a_crash_resumes_on_time(
        fake, tmp_path, monkeypatch):
    """The store must never hold a later poll than the real one: after a crash the job
    would be resumed that late."""
    polling = {**STEADY_POLLING, "prediction_max_wait": 5.0}
    # `ready` from the start, for 2.85 s: no status change to write down meanwhile
    fake.configure(duration=3.0, prediction_bias=100.0, phase_split=(0.0, 0.95))
    async with daemon(fake, tmp_path, monkeypatch, polling=polling) as h:
        a = await h.submit({"a": BELL2})

        async def stored_next() -> float:
            job = await h.job(a["id"])
            return job.next_poll_at or 0.0
        # its first poll: IonQ predicts ~300 s, so the next poll is 5 s away, and stored
        await eventually(lambda: _later_than(stored_next(), time.time() + 3.0))
        # now IonQ stops predicting, and a second job's polls take the first along early
        # (to fill their requests): its real next poll is a fraction of a second away
        fake.configure(predictions=False)
        await h.submit({"b": BELL2})
        await eventually(lambda: _later_than(time.time() + 1.0, stored_next()), limit=3.0)
        assert (await h.job(a["id"])).remote_status == "ready"


async def _later_than(x: Any, y: Any) -> bool:
    x, y = [await v if asyncio.iscoroutine(v) else v for v in (x, y)]
    return x > y


async def test_only_a_queued_job_carries_a_predicted_time_left(fake, tmp_path, monkeypatch):
    async with daemon(fake, tmp_path, monkeypatch) as h:
        fake.configure(duration=10.0, phase_split=(0.5, 0.0))
        before = time.time()
        queued = fake.plant(1, BELL2)[0]
        fake.configure(phase_split=(0.0, 0.0))
        started = fake.plant(1, BELL2)[0]
        statuses = await h.backend.status([queued, started])
        elapsed = time.time() - before
        fake.configure(predictions=False)
        unpredicted = await h.backend.status([queued])
    # IonQ's predicted wait (5 s) plus predicted execution (5 s), less the time gone by
    assert 10.0 - elapsed - 0.01 <= statuses[queued].eta <= 10.0 + 0.01
    assert statuses[started].raw == "started" and statuses[started].eta is None
    assert unpredicted[queued].eta is None


@pytest.mark.parametrize(("job", "eta"), [
    ({"status": "ready", "predicted_wait_time_ms": 4000,
      "predicted_execution_duration_ms": 1500}, 5.5),
    ({"status": "submitted", "predicted_wait_time_ms": 4000}, 4.0),
    # a running job's predicted end does not get nearer as it runs: not used, even if
    # the provider sent a wait
    ({"status": "started", "predicted_wait_time_ms": 4000,
      "predicted_execution_duration_ms": 1500}, None),
    ({"status": "completed", "predicted_wait_time_ms": 4000}, None),
    ({"status": "calibrating", "predicted_wait_time_ms": 4000}, None),
    ({"status": "ready", "predicted_wait_time_ms": None}, None),
    ({"status": "ready", "predicted_wait_time_ms": True}, None),
    ({"status": "ready", "predicted_wait_time_ms": -5}, None),
    ({"status": "ready", "predicted_wait_time_ms": "4000"}, None),
    ({"status": "ready", "predicted_wait_time_ms": float("nan")}, None),
    ({"status": "ready", "predicted_wait_time_ms": 10**400}, 1e7),
    ({"status": "ready", "predicted_wait_time_ms": 1000,
      "predicted_execution_duration_ms": "soon"}, 1.0),
])
def test_predicted_time_left_from_a_job_object(monkeypatch, job, eta):
    monkeypatch.setenv(IonQBackend.key_env, KEY)
    status = IonQBackend("ionq", {})._status_of({"id": "j1", **job})
    assert status is not None and status.eta == eta
