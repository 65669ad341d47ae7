"""The HTTP API in-process: SPEC's endpoints, shapes and errors.

A rejected request must store nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import pytest

from qjobd.daemon.api.peer import Peer
from tests.conftest import BELL2, BELL3, Daemon, count_rows, eventually

EMPTY = {"batches": 0, "jobs": 0, "circuits": 0, "results": 0, "events": 0}


async def submit(d: Daemon, body: dict, **headers: str) -> dict:
    r = await d.client.post("/v1/batches", json=body, headers=headers)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def wait_terminal(d: Daemon, batch_id: str) -> dict:
    with anyio.fail_after(20):
        while True:
            r = await d.client.get(f"/v1/batches/{batch_id}/wait", params={"timeout": 5})
            assert r.status_code == 200
            if r.json()["state"] in ("completed", "failed", "canceled", "timed_out"):
                return r.json()


async def test_submit_stores_the_batch_and_answers_201_with_spec_shape(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={
        "backend": "fake", "circuits": {"bell": BELL2, "bell3": BELL3}, "shots": 50,
        "name": "night run", "tags": {"project": "x"}, "timeout": 3600})
    assert r.status_code == 201
    b = r.json()
    for key in ("id", "state", "backend", "shots", "name", "tags", "owner", "created_at",
                "updated_at", "finished_at", "error", "jobs"):
        assert key in b
    assert (b["backend"], b["shots"], b["name"], b["tags"]) == ("fake", 50, "night run",
                                                                {"project": "x"})
    assert b["created_at"].endswith("Z")
    assert sorted(label for j in b["jobs"] for label in j["labels"]) == ["bell", "bell3"]
    for job in b["jobs"]:
        assert set(job) >= {"id", "remote_id", "state", "remote_status", "labels", "error",
                            "next_poll_at"}
    rows = count_rows(daemon.db)
    assert rows["batches"] == 1 and rows["circuits"] == 2 and rows["jobs"] == 2


async def test_a_batch_runs_to_completion_and_serves_its_results(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "fake", "circuits": {"a": BELL2, "b": BELL3},
                              "shots": 70})
    done = await wait_terminal(daemon, b["id"])
    assert done["state"] == "completed"
    assert all(j["state"] == "completed" and j["remote_id"] for j in done["jobs"])
    assert done["finished_at"] is not None
    r = await daemon.client.get(f"/v1/batches/{b['id']}/results")
    assert r.status_code == 200
    res = r.json()
    assert res["id"] == b["id"] and res["state"] == "completed"
    assert set(res["results"]) == {"a", "b"}
    for label, entry in res["results"].items():
        assert entry["counts"] == {"00": 70} and entry["shots"] == 70
        assert entry["job_id"] in {j["id"] for j in done["jobs"] if label in j["labels"]}


@pytest.mark.local
async def test_local_simulator_batch_gives_bell_counts(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "local", "circuits": {"bell": BELL3}, "shots": 500})
    done = await wait_terminal(daemon, b["id"])
    assert done["state"] == "completed", done
    res = (await daemon.client.get(f"/v1/batches/{b['id']}/results")).json()
    counts = res["results"]["bell"]["counts"]
    assert sum(counts.values()) == 500
    assert set(counts) <= {"00", "11"}


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "malformed_json"),
    (b"[1, 2]", 400, "malformed_json"),
    (json.dumps({"circuits": {"a": BELL2}}).encode(), 400, "invalid_request"),
    (json.dumps({"backend": "nope", "circuits": {"a": BELL2}}).encode(), 400,
     "unknown_backend"),
    (json.dumps({"backend": "fake", "circuits": {}}).encode(), 400, "empty_batch"),
    (json.dumps({"backend": "fake", "circuits": ["x"]}).encode(), 400, "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": 5}}).encode(), 400, "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "shots": 0}).encode(), 400,
     "out_of_range"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "shots": 10_001}).encode(), 400,
     "out_of_range"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "shots": "many"}).encode(), 400,
     "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "shots": True}).encode(), 400,
     "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "tags": {"k": 1}}).encode(), 400,
     "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "timeout": -1}).encode(), 400,
     "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2}, "colour": "red"}).encode(), 400,
     "invalid_request"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2},
                 "options": {"warp": 9}}).encode(), 400, "invalid_options"),
    (json.dumps({"backend": "fake", "circuits": {"a": BELL2.replace("h q[0];", "h q[7];")}})
     .encode(), 422, "invalid_qasm"),
    (json.dumps({"backend": "fake", "circuits": {"a": "x" * 300_000}}).encode(), 413,
     "too_large"),
])
async def test_bad_requests_get_the_spec_error_shape_and_store_nothing(
        daemon: Daemon, body: bytes, status: int, code: str) -> None:
    r = await daemon.client.post("/v1/batches", content=body,
                                 headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert count_rows(daemon.db) == EMPTY


async def test_invalid_qasm_names_label_line_column_and_reason(daemon: Daemon) -> None:
    broken = BELL3.replace("cx q[0], q[1];", "cx q[0] q[1];")  # line 6: missing comma
    r = await daemon.client.post("/v1/batches", json={
        "backend": "fake", "circuits": {"good": BELL2, "broken": broken}})
    assert r.status_code == 422
    details = r.json()["error"]["details"]
    assert len(details) == 1
    assert details[0]["label"] == "broken"
    assert details[0]["line"] == 6
    assert details[0]["column"] is not None and details[0]["reason"]
    assert "broken" in r.json()["error"]["message"]
    assert count_rows(daemon.db) == EMPTY


async def test_every_invalid_circuit_is_reported(daemon: Daemon) -> None:
    r = await daemon.client.post("/v1/batches", json={"backend": "fake", "circuits": {
        "one": "OPENQASM 2.0; qreg q[1]; foo q[0];", "two": "", "ok": BELL2}})
    assert r.status_code == 422
    assert sorted(e["label"] for e in r.json()["error"]["details"]) == ["one", "two"]


async def test_circuit_wider_than_the_backend_takes_is_rejected(daemon: Daemon) -> None:
    wide = "OPENQASM 2.0;\nqreg q[11];\ncreg c[11];\nmeasure q -> c;\n"
    r = await daemon.client.post("/v1/batches", json={"backend": "fake", "circuits": {"w": wide}})
    assert r.status_code == 422
    assert "11 qubits" in r.json()["error"]["message"]
    assert count_rows(daemon.db) == EMPTY


async def test_idempotency_key_returns_the_same_batch_or_409(daemon: Daemon) -> None:
    body = {"backend": "held", "circuits": {"a": BELL2}}
    first = await daemon.client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k1"})
    again = await daemon.client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = await daemon.client.post("/v1/batches", json={**body, "shots": 7},
                                     headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert count_rows(daemon.db)["batches"] == 1


async def test_list_is_newest_first_paginated_and_filtered(daemon: Daemon) -> None:
    ids = [(await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}}))["id"]
           for _ in range(5)]
    other = await submit(daemon, {"backend": "fake", "circuits": {"a": BELL2}})
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "backend": "held"} | ({"cursor": cursor} if cursor else {})
        page = (await daemon.client.get("/v1/batches", params=params)).json()
        seen += [b["id"] for b in page["batches"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert other["id"] not in seen
    queued = (await daemon.client.get("/v1/batches", params={"state": "queued"})).json()
    assert all(b["state"] == "queued" for b in queued["batches"])
    bad = await daemon.client.get("/v1/batches", params={"state": "sleeping"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    bad = await daemon.client.get("/v1/batches", params={"cursor": "xyz"})
    assert bad.status_code == 400


async def test_unknown_ids_paths_and_methods_get_json_errors(daemon: Daemon) -> None:
    for path in ("/v1/batches/nope", "/v1/batches/nope/results", "/v1/nothing"):
        r = await daemon.client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await daemon.client.post("/v1/batches/nope/cancel")
    assert r.status_code == 404
    r = await daemon.client.delete("/v1/batches")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_results_are_409_until_the_batch_is_terminal(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}})
    r = await daemon.client.get(f"/v1/batches/{b['id']}/results")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_finished"


async def test_wait_returns_the_unfinished_batch_when_its_timeout_passes(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}})
    r = await daemon.client.get(f"/v1/batches/{b['id']}/wait", params={"timeout": 0.2})
    assert r.status_code == 200 and r.json()["state"] not in ("completed", "failed")
    r = await daemon.client.get(f"/v1/batches/{b['id']}/wait", params={"timeout": "soon"})
    assert r.status_code == 400


async def test_cancel_ends_held_jobs_and_is_idempotent(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2, "b": BELL3}})
    r = await daemon.client.post(f"/v1/batches/{b['id']}/cancel")
    assert r.status_code == 202
    done = await wait_terminal(daemon, b["id"])
    assert done["state"] == "canceled"
    assert all(j["state"] == "canceled" for j in done["jobs"])
    again = await daemon.client.post(f"/v1/batches/{b['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "canceled"
    held = daemon.backends["held"]
    remote = [j["remote_id"] for j in done["jobs"] if j["remote_id"]]
    assert all(held.jobs[r].state == "canceled" for r in remote)


async def test_a_rejected_submission_fails_the_job_with_the_reason(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "fake", "circuits": {"a": BELL2},
                              "options": {"reject": True}})
    done = await wait_terminal(daemon, b["id"])
    assert done["state"] == "failed"
    assert "reject" in done["jobs"][0]["error"]
    assert done["error"]


async def test_timeout_ends_unfinished_jobs_as_timed_out(daemon: Daemon) -> None:
    b = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}, "timeout": 0.3})
    done = await wait_terminal(daemon, b["id"])
    assert done["state"] == "timed_out"
    assert "timeout" in done["jobs"][0]["error"]


async def test_other_users_batches_are_403_and_hidden_from_their_list(daemon: Daemon) -> None:
    stranger = Peer(pid=1, uid=os.geteuid() + 4242, gid=4242)
    mine = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}})
    daemon.set_peer(stranger)
    r = await daemon.client.get(f"/v1/batches/{mine['id']}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await daemon.client.post(f"/v1/batches/{mine['id']}/cancel")
    assert r.status_code == 403
    theirs = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}})
    assert theirs["owner_uid"] == stranger.uid
    listed = (await daemon.client.get("/v1/batches")).json()["batches"]
    assert [b["id"] for b in listed] == [theirs["id"]]
    daemon.set_peer(None)  # back to the daemon's own user, who sees everything
    listed = (await daemon.client.get("/v1/batches")).json()["batches"]
    assert {b["id"] for b in listed} == {mine["id"], theirs["id"]}


async def test_health_reports_version_counts_and_backends(daemon: Daemon) -> None:
    await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}})
    h = (await daemon.client.get("/v1/health")).json()
    assert h["status"] == "ok" and h["version"]
    assert h["uptime"] >= 0
    assert sum(h["batches"].values()) == 1
    assert set(h["backends"]) == {"fake", "held"}
    assert h["backends"]["held"]["type"] == "scripted"


async def test_wait_sees_a_change_that_lands_between_its_read_and_its_sleep(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    b = await submit(daemon, {"backend": "held", "circuits": {"a": BELL2}})
    real_get = daemon.store.get_batch
    raced = False

    async def get_batch(batch_id: str, *, with_jobs: bool = True) -> Any:
        nonlocal raced
        batch = await real_get(batch_id, with_jobs=with_jobs)
        if not raced and not batch.state.terminal:
            raced = True
            # the batch ends (and its change is announced) after /wait has read it
            r = await daemon.client.post(f"/v1/batches/{batch_id}/cancel")
            assert r.status_code == 202

            async def ended() -> bool:
                return (await real_get(batch_id, with_jobs=False)).state.terminal
            await eventually(ended)
        return batch
    monkeypatch.setattr(daemon.store, "get_batch", get_batch)
    with anyio.fail_after(10):  # a missed change would hold /wait for its whole timeout
        r = await daemon.client.get(f"/v1/batches/{b['id']}/wait", params={"timeout": 60})
    assert raced
    assert r.json()["state"] == "canceled"

