"""The fake IonQ v0.4 server, exercised with plain httpx over real HTTP (it must be
trustworthy before a backend is tested against it)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qjobd.testing.fake_ionq import (
    HISTOGRAM_V1,
    PROBABILITIES_V1,
    FakeIonQ,
    FakeIonQProcess,
    count_bits,
    counts_to_bitstrings,
    http_date,
    planted_histogram,
)
from tests.conftest import BELL3

KEY = "secret-key"
FIVE_BITS = """// a comment first
OPENQASM 3;
qubit[3] q;
bit[2] c;
bit[3] d;
c[0] = measure q[0];
"""
#: every field SingleCircuitJob requires, plus the optional ones the fake sends
JOB_FIELDS = {
    "id", "status", "type", "backend", "dry_run", "submitter_id", "project_id",
    "parent_job_id", "session_id", "metadata", "name", "submitted_at", "started_at",
    "completed_at", "predicted_wait_time_ms", "predicted_execution_duration_ms",
    "execution_duration_ms", "failure", "output", "settings", "stats", "results",
    "child_job_ids", "shots", "cost_model",
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeIonQ]:
    with FakeIonQ(api_key=KEY, duration=0.3) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeIonQ) -> FakeIonQ:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeIonQ) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, headers={"Authorization": f"apiKey {KEY}"},
                      timeout=10.0) as c:
        yield c


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "ionq.qasm3.v1", "backend": "simulator", "shots": 1000,
                         "input": {"data": BELL3}}
    b.update(over)
    return b


def create(client: httpx.Client, **over: Any) -> str:
    r = client.post("/jobs", json=body(**over))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_for(pred: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def poll_until_terminal(client: httpx.Client, job_id: str) -> tuple[list[str], dict[str, Any]]:
    seen: list[str] = []
    last: dict[str, Any] = {}

    def step() -> bool:
        nonlocal last
        last = client.get(f"/jobs/{job_id}").json()
        if not seen or seen[-1] != last["status"]:
            seen.append(last["status"])
        return last["status"] in ("completed", "failed", "canceled")

    wait_for(step)
    return seen, last


def test_create_then_get(client, fake):
    r = client.post("/jobs", json=body(name="bell", metadata={"qjobd_key": "k1", "x": "y"}))
    assert r.status_code == 201
    assert r.headers["x-request-id"]
    created = r.json()
    assert set(created) == {"id", "status", "session_id"}
    assert created["status"] == "submitted" and created["session_id"] is None
    job = client.get(f"/jobs/{created['id']}").json()
    assert set(job) == JOB_FIELDS | {"noise"}
    assert job["type"] == "ionq.qasm3.v1" and job["backend"] == "simulator"
    assert job["name"] == "bell" and job["metadata"] == {"qjobd_key": "k1", "x": "y"}
    assert job["shots"] == 1000 and job["noise"] == {"model": "ideal"}
    assert job["failure"] is None and job["results"] is None
    assert job["completed_at"] is None
    assert job["submitted_at"].endswith("Z") and len(job["submitted_at"]) == 24
    assert fake.job_json(created["id"])["id"] == created["id"]
    # defaults: 100 shots, no name/metadata; qpu backends carry no noise
    jid = client.post("/jobs", json={"type": "ionq.qasm3.v1", "backend": "qpu.forte-1",
                                     "input": {"data": BELL3}}).json()["id"]
    job = client.get(f"/jobs/{jid}").json()
    assert set(job) == JOB_FIELDS
    assert job["shots"] == 100 and job["name"] is None and job["metadata"] is None


def test_unknown_job_and_route(client):
    r = client.get("/jobs/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["statusCode"] == 404
    assert "x-request-id" in r.headers
    assert client.get("/nothing").status_code == 404
    assert client.delete("/jobs").status_code == 404


def test_batch_get_ids_omits_unknown(client, fake):
    ids = [create(client) for _ in range(3)]
    r = client.get("/jobs", params=[("ids", ids[0]), ("ids", "nope"), ("ids", ids[2])])
    assert r.status_code == 200
    page = r.json()
    assert page["next"] is None
    assert [j["id"] for j in page["jobs"]] == [ids[2], ids[0]]  # newest first
    assert client.get("/jobs", params={"ids": "nope"}).json() == {"jobs": [], "next": None}
    assert fake.request_log[-2][5] == 3  # ids counted in the log


def test_listing_paginates_newest_first(client, fake):
    fake.configure(duration=30.0)
    ids = [create(client, backend="qpu.forte-1" if i % 3 == 0 else "simulator")
           for i in range(30)]
    first = client.get("/jobs").json()
    assert len(first["jobs"]) == 25 and first["next"] is not None
    second = client.get("/jobs", params={"next": first["next"]}).json()
    assert len(second["jobs"]) == 5 and second["next"] is None
    listed = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert listed == ids[::-1]
    # smaller pages follow the same order
    got, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["next"] = cursor
        page = client.get("/jobs", params=params).json()
        assert len(page["jobs"]) <= 7
        got += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert got == ids[::-1]
    # filters
    forte = client.get("/jobs", params={"target": "qpu.forte-1"}).json()["jobs"]
    assert [j["id"] for j in forte] == ids[::3][::-1]
    assert client.get("/jobs", params={"status": "completed"}).json()["jobs"] == []
    fake.finish_now(ids[3])
    done = client.get("/jobs", params={"status": "completed"}).json()
    assert [j["id"] for j in done["jobs"]] == [ids[3]] and done["next"] is None
    # ids queries are paginated too
    page = client.get("/jobs", params=[("ids", i) for i in ids]).json()
    assert len(page["jobs"]) == 25 and page["next"] == ids[4]
    rest = client.get("/jobs", params=[("ids", i) for i in ids] + [("next", page["next"])])
    assert [j["id"] for j in rest.json()["jobs"]] == ids[4::-1]
    # out-of-range or unknown parameters
    for params in ({"limit": 26}, {"limit": 0}, {"limit": "x"}, {"status": "calibrating"},
                   {"next": "not-a-job"}, {"sharpen": "true"}):
        r = client.get("/jobs", params=params)
        assert r.status_code == 400, params
        assert r.json()["validation"]["source"] == "query"


def test_status_progression(client, fake):
    fake.configure(duration=0.4, phase_split=(0.2, 0.2))
    t0 = time.time()
    jid = create(client)
    seen, job = poll_until_terminal(client, jid)
    assert seen[0] == "submitted" and seen[-1] == "completed"
    order = ["submitted", "ready", "started", "completed"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
    assert "started" in seen
    exact = fake.jobs[jid].completed_at
    assert t0 < exact <= time.time()
    assert job["completed_at"] is not None and job["started_at"] is not None
    assert job["execution_duration_ms"] >= 0 and job["predicted_wait_time_ms"] is None
    assert set(job["results"]) == {HISTOGRAM_V1, PROBABILITIES_V1}
    assert job["output"]["error_mitigation"] == {}  # no debiasing ran


def test_predicted_times_follow_the_prediction_knobs(client, fake):
    fake.configure(duration=10.0, phase_split=(0.2, 0.2))
    exact = client.get(f"/jobs/{create(client)}").json()
    # 4 s queued (2 submitted + 2 ready), 6 s running
    assert exact["predicted_wait_time_ms"] == pytest.approx(4000, abs=200)
    assert exact["predicted_execution_duration_ms"] == pytest.approx(6000, abs=10)
    fake.configure(prediction_bias=2.0)
    doubled = client.get(f"/jobs/{create(client)}").json()
    assert doubled["predicted_wait_time_ms"] == pytest.approx(8000, abs=400)
    assert doubled["predicted_execution_duration_ms"] == pytest.approx(12000, abs=20)
    fake.configure(prediction_bias=1.0, prediction_error=0.5)
    factors = {fake.jobs[create(client)].prediction_factor for _ in range(20)}
    assert len(factors) == 20 and min(factors) < 1 < max(factors)
    fake.configure(predictions=False)
    blank = client.get(f"/jobs/{create(client)}").json()
    assert blank["predicted_wait_time_ms"] is None
    assert blank["predicted_execution_duration_ms"] is None
    with pytest.raises(ValueError, match="prediction_bias"):
        fake.configure(prediction_bias=0)


def test_results_match_expected_counts(client, fake):
    jid = create(client, shots=777, input={"data": FIVE_BITS})
    assert count_bits(FIVE_BITS) == (5, 3)
    missing = client.get(f"/jobs/{jid}/results/probabilities")
    assert missing.status_code == 404
    fake.finish_now(jid)
    job = client.get(f"/jobs/{jid}").json()
    assert job["status"] == "completed"
    descriptor = job["results"][HISTOGRAM_V1]
    assert descriptor["format"] == HISTOGRAM_V1
    assert descriptor["media_type"] == "application/json"
    hist = client.get(f"/jobs/{jid}/artifacts/{descriptor['id']}").json()
    assert all(k.isdigit() and int(k) < 32 for k in hist)
    assert all(isinstance(v, int) for v in hist.values()) and sum(hist.values()) == 777
    planted = planted_histogram(jid, 777, 5)
    assert hist == {str(s): c for s, c in planted.items()} == fake.expected_histogram(jid)
    expected = fake.expected_counts(jid)
    assert expected == counts_to_bitstrings(planted, 5)
    assert {int(b, 2): c for b, c in expected.items()} == {int(k): c for k, c in hist.items()}
    assert all(len(b) == 5 for b in expected)
    probs_id = job["results"][PROBABILITIES_V1]["id"]
    probs = client.get(f"/jobs/{jid}/artifacts/{probs_id}").json()
    assert probs == {k: v / 777 for k, v in hist.items()}
    assert client.get(f"/jobs/{jid}/results/probabilities",
                      params={"sharpen": "true"}).json() == probs
    assert client.get(f"/jobs/{jid}/artifacts/histogram").status_code == 404


def test_planted_histograms_are_exact():
    for shots in (1, 2, 3, 100, 1_000_000):
        for bits in (1, 2, 7, 70):
            h = planted_histogram(f"job-{shots}-{bits}", shots, bits)
            assert sum(h.values()) == shots and all(c > 0 for c in h.values())
            assert all(0 <= s < 2**bits for s in h)
            assert h == planted_histogram(f"job-{shots}-{bits}", shots, bits)
    assert count_bits("OPENQASM 3; qubit[4] q; bit b; creg c[2];") == (3, 4)
    assert count_bits("OPENQASM 3; qubit[4] q; h q[0];") == (0, 4)


def test_failure_knob(client, fake):
    fake.configure(failure_rate=1.0, duration=0.05,
                   failure={"code": "CompilationError", "message": "no"})
    jid = create(client)
    _, job = poll_until_terminal(client, jid)
    assert job["status"] == "failed"
    assert job["failure"] == {"code": "CompilationError", "message": "no"}
    assert job["results"] is None and job["completed_at"] is not None
    assert client.get(f"/jobs/{jid}/results/probabilities").status_code == 404


def test_auth(fake):
    url = f"{fake.base_url}/jobs"
    for headers in ({}, {"Authorization": "apiKey wrong"}, {"Authorization": f"Bearer {KEY}"},
                    {"Authorization": KEY}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"] and r.headers["x-request-id"]
    assert httpx.get(url, headers={"Authorization": f"apiKey {KEY}"}).status_code == 200


@pytest.mark.parametrize("over", [
    {"type": "ionq.circuit.v1"},
    {"type": "ionq.multi-circuit.v1"},
    {"input": {"data": 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];'}},
    {"input": {"data": "qubit q;"}},
    {"input": {"data": BELL3, "format": "qasm"}},
    {"input": "OPENQASM 3;"},
    {"shots": 0},
    {"shots": 1_000_001},
    {"shots": "10"},
    {"shots": True},
    {"shots": 1.5},
    {"backend": 5},
    {"backend": "qpu.nowhere"},
    {"metadata": {"k": 1}},
    {"metadata": ["k"]},
    {"name": 3},
    {"noise": {"seed": 1}},
    {"noise": {"model": "ideal", "extra": 1}},
    {"surprise": 1},
])
def test_bad_bodies(client, fake, over):
    r = client.post("/jobs", json=body(**over))
    assert r.status_code == 400, over
    assert r.json()["statusCode"] == 400 and r.json()["validation"]["keys"]
    assert fake.jobs == {}


def test_bad_bodies_structural(client, fake):
    no_backend = body()
    del no_backend["backend"]
    assert client.post("/jobs", json=no_backend).status_code == 400
    assert client.post("/jobs", content=b"{not json",
                       headers={"content-type": "application/json"}).status_code == 400
    # not declared as JSON: parsed as nothing, then "backend is required"
    assert client.post("/jobs", content=b"{}", headers={"content-type": "text/plain"}
                       ).status_code == 400
    assert client.post("/jobs", json=[1]).status_code == 400
    assert client.post("/jobs", json=body(shots=1_000_000)).status_code == 201


def test_body_over_10mb_is_413(client, fake):
    big = body(input={"data": "OPENQASM 3;\n" + "// pad\n" * (10 * 1024 * 1024 // 7)})
    r = client.post("/jobs", json=big)
    assert r.status_code == 413
    assert fake.jobs == {}
    assert client.get("/jobs").status_code == 200  # the server is fine afterwards


def test_cancel_single_and_bulk(client, fake):
    fake.configure(duration=30.0)
    a, b, c, done = (create(client) for _ in range(4))
    fake.finish_now(done)
    r = client.put(f"/jobs/{a}/status/cancel")
    assert r.status_code == 200 and r.json() == {"id": a, "status": "canceled"}
    job = client.get(f"/jobs/{a}").json()
    assert job["status"] == "canceled" and job["completed_at"] is not None
    assert job["results"] is None
    again = client.put(f"/jobs/{a}/status/cancel")
    assert again.json() == {"id": a, "status": "canceled"}
    # a terminal job is left as it is; the spec's reply says "canceled" anyway
    assert client.put(f"/jobs/{done}/status/cancel").json()["status"] == "canceled"
    assert fake.status(done) == "completed"
    fake.configure(cancel_terminal_reply="status")
    assert client.put(f"/jobs/{done}/status/cancel").json()["status"] == "completed"
    fake.configure(cancel_terminal_reply="error")
    assert client.put(f"/jobs/{done}/status/cancel").status_code == 400
    assert client.put("/jobs/nope/status/cancel").status_code == 404
    r = client.put("/jobs/status/cancel", json={"ids": [b, c, "nope", b, done]})
    assert r.status_code == 200
    assert r.json() == {"ids": [b, c, done], "status": "canceled"}
    assert [fake.status(x) for x in (b, c, done)] == ["canceled", "canceled", "completed"]
    r = client.put("/jobs/status/cancel", json={"ids": [b, c]})
    assert r.json() == {"ids": [b, c], "status": "canceled"}
    assert client.put("/jobs/status/cancel", json={"id": [b]}).status_code == 400
    assert client.put("/jobs/status/cancel", json={"ids": "x"}).status_code == 400


def test_injected_429_with_retry_after(client, fake):
    fake.rate_limit(2, 3)
    for _ in range(2):
        r = client.get("/jobs")
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["statusCode"] == 429
    assert client.get("/jobs").status_code == 200
    date = http_date(2)
    fake.rate_limit(1, date)
    assert client.get("/jobs").headers["retry-after"] == date
    fake.rate_limit(1, None)
    r = client.get("/jobs")
    assert r.status_code == 429 and "retry-after" not in r.headers
    fake.rate_limit(1, 1, method="POST")
    assert client.get("/jobs").status_code == 200
    assert client.post("/jobs", json=body()).status_code == 429
    assert fake.jobs == {}


def test_token_bucket_rate_limit(client, fake):
    fake.configure(max_rps=5, burst=3)
    codes = [client.get("/jobs").status_code for _ in range(8)]
    assert codes[:3] == [200, 200, 200] and 429 in codes
    limited = next(r for r in fake.request_log if r[4] == 429)
    assert limited
    r = client.get("/jobs")
    if r.status_code == 429:
        assert int(r.headers["retry-after"]) >= 1
    fake.configure(max_rps=None)
    assert client.get("/jobs").status_code == 200


def test_server_errors(client, fake):
    fake.error_next(1, 502)
    r = client.get("/jobs")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    fake.error_next(1, 503, retry_after=1)
    r = client.get("/jobs")
    assert r.status_code == 503 and r.json()["statusCode"] == 503
    assert r.headers["retry-after"] == "1"
    fake.configure(error_rate=1.0)
    assert {client.get("/jobs").status_code for _ in range(20)} <= {502, 503}
    assert client.post("/jobs", json=body()).status_code in (502, 503)
    assert fake.jobs == {}
    # a 5xx after the job was created: a retry would duplicate it
    fake.configure(create_error_after_commit=True)
    r = client.post("/jobs", json=body(metadata={"qjobd_key": "dup"}))
    assert r.status_code in (502, 503) and len(fake.jobs) == 1
    fake.configure(error_rate=0.0)
    create(client, metadata={"qjobd_key": "dup"})
    assert fake.duplicate_keys() == {"dup": 2}


def test_unknown_status_then_completion(client, fake):
    fake.configure(duration=0.1, unknown_rate=1.0, unknown_seconds=0.25)
    jid = create(client)
    seen, _ = poll_until_terminal(client, jid)
    assert "calibrating" in seen and seen[-1] == "completed"
    assert seen.index("calibrating") < len(seen) - 1


def test_request_log_and_windows(client, fake):
    t0 = time.monotonic()
    jid = create(client)
    for _ in range(9):
        client.get(f"/jobs/{jid}")
    client.get("/jobs", headers={"Authorization": "apiKey wrong"})
    log = fake.request_log
    assert len(log) == 11
    mono, wall, method, path, status, n_ids = log[0]
    assert (method, path, status, n_ids) == ("POST", "/v0.4/jobs", 201, 0)
    assert mono >= t0 and abs(wall - time.time()) < 5
    assert log[-1][4] == 401
    assert len(fake.requests(route="GET /jobs/{id}")) == 9
    assert fake.requests_in_any_window(60) == 11
    assert fake.requests_in_any_window(60, method="GET", status=200) == 9
    assert fake.max_requests_per_second() == fake.requests_in_any_window(1.0) <= 11
    assert len(fake.requests_after(log[5][0])) == 6
    assert fake.requests_after(time.monotonic() + 1) == []
    stats = fake.stats()
    assert stats["by_route"]["GET /jobs/{id}"] == 9 and stats["by_status"]["401"] == 1


def test_creates_by_key(client, fake):
    create(client, metadata={"qjobd_key": "a"})
    create(client, metadata={"qjobd_key": "b"})
    create(client, metadata={"qjobd_key": "a"})
    create(client)
    assert fake.creates_by_key == {"a": 2, "b": 1}
    assert fake.duplicate_keys() == {"a": 2}


def test_stalled_and_dropped_creates(client, fake):
    fake.stall_create(0.5, n=1)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/jobs", json=body(metadata={"qjobd_key": "s"}), timeout=0.1)
    assert fake.creates_by_key == {"s": 1} and len(fake.stalled_creates) == 1
    # one stall only: the next create answers at once
    assert client.post("/jobs", json=body(), timeout=0.4).status_code == 201
    fake.drop_create_response(1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/jobs", json=body(metadata={"qjobd_key": "d"}))
    assert fake.creates_by_key["d"] == 1 and len(fake.dropped_creates) == 1
    assert fake.request_log[-1][4] == 0
    orphan = fake.dropped_creates[0]
    assert client.get(f"/jobs/{orphan}").json()["metadata"] == {"qjobd_key": "d"}
    assert client.post("/jobs", json=body()).status_code == 201


def test_control_api_in_thread_mode(client, fake):
    jid = create(client, metadata={"qjobd_key": "c"})
    stats = httpx.get(f"{fake.control_url}/stats").json()
    assert stats["jobs"] == 1 and stats["creates"] == 1 and stats["requests"] == 1
    jobs = httpx.get(f"{fake.control_url}/jobs").json()
    assert jobs[jid]["metadata"] == {"qjobd_key": "c"}
    assert jobs[jid]["expected_counts"] == fake.expected_counts(jid)
    r = httpx.post(f"{fake.control_url}/knobs",
                   json={"failure_rate": 0.5, "rate_limit": {"n": 1, "retry_after": 2}})
    assert r.status_code == 200 and r.json()["failure_rate"] == 0.5
    assert client.get("/jobs").status_code == 429
    assert httpx.post(f"{fake.control_url}/knobs", json={"bogus": 1}).status_code == 400
    assert httpx.post(f"{fake.control_url}/knobs", json={"failure_rate": 2}).status_code == 400
    httpx.post(f"{fake.control_url}/finish", json={"ids": [jid]})
    assert fake.status(jid) == "completed"
    log = httpx.get(f"{fake.control_url}/requests").json()
    assert log["fields"][0] == "mono" and len(log["requests"]) == 2


def test_process_mode():
    with FakeIonQProcess(api_key=KEY, knobs={"duration": 0.05}) as proc:
        assert proc.stats()["jobs"] == 0
        r = httpx.post(f"{proc.base_url}/jobs", json=body(metadata={"qjobd_key": "p"}),
                       headers=proc.auth_headers)
        assert r.status_code == 201
        jid = r.json()["id"]
        state = wait_for(lambda: (s := proc.jobs([jid])) and
                         s[jid]["status"] == "completed" and s)
        assert state[jid]["expected_counts"] == counts_to_bitstrings(
            planted_histogram(jid, 1000, 2), 2)
        assert state[jid]["completed_at"] <= time.time()
        stats = proc.stats()
        assert stats["creates"] == 1 and stats["by_route"] == {"POST /jobs": 1}
        proc.set_knobs(rate_limit={"n": 1, "retry_after": 1})
        assert httpx.get(f"{proc.base_url}/jobs", headers=proc.auth_headers).status_code == 429
        assert len(proc.requests()) == 2
    assert proc.proc is not None and proc.proc.returncode == 0


#: the answers' schemas from IonQ's OpenAPI document (distilled by data/distill_ionq_openapi.py)
SCHEMAS = json.loads((Path(__file__).parent / "data" / "ionq_openapi_schemas.json")
                     .read_text())["schemas"]
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def violations(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Where ``value`` breaks ``schema`` (the OpenAPI 3.0 keywords IonQ's document uses)."""
    if value is None:
        return [] if schema.get("nullable") or not schema else [f"{where}: null"]
    if "$ref" in schema:
        return violations(value, SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]], where)
    found = [v for part in schema.get("allOf", ()) for v in violations(value, part, where)]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} is not one of {schema['enum']}")
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [*found, f"{where}: {value!r} is not of type {kind}"]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        found += [f"{where}: {key!r} is required" for key in schema.get("required", ())
                  if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                found += violations(item, properties[key], f"{where}.{key}")
            elif extra is False:
                found.append(f"{where}: {key!r} is not allowed")
            elif isinstance(extra, dict):
                found += violations(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += violations(item, schema["items"], f"{where}[{i}]")
    return found


def conforms(value: Any, name: str) -> None:
    assert violations(value, SCHEMAS[name], name) == []


def test_the_schema_check_catches_what_it_should():
    good = {"id": "a", "status": "submitted", "session_id": None}
    assert violations(good, SCHEMAS["JobCreationResponse"], "r") == []
    assert violations({**good, "status": "queued"}, SCHEMAS["JobCreationResponse"], "r")
    assert violations({"id": "a", "status": "submitted"}, SCHEMAS["JobCreationResponse"], "r")
    assert violations({**good, "extra": 1}, SCHEMAS["JobCreationResponse"], "r")
    assert violations({**good, "id": 7}, SCHEMAS["JobCreationResponse"], "r")


def test_answers_match_ionqs_openapi_document(client, fake):
    r = client.post("/jobs", json=body(metadata={"a": "b"}, noise={"model": "ideal", "seed": 1}))
    conforms(r.json(), "JobCreationResponse")
    jid = r.json()["id"]
    conforms(client.get(f"/jobs/{jid}").json(), "SingleCircuitJob")
    fake.finish_now(jid)
    job = client.get(f"/jobs/{jid}").json()
    conforms(job, "SingleCircuitJob")
    conforms(job["stats"], "CircuitJobStats")
    for descriptor in job["results"].values():
        conforms(descriptor, "ArtifactDescriptor")
    conforms(client.get("/jobs").json(), "GetJobsResponse")
    conforms(client.get("/jobs", params=[("ids", jid)]).json(), "GetJobsResponse")
    conforms(client.put(f"/jobs/{jid}/status/cancel").json(), "JobCanceledResponse")
    conforms(client.put("/jobs/status/cancel", json={"ids": [jid]}).json(),
             "JobsCanceledResponse")
    conforms(client.get("/jobs/nope").json(), "Error")
    conforms(client.post("/jobs", json=body(shots=0)).json(), "BadRequestError")
    fake.configure(failure_rate=1.0)
    failed = create(client)
    fake.finish_now(failed, {"code": "InternalError", "message": "x"})
    conforms(client.get(f"/jobs/{failed}").json()["failure"], "Failure")


def test_optional_wire_variants(client, fake):
    fake.configure(omit_shots_for_ideal=True, ids_respect_limit=False, max_limit=100,
                   result_formats=[PROBABILITIES_V1])
    ids = [create(client) for _ in range(30)]
    assert "shots" not in client.get(f"/jobs/{ids[0]}").json()
    page = client.get("/jobs", params=[("ids", i) for i in ids]).json()
    assert len(page["jobs"]) == 30 and page["next"] is None
    assert len(client.get("/jobs", params={"limit": 100}).json()["jobs"]) == 30
    fake.finish_now(ids[0])
    assert set(client.get(f"/jobs/{ids[0]}").json()["results"]) == {PROBABILITIES_V1}
    qpu = create(client, backend="qpu.forte-1")
    assert client.get(f"/jobs/{qpu}").json()["shots"] == 1000
