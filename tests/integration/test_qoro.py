"""The Qoro backend inside the daemon's engine, against the fake Qoro over real HTTP.

The daemon's parts run in-process (store on a real file, scheduler, API through ASGI);
the fake runs in a thread with its own event loop and speaks divi's wire format:
two-phase upload in fragments, status, paged resultsV2 with plain and QH histograms.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from qjobd.backends.base import Circuit, SubmitRequest
from qjobd.backends.errors import ProtocolError, Rejected
from qjobd.backends.qoro import MAX_FRAGMENT_BYTES, QoroBackend, histogram_counts, pack_fragments
from qjobd.testing.fake_qoro import MAX_BODY_BYTES, FakeQoro, qh_envelope
from qjobd.testing.harness import Harness, backend_daemon
from tests.conftest import BELL2, BELL3, count_rows, eventually

KEY = "qoro-sk-4d1c9e07aa52f3"
WIDE70 = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[70];\ncreg c[70];\n'
          "h q[0];\ncx q[0],q[69];\nmeasure q -> c;\n")
WIDE130_QASM3 = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[130] q;\nbit[130] c;\n'
                 "h q[0];\ncx q[0], q[129];\nc = measure q;\n")
#: classical control flow on a single bit: OpenQASM 3 only
NO_QASM2_FORM = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
                 "h q[0];\nc[0] = measure q[0];\nif (c[0]) { x q[1]; }\nc[1] = measure q[1];\n")


def padded(seed: int, pad_lines: int = 300) -> str:
    """An OpenQASM 2 circuit padded with random comments: ~45 kB once gzipped and base64."""
    rng = random.Random(seed)
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', "qreg q[3];", "creg c[3];"]
    lines += ["// " + rng.randbytes(96).hex() for _ in range(pad_lines)]
    lines += [f"rz({rng.random()!r}) q[0];", "h q[1];", "cx q[1],q[2];", "measure q -> c;"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeQoro]:
    with FakeQoro(api_key=KEY, duration=(0.05, 0.2)) as f:
        yield f


@pytest.fixture
def fake(fake_server: FakeQoro) -> FakeQoro:
    """The module's fake, reset: no jobs, no log, the constructor's knobs."""
    fake_server.reset()
    return fake_server


def daemon(fake: FakeQoro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
           db: Path | None = None, polling: dict | None = None, rps: float = 0.0,
           **settings: Any) -> AbstractAsyncContextManager[Harness[QoroBackend]]:
    # short long-polls: /wait can miss a change that lands between its read of the batch
    # and its subscription (reported), which would cost a whole timeout
    return backend_daemon(QoroBackend, "qoro", fake.base_url, KEY, tmp_path, monkeypatch,
                          shots=500, wait_limit=20, wait_poll=1, db=db, polling=polling,
                          rps=rps, **settings)


def assert_counts_as_planted(fake: FakeQoro, done: dict, results: dict) -> None:
    remote_id = done["jobs"][0]["remote_id"]
    for label, entry in results.items():
        assert entry["counts"] == fake.expected_counts(remote_id, label), label
        assert sum(entry["counts"].values()) == done["shots"]


# -- submission and results -----------------------------------------------------------------

async def test_a_batch_of_three_fragments_completes_with_exact_counts(
        fake, tmp_path, monkeypatch):
    fake.configure(encoding="mixed", max_page=25)  # dict, QH1, QH2 in turn; three pages
    circuits = {f"c{i:02}": padded(i) for i in range(64)}
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit(circuits)
        done = await h.wait(batch["id"])
        results = await h.results(batch["id"])
    assert done["state"] == "completed", done["jobs"][0]["error"]
    (job,) = fake.jobs.values()  # one remote job for the whole batch
    assert job.id == done["jobs"][0]["remote_id"]
    assert len(job.fragments) >= 3, job.fragments
    assert all(size <= MAX_BODY_BYTES for size in job.fragments)
    # greedy: every fragment but the last is too full to take another ~45 kB circuit
    assert all(size > MAX_BODY_BYTES - 50_000 for size in job.fragments[:-1])
    assert list(job.circuits) == list(circuits) and job.shots == 500
    assert set(results) == set(circuits)
    assert_counts_as_planted(fake, done, results)
    assert len(fake.requests(route="GET job/{id}/resultsV2/")) == 3
    assert fake.duplicate_tags() == {} and fake.never_finalized() == []


@pytest.mark.parametrize("encoding", ["qh1", "qh2", "dict"])
async def test_qasm3_goes_out_as_qasm2_and_wide_registers_decode(
        fake, tmp_path, monkeypatch, encoding):
    fake.configure(encoding=encoding, max_page=2)
    circuits = {"bell3": BELL3, "bell2": BELL2, "wide70": WIDE70, "wide130": WIDE130_QASM3}
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit(circuits)
        done = await h.wait(batch["id"])
        results = await h.results(batch["id"])
    assert done["state"] == "completed", done["jobs"][0]["error"]
    (job,) = fake.jobs.values()
    assert all(src.startswith("OPENQASM 2.0;") for src in job.circuits.values())
    assert "bit[2]" not in job.circuits["bell3"] and "creg c[2];" in job.circuits["bell3"]
    widths = {label: len(next(iter(r["counts"]))) for label, r in results.items()}
    assert widths == {"bell3": 2, "bell2": 2, "wide70": 70, "wide130": 130}
    assert_counts_as_planted(fake, done, results)


async def test_a_circuit_with_no_qasm2_form_is_refused_with_422_and_nothing_is_stored(
        fake, tmp_path, monkeypatch):
    async with daemon(fake, tmp_path, monkeypatch) as h:
        r = await h.client.post("/v1/batches", json={
            "backend": "qoro", "circuits": {"fine": BELL3, "feedback": NO_QASM2_FORM}})
        rows = count_rows(h.db)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [d["label"] for d in error["details"]] == ["feedback"]
    assert "OpenQASM 2" in error["details"][0]["reason"]
    assert rows["batches"] == rows["jobs"] == rows["circuits"] == 0
    assert fake.request_log == []


@pytest.mark.parametrize(("corruption", "message"), [
    ("shots", "counts sum to"),
    ("truncate", "truncated payload"),
    ("encoding", "disagrees with the envelope's encoding"),
])
async def test_a_corrupt_histogram_fails_its_job_cleanly_while_another_batch_completes(
        fake, tmp_path, monkeypatch, corruption, message):
    fake.configure(corrupt={"broken": corruption})
    async with daemon(fake, tmp_path, monkeypatch) as h:
        bad = await h.submit({"ok": BELL2, "broken": BELL3})
        good = await h.submit({"fine": BELL2, "also": BELL3})
        bad_done, good_done = await h.wait(bad["id"]), await h.wait(good["id"])
        health = await h.client.get("/v1/health")
        good_results = await h.results(good["id"])
    assert bad_done["state"] == "failed"
    error = bad_done["jobs"][0]["error"]
    assert error.startswith("results could not be read: circuit 'broken': corrupt QH"), error
    assert message in error
    assert good_done["state"] == "completed"
    assert_counts_as_planted(fake, good_done, good_results)
    assert health.status_code == 200


async def test_results_are_paged_until_next_is_null(fake, tmp_path, monkeypatch):
    fake.configure(max_page=3)
    circuits = {f"b{i}": BELL2 for i in range(10)}
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit(circuits)
        done = await h.wait(batch["id"])
        results = await h.results(batch["id"])
    assert done["state"] == "completed"
    assert len(fake.requests(route="GET job/{id}/resultsV2/")) == 4
    assert_counts_as_planted(fake, done, results)


@pytest.mark.parametrize("status", ["INSUFFICIENT_CREDITS", "TIMED_OUT", "FAILED"])
async def test_a_failing_status_fails_the_job_with_that_reason(
        fake, tmp_path, monkeypatch, status):
    fake.configure(failure_rate=1.0, failure_status=status)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL2})
        done = await h.wait(batch["id"])
    job = done["jobs"][0]
    assert done["state"] == "failed"
    assert job["remote_status"] == status and job["error"].startswith(f"{status}: ")
    assert fake.requests(route="GET job/{id}/resultsV2/") == []


async def test_unknown_statuses_and_server_errors_are_ridden_out_without_a_second_job(
        fake, tmp_path, monkeypatch):
    fake.configure(unknown_rate=1.0, unknown_status="CALIBRATING", error_rate=0.2)
    circuits = {f"c{i}": padded(i) for i in range(30)}  # two fragments
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batches = [await h.submit(circuits) for _ in range(3)]
        done = [await h.wait(b["id"], limit=40) for b in batches]
        events = [await h.reasons(b["id"]) for b in batches]
        assert h.scheduler.stats()["qoro"].errors > 0
    assert [d["state"] for d in done] == ["completed"] * 3, [d["jobs"][0]["error"] for d in done]
    assert all(any("CALIBRATING" in e for e in ev) for ev in events)
    # an interrupted upload may be canceled and made again, but one job per batch ran
    for tag in fake.inits_by_tag:
        assert sum(1 for j in fake.finalized() if j.tag == tag) == 1


async def test_a_qpu_system_is_named_in_init_and_the_key_goes_as_a_bearer_token(
        fake, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    fake.configure(error_rate=0.2)
    async with daemon(fake, tmp_path, monkeypatch, qpu_system_name="qpu_alpha") as h:
        batch = await h.submit({"a": BELL2})
        done = await h.wait(batch["id"])
        health = (await h.client.get("/v1/health")).text
    assert done["state"] == "completed"
    assert [j.target for j in fake.finalized()] == [{"qpu_system_name": "qpu_alpha"}]
    assert "qpu_alpha" in health and KEY not in health and KEY not in caplog.text
    assert not any(KEY.encode() in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


# -- crashes and lost answers -------------------------------------------------------------

async def test_an_upload_interrupted_by_a_crash_is_canceled_and_submitted_once_more(
        fake, tmp_path, monkeypatch):
    # the second fragment hangs: the daemon dies after init and a first fragment
    fake.configure(stall_add_fragment=1, stall_add_seconds=30.0, stall_add_count=1)
    circuits = {f"c{i:02}": padded(i) for i in range(50)}  # three fragments
    db = tmp_path / "q.sqlite3"
    async with daemon(fake, tmp_path, monkeypatch, db=db) as h:
        batch = await h.submit(circuits)
        await eventually(lambda: fake.stalling == 1)
        job = await h.job(batch["id"])
        assert job.state == "submitting" and job.remote_id is not None
    partial = job.remote_id
    fake.release_stalls()
    await eventually(lambda: fake.stalling == 0)  # the stalled fragment lands, unfinalized
    assert fake.status(partial) == "PENDING" and fake.jobs[partial].finalized_at is None
    async with daemon(fake, tmp_path, monkeypatch, db=db) as h:
        done = await h.wait(batch["id"])
        reasons = await h.reasons(batch["id"])
        results = await h.results(batch["id"])
    assert done["state"] == "completed"
    final = done["jobs"][0]["remote_id"]
    assert final != partial
    assert fake.status(partial) == "CANCELLED" and fake.jobs[partial].finalized_at is None
    assert [j.id for j in fake.finalized()] == [final]  # exactly one job ran
    assert fake.inits_by_tag[fake.jobs[final].tag] == 2
    assert any(f"partial job {partial} was canceled; submitting again" in r for r in reasons)
    assert_counts_as_planted(fake, done, results)


async def test_an_upload_whose_finalized_fragment_arrived_is_kept_after_a_crash(
        fake, tmp_path, monkeypatch):
    # the last fragment is stored (the job runs) but its answer never reaches the daemon
    fake.configure(stall_add_fragment=0, stall_add_seconds=30.0, stall_add_when="after",
                   stall_add_count=1)
    db = tmp_path / "q.sqlite3"
    async with daemon(fake, tmp_path, monkeypatch, db=db) as h:
        batch = await h.submit({"a": BELL2, "b": BELL3})
        await eventually(lambda: fake.stalling == 1)
        job = await h.job(batch["id"])
        assert job.state == "submitting" and job.remote_id is not None
    remote_id = job.remote_id
    fake.release_stalls()
    await eventually(lambda: fake.status(remote_id) != "PENDING")
    async with daemon(fake, tmp_path, monkeypatch, db=db) as h:
        done = await h.wait(batch["id"])
        reasons = await h.reasons(batch["id"])
        results = await h.results(batch["id"])
    assert done["state"] == "completed" and done["jobs"][0]["remote_id"] == remote_id
    assert list(fake.jobs) == [remote_id] and fake.requests(route="POST job/{id}/cancel/") == []
    assert any("interrupted submission settled" in r for r in reasons)
    assert_counts_as_planted(fake, done, results)


async def test_a_lost_init_answer_is_submitted_once_more_and_the_orphan_never_runs(
        fake, tmp_path, monkeypatch):
    fake.configure(drop_init_responses=1)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL2})
        done = await h.wait(batch["id"])
        reasons = await h.reasons(batch["id"])
    assert done["state"] == "completed"
    (orphan,) = fake.never_finalized()
    (ran,) = fake.finalized()
    assert orphan.tag == ran.tag and orphan.circuits == {} and fake.status(orphan.id) == "PENDING"
    assert done["jobs"][0]["remote_id"] == ran.id
    assert any("can never run" in r for r in reasons)


async def test_a_lost_answer_to_a_middle_fragment_is_settled_without_a_second_run(
        fake, tmp_path, monkeypatch):
    fake.configure(drop_add_responses=1, drop_add_fragment=1)
    circuits = {f"c{i:02}": padded(i) for i in range(50)}
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit(circuits)
        done = await h.wait(batch["id"])
    assert done["state"] == "completed"
    assert fake.dropped and len(fake.finalized()) == 1
    (partial,) = fake.never_finalized()
    assert fake.status(partial.id) == "CANCELLED"


async def test_a_refused_fragment_fails_the_batch_and_cancels_the_partial_job(
        fake, tmp_path, monkeypatch):
    fake.inject(1, 400, route="POST job/{id}/add_circuits/")
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL2})
        done = await h.wait(batch["id"])
    assert done["state"] == "failed"
    assert done["jobs"][0]["error"].startswith("rejected by qoro: add circuits to job ")
    (partial,) = fake.jobs.values()
    assert partial.finalized_at is None and fake.status(partial.id) == "CANCELLED"


async def test_a_circuit_too_big_for_any_fragment_fails_before_a_job_exists(
        fake, tmp_path, monkeypatch):
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"huge": padded(1, pad_lines=7000)})
        done = await h.wait(batch["id"])
    assert done["state"] == "failed"
    assert "one Qoro upload fragment holds at most" in done["jobs"][0]["error"]
    assert fake.jobs == {}


# -- cancel races and rate limits ---------------------------------------------------------

async def test_cancel_while_running_cancels_the_remote_job(fake, tmp_path, monkeypatch):
    fake.configure(duration=30.0, phase_split=(0.002, 0.002))
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL2})

        async def running() -> bool:
            return (await h.job(batch["id"])).state == "running"
        await eventually(running)
        r = await h.client.post(f"/v1/batches/{batch['id']}/cancel")
        assert r.status_code == 202
        done = await h.wait(batch["id"])
    assert done["state"] == "canceled"
    assert fake.status(done["jobs"][0]["remote_id"]) == "CANCELLED"


async def test_a_cancel_that_loses_the_race_to_completion_keeps_the_results(
        fake, tmp_path, monkeypatch):
    slow = {"initial_interval": 10.0, "max_interval": 10.0, "jitter": 0.0}
    async with daemon(fake, tmp_path, monkeypatch, polling=slow) as h:
        batch = await h.submit({"a": BELL2, "b": BELL3})

        async def remote_done() -> bool:
            job = await h.job(batch["id"])
            return job.remote_id is not None and fake.status(job.remote_id) == "COMPLETED"
        await eventually(remote_done)  # done remotely; the daemon has not polled yet
        r = await h.client.post(f"/v1/batches/{batch['id']}/cancel")
        assert r.status_code == 202
        done = await h.wait(batch["id"])
        results = await h.results(batch["id"])
    assert fake.requests(route="POST job/{id}/cancel/", status=409)
    assert done["state"] == "completed"
    assert_counts_as_planted(fake, done, results)


async def test_a_cancel_during_the_upload_cancels_the_job_once_it_exists(
        fake, tmp_path, monkeypatch):
    fake.configure(stall_add_fragment=0, stall_add_seconds=30.0, stall_add_count=1,
                   duration=30.0)
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL2})
        await eventually(lambda: fake.stalling == 1)
        r = await h.client.post(f"/v1/batches/{batch['id']}/cancel")
        assert r.status_code == 202
        job = await h.job(batch["id"])
        assert job.state == "submitting"
        tracked = h.scheduler.runners["qoro"]._jobs[job.id]
        await eventually(lambda: tracked.pending_end is not None)  # the cancel waits for it
        fake.release_stalls()
        done = await h.wait(batch["id"])
    assert done["state"] == "canceled"
    (job,) = fake.jobs.values()
    assert job.finalized_at is not None and fake.status(job.id) == "CANCELLED"


async def test_cancel_is_idempotent_on_the_wire(fake, monkeypatch):
    monkeypatch.setenv("QORO_API_KEY", KEY)
    backend = QoroBackend("qoro", {"base_url": fake.base_url})
    await backend.start()
    try:
        request = SubmitRequest("qjobd-k1", [Circuit("a", BELL2, 2, 2)], shots=10)
        remote_id = await backend.submit(request)
        await backend.cancel([remote_id])
        await backend.cancel([remote_id])  # 409: already terminal
        await backend.cancel(["no-such-job"])  # 404: gone
        assert fake.status(remote_id) == "CANCELLED"
        assert [r[5] for r in fake.requests(route="POST job/{id}/cancel/")] == [200, 409, 404]
        # a job that finished before the cancel reached it
        done_id = await backend.submit(SubmitRequest("qjobd-k2", request.circuits, shots=10))
        fake.finish_now(done_id)
        await backend.cancel([done_id])
        assert fake.status(done_id) == "COMPLETED"
    finally:
        await backend.aclose()


async def test_no_request_arrives_during_a_retry_after_pause(fake, tmp_path, monkeypatch):
    fake.configure(duration=(1.0, 1.2))
    async with daemon(fake, tmp_path, monkeypatch) as h:
        batch = await h.submit({"a": BELL2})

        async def submitted() -> bool:
            return (await h.job(batch["id"])).state in ("submitted", "running")
        await eventually(submitted)
        fake.rate_limit(1, retry_after=0.6)
        await eventually(lambda: fake.requests(status=429))
        limited_at = fake.requests(status=429)[0][0]
        done = await h.wait(batch["id"])
    assert done["state"] == "completed"
    after = [r[0] - limited_at for r in fake.requests() if r[0] > limited_at]
    assert after and min(after) >= 0.6 - 0.02, f"a request came {min(after):.3f}s into a pause"


async def test_every_request_of_an_upload_and_of_paged_results_draws_from_the_budget(
        fake, tmp_path, monkeypatch):
    fake.configure(max_page=10)  # five pages of results, after three fragments
    circuits = {f"c{i:02}": padded(i) for i in range(50)}
    async with daemon(fake, tmp_path, monkeypatch, rps=8) as h:
        batch = await h.submit(circuits)
        done = await h.wait(batch["id"])
        counted = h.scheduler.stats()["qoro"].requests
    assert done["state"] == "completed"
    assert len(fake.jobs[done["jobs"][0]["remote_id"]].fragments) == 3
    assert len(fake.requests(route="GET job/{id}/resultsV2/")) == 5
    times = sorted(r[0] for r in fake.requests())
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert busiest <= 9, f"{busiest} requests within one second on a budget of 8/s"
    assert counted == len(times)


# -- pure parts -----------------------------------------------------------------------------

def _circuits(n: int, pad: int = 300) -> list[Circuit]:
    return [Circuit(f"c{i}", padded(i, pad), 2, 3) for i in range(n)]


def test_fragments_are_packed_greedily_under_the_limit_and_only_the_last_is_final():
    circuits = _circuits(40)
    fragments = pack_fragments(circuits, 100, MAX_FRAGMENT_BYTES)
    assert MAX_FRAGMENT_BYTES == 996_147 and len(fragments) == 2
    bodies = [json.loads(f) for f in fragments]
    assert [b["finalized"] for b in bodies] == ["false", "true"]
    assert all(b["mode"] == "append" and b["shots"] == 100 for b in bodies)
    assert all(len(f) <= MAX_FRAGMENT_BYTES for f in fragments)
    # exactly what is sent: compact JSON, key order kept
    assert all(f == json.dumps(b, separators=(",", ":")).encode()
               for f, b in zip(fragments, bodies, strict=True))
    labels = [label for b in bodies for label in b["circuits"]]
    assert labels == [c.label for c in circuits]
    # greedy: the first fragment could not have taken the second's first circuit
    first_of_next = next(iter(bodies[1]["circuits"].items()))
    assert len(fragments[0]) + len(json.dumps(first_of_next[0])) \
        + len(json.dumps(first_of_next[1])) + 2 > MAX_FRAGMENT_BYTES


def test_packing_is_exact_at_the_limit():
    circuits = _circuits(3, pad=20)
    one = pack_fragments(circuits, 7, 10**6)
    assert len(one) == 1
    exact = len(one[0]) + 1  # the "false" of a non-final fragment is one byte longer
    assert len(pack_fragments(circuits, 7, exact)) == 1
    assert len(pack_fragments(circuits, 7, exact - 1)) == 2


def test_a_circuit_too_big_for_a_fragment_or_not_qasm2_is_rejected():
    with pytest.raises(Rejected, match="one Qoro upload fragment holds at most"):
        pack_fragments(_circuits(1), 10, 10_000)
    with pytest.raises(Rejected, match="OpenQASM 2 only"):
        pack_fragments([Circuit("x", BELL3, 3, 2)], 10, MAX_FRAGMENT_BYTES)


def test_plain_histograms_are_checked_against_the_circuits_width():
    assert histogram_counts("a", {"01": 3, "1 1": 2, "00": 0}, 2) == {"01": 3, "11": 2}
    assert histogram_counts("a", {"10": 4.0}, 2) == {"10": 4}
    for bad, why in [({"011": 1}, "not a 2-bit bitstring"), ({"0x": 1}, "not a 2-bit"),
                     ({"01": -1}, "not a whole number"), ({"01": 1.5}, "not a whole number"),
                     ({"01": True}, "not a whole number"), (None, "NoneType, not an object"),
                     ([1], "list, not an object")]:
        with pytest.raises(ProtocolError, match=f"circuit 'a': .*{why}"):
            histogram_counts("a", bad, 2)
    with pytest.raises(ProtocolError, match="3 bits wide but the circuit has 2 classical bits"):
        histogram_counts("a", qh_envelope({1: 5}, 3, 1), 2)


@pytest.mark.parametrize(("settings", "message"), [
    ({"simulator_cluster": "a", "qpu_system_name": "b"}, "not both"),
    ({"target": "simulator"}, "unknown setting"),
    ({"simulator_cluster": ""}, "non-empty string"),
    ({"timeout": 0}, "positive"),
])
def test_bad_settings_are_refused(monkeypatch, settings, message):
    monkeypatch.setenv("QORO_API_KEY", KEY)
    with pytest.raises(ValueError, match=message):
        QoroBackend("qoro", settings)


def test_a_missing_key_says_where_it_was_looked_for(monkeypatch):
    monkeypatch.delenv("QORO_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValueError, match=r"\$QORO_API_KEY"):
        QoroBackend("qoro", {})


def test_the_registry_knows_the_qoro_type(monkeypatch):
    from qjobd.backends.registry import create_backend

    monkeypatch.setenv("QORO_API_KEY", KEY)
    backend = create_backend("qoro", "qoro", {})
    assert isinstance(backend, QoroBackend)
    assert backend.target == {"simulator_cluster": "qoro_maestro"}
    caps = backend.capabilities
    assert caps.qasm_versions == frozenset({2}) and caps.lost_create_is_inert
    assert not caps.lookup_by_key and caps.max_status_batch == 1


# -- the fake itself ------------------------------------------------------------------------

def test_the_fake_enforces_the_wire_rules(fake):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=fake.base_url + "/", headers=auth) as c:
        assert c.post("job/init/", json={"tag": "t", "job_type": "EXECUTE"}).status_code == 400
        job_id = c.post("job/init/", json={"tag": "t", "job_type": "EXECUTE",
                                           "simulator_cluster": "qoro_maestro"}
                        ).json()["job_id"]
        url = f"job/{job_id}/add_circuits/"
        base = {"circuits": {}, "mode": "append", "shots": 10}
        r = c.post(url, json={**base, "finalized": True})  # a boolean, not the string
        assert r.status_code == 400
        big = {**base, "finalized": "false", "circuits": {"x": "A" * MAX_BODY_BYTES}}
        assert c.post(url, json=big).status_code == 413
        r = c.post(url, json={**base, "finalized": "true", "circuits": {
            "q3": pack_b64(BELL3)}})
        assert r.status_code == 400 and "OpenQASM 2.0" in r.text
        assert c.get(f"job/{job_id}/status/").json()["status"] == "PENDING"
        assert c.get(f"job/{job_id}/resultsV2/").status_code == 400
        assert httpx.get(f"{fake.base_url}/job/{job_id}/status/").status_code == 401
    assert fake.never_finalized()[0].id == job_id


def pack_b64(source: str) -> str:
    import base64
    import gzip

    return base64.b64encode(gzip.compress(source.encode())).decode()
