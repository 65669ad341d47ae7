"""GET /metrics: Prometheus text exposition format 0.0.4, checked by a strict parser."""

from __future__ import annotations

import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from qjobd.backends.ionq import IonQBackend
from qjobd.daemon.api import metrics
from qjobd.testing.fake_ionq import FakeIonQ
from qjobd.testing.harness import backend_daemon
from tests.conftest import BELL2, BELL3, TEST_STORE, Daemon, eventually

#: for tests of what only an SQLite store has (its file's size, rows written beside it)
sqlite_only = pytest.mark.skipif(TEST_STORE != "sqlite",
                                 reason="about the SQLite file (QJOBD_TEST_STORE=postgresql)")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = {"queued", "submitting", "submitted", "running", "completed", "failed", "canceled",
          "timed_out"}
PER_BACKEND = ("qjobd_backend_info", "qjobd_backend_requests_total",
               "qjobd_backend_request_errors_total", "qjobd_backend_paused_seconds",
               "qjobd_backend_requests_per_second", "qjobd_backend_jobs_in_flight")
KEY = "sk-metrics-5e1d0c9b77aa42"

# -- a strict parser of the text format -----------------------------------------------

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
SAMPLE = re.compile(r"(?P<name>[^{\s]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)"
                    r"(?: (?P<ts>-?[0-9]+))?\Z")
LABEL = re.compile(r'(?P<k>[^=,"]+)="(?P<v>(?:[^"\\\n]|\\[\\"n])*)"')
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
HELP_TEXT = re.compile(r"(?:[^\\]|\\[\\n])*\Z")
TERMINAL = ("completed", "failed", "canceled", "timed_out")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


@dataclass
class Fam:
    type: str | None = None
    help: str | None = None
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        return self.samples[tuple(sorted(labels.items()))]

    def by(self, label: str) -> dict[str, float]:
        return {dict(k)[label]: v for k, v in self.samples.items()}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), value)


def _labels(text: str, line: str) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        assert m, f"bad label syntax at {text[pos:]!r} in {line!r}"
        key = m["k"]
        assert LABEL_NAME.match(key) and not key.startswith("__"), f"label name {key!r}"
        assert key not in out, f"label {key!r} twice in {line!r}"
        out[key] = _unescape(m["v"])
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected ',' in {line!r}"
            pos += 1
            assert pos < len(text), f"trailing comma in {line!r}"
    return tuple(sorted(out.items()))


def _float(text: str, line: str) -> float:
    assert text in ("+Inf", "-Inf", "NaN") or FLOAT.match(text), f"value {text!r} in {line!r}"
    return float(text)


def parse(text: str) -> dict[str, Fam]:
    """Families by name; asserts on anything Prometheus' 0.0.4 parser would reject, and on
    what it tolerates but we promise (HELP and TYPE first, one group per family)."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    fams: dict[str, Fam] = {}
    done: set[str] = set()
    current: str | None = None

    def enter(name: str) -> Fam:
        nonlocal current
        if name != current:
            assert name not in done, f"{name}: its lines are not grouped together"
            if current is not None:
                done.add(current)
            current = name
        return fams.setdefault(name, Fam())

    for line in text.splitlines():
        assert line.strip() and line == line.strip(), f"blank or padded line {line!r}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[0] == "#" and parts[1] in ("HELP", "TYPE"), f"stray comment {line!r}"
            assert len(parts) >= 3 and NAME.match(parts[2]), f"bad name in {line!r}"
            fam = enter(parts[2])
            assert not fam.samples, f"{parts[2]}: {parts[1]} after its samples"
            if parts[1] == "HELP":
                assert fam.help is None, f"{parts[2]}: two HELP lines"
                assert len(parts) == 4 and parts[3], f"empty HELP: {line!r}"
                assert HELP_TEXT.match(parts[3]), f"bad escape in {line!r}"
                fam.help = _unescape(parts[3])
            else:
                assert fam.type is None, f"{parts[2]}: two TYPE lines"
                assert len(parts) == 4 and parts[3] in TYPES, f"bad TYPE: {line!r}"
                fam.type = parts[3]
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name = m["name"]
        assert NAME.match(name), f"bad metric name in {line!r}"
        # a histogram's series carry suffixes but belong to its family (text format 0.0.4)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and base in fams and fams[base].type == "histogram":
            fam = enter(base)
            labels = (*_labels(m["labels"] or "", line), ("__series__", m["name"]))
            assert labels not in fam.samples, f"duplicate series {line!r}"
            fam.samples[labels] = _float(m["value"], line)
            continue
        fam = enter(name)
        assert fam.help is not None and fam.type is not None, f"{name}: no HELP/TYPE first"
        labels = _labels(m["labels"] or "", line)
        assert labels not in fam.samples, f"duplicate series {line!r}"
        fam.samples[labels] = _float(m["value"], line)
        if fam.type == "counter":
            assert name.endswith("_total") and fam.samples[labels] >= 0, line
    return fams


def test_the_parser_rejects_what_prometheus_rejects() -> None:
    good = '# HELP a_b x\n# TYPE a_b gauge\na_b{k="v\\"\\\\\\n"} 1.5e3\n'
    assert parse(good)["a_b"].value(k='v"\\\n') == 1500.0
    for bad in ("a 1\n",                                          # no HELP/TYPE
                "# HELP a x\n# TYPE a gauge\na 1",                # no final newline
                "# HELP a x\n# TYPE a gauge\na one\n",            # not a float
                "# HELP a x\n# TYPE a gauge\na{k=\"v} 1\n",       # unterminated value
                "# HELP a x\n# TYPE a gauge\na{k=\"\\t\"} 1\n",   # bad escape
                "# HELP a x\n# TYPE a gauge\na{0k=\"v\"} 1\n",    # bad label name
                "# HELP a x\n# TYPE a gauge\na{k=\"1\",k=\"2\"} 1\n",
                "# HELP a x\n# TYPE a gauge\na 1\na 2\n",         # duplicate series
                "# HELP a x\n# TYPE a gauge\na 1\n# HELP b y\n# TYPE b gauge\nb 1\na 2\n",
                "# HELP 1a x\n# TYPE 1a gauge\n1a 1\n",
                "# HELP a x\\q\n# TYPE a gauge\na 1\n",      # bad HELP escape
                "# HELP a x\n# TYPE a kind\na 1\n"):
        with pytest.raises(AssertionError):
            parse(bad)


def test_labels_and_help_are_escaped() -> None:
    weird = 'a "quoted" back\\slash\nnewline'
    text = metrics.render([
        metrics.Family("qjobd_x", "gauge", "help with \\ and\nnewline").add(2, backend=weird),
        metrics.Family("qjobd_y_total", "counter", "float values").add(0.25).add(1e-07, a="b"),
        metrics.Family("qjobd_empty", "gauge", "no samples: left out"),
    ])
    fams = parse(text)
    assert fams["qjobd_x"].value(backend=weird) == 2
    assert fams["qjobd_x"].help == "help with \\ and\nnewline"
    assert fams["qjobd_y_total"].value(a="b") == 1e-07
    assert "qjobd_empty" not in fams
    assert [metrics.format_value(v) for v in (3, 0.5, math.inf, -math.inf, math.nan, True)] \
        == ["3", "0.5", "+Inf", "-Inf", "NaN", "1"]


# -- the endpoint ---------------------------------------------------------------------

async def scrape(client: httpx.AsyncClient) -> dict[str, Fam]:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE
    fams = parse(r.text)
    assert all(name.startswith("qjobd_") for name in fams)
    return fams


@sqlite_only
async def test_metrics_answer_in_the_text_format_with_every_family(daemon: Daemon) -> None:
    fams = await scrape(daemon.client)
    for name, kind in {"qjobd_build_info": "gauge", "qjobd_uptime_seconds": "gauge",
                       "qjobd_jobs": "gauge", "qjobd_batches": "gauge",
                       **{n: "counter" if n.endswith("_total") else "gauge"
                          for n in PER_BACKEND},
                       "qjobd_store_database_bytes": "gauge",
                       "qjobd_store_commits_total": "counter",
                       "qjobd_store_writes_total": "counter",
                       "qjobd_store_last_commit_duration_seconds": "gauge"}.items():
        assert fams[name].type == kind, name
    (labels, one), = fams["qjobd_build_info"].samples.items()
    assert one == 1 and dict(labels)["version"]
    assert fams["qjobd_uptime_seconds"].value() >= 0
    assert fams["qjobd_store_database_bytes"].value() > 0
    # every state is there, zeros included, so series never vanish
    assert set(fams["qjobd_batches"].by("state")) == STATES
    assert {dict(k)["state"] for k in fams["qjobd_jobs"].samples} == STATES
    assert sum(fams["qjobd_jobs"].samples.values()) == 0
    assert fams["qjobd_backend_budget_waiters"].type == "gauge"
    waiters = fams["qjobd_backend_budget_waiters"].by("backend")
    assert set(waiters) == set(daemon.scheduler.runners)
    head = await daemon.client.head("/metrics")
    assert head.status_code == 200


async def test_counters_follow_a_batch_to_completion(daemon: Daemon) -> None:
    before = await scrape(daemon.client)
    r = await daemon.client.post("/v1/batches", json={"backend": "fake",
                                                      "circuits": {"a": BELL2, "b": BELL3}})
    assert r.status_code == 201
    n = len(r.json()["jobs"])
    fams = await scrape(daemon.client)
    assert sum(v for k, v in fams["qjobd_jobs"].samples.items()
               if dict(k)["backend"] == "fake") == n

    async def completed() -> bool:
        nonlocal fams
        fams = await scrape(daemon.client)
        # the engine lets a job go just after the store marks it completed: both, then
        return fams["qjobd_jobs"].value(backend="fake", state="completed") == n \
            and fams["qjobd_backend_jobs_in_flight"].value(backend="fake") == 0

    await eventually(completed, 20)
    assert fams["qjobd_batches"].value(state="completed") == 1
    assert fams["qjobd_backend_requests_total"].value(backend="fake") \
        > before["qjobd_backend_requests_total"].value(backend="fake")
    assert fams["qjobd_backend_jobs_in_flight"].value(backend="fake") == 0
    assert fams["qjobd_store_commits_total"].value() \
        > before["qjobd_store_commits_total"].value()
    assert fams["qjobd_store_last_commit_duration_seconds"].value() > 0


@pytest.mark.local
async def test_job_counts_change_when_a_local_batch_completes(daemon: Daemon) -> None:
    before = await scrape(daemon.client)
    # every configured backend has its counters, idle ones included
    assert set(daemon.scheduler.runners) == {"fake", "held", "local"}
    for name in PER_BACKEND:
        assert set(before[name].by("backend")) == {"fake", "held", "local"}, name
    assert before["qjobd_backend_info"].value(backend="local", type="local") == 1
    assert before["qjobd_jobs"].value(backend="local", state="completed") == 0

    r = await daemon.client.post("/v1/batches", json={
        "backend": "local", "circuits": {"bell": BELL3, "bell2": BELL2}, "shots": 100})
    assert r.status_code == 201
    n = len(r.json()["jobs"])
    latest: dict[str, Fam] = {}

    async def completed() -> bool:
        latest.update(await scrape(daemon.client))
        return latest["qjobd_jobs"].value(backend="local", state="completed") == n

    await eventually(completed, 30)
    assert latest["qjobd_batches"].value(state="completed") \
        == before["qjobd_batches"].value(state="completed") + 1
    assert latest["qjobd_backend_requests_total"].value(backend="local") \
        > before["qjobd_backend_requests_total"].value(backend="local")
    assert sum(v for k, v in latest["qjobd_jobs"].samples.items()
               if dict(k)["backend"] == "local") == n


@sqlite_only
async def test_a_scrape_counts_100000_jobs_by_state(daemon: Daemon) -> None:
    conn = sqlite3.connect(daemon.db)
    try:
        now = time.time()
        with conn:
            conn.execute("INSERT INTO batches (id, owner_uid, backend, shots, tags, options, "
                         "state, created_at, updated_at) VALUES ('big', 0, 'fake', 1, '{}', "
                         "'{}', 'completed', ?, ?)", (now, now))
            conn.executemany(
                "INSERT INTO jobs (id, batch_id, position, backend, submission_key, state, "
                "created_at, updated_at) VALUES (?, 'big', ?, 'fake', ?, ?, ?, ?)",
                ((uuid.uuid4().hex, i, uuid.uuid4().hex,
                  "completed" if i % 4 else "failed", now, now) for i in range(100_000)))
    finally:
        conn.close()
    fams = await scrape(daemon.client)
    assert fams["qjobd_jobs"].value(backend="fake", state="completed") == 75_000
    assert fams["qjobd_jobs"].value(backend="fake", state="failed") == 25_000


# -- secrets --------------------------------------------------------------------------

@pytest.fixture
def fake_ionq() -> Iterator[FakeIonQ]:
    with FakeIonQ(api_key=KEY, duration=(0.05, 0.2)) as f:
        yield f


async def test_no_api_key_appears_in_the_metrics(fake_ionq, tmp_path, monkeypatch) -> None:
    fake_ionq.configure(error_rate=0.3)  # errors too: their texts must stay out
    async with backend_daemon(IonQBackend, "ionq", fake_ionq.base_url, KEY, tmp_path,
                              monkeypatch, shots=100, wait_limit=30, wait_poll=1.0,
                              polling={"initial_interval": 0.05, "max_interval": 0.2,
                                       "jitter": 0.1}, rps=50) as h:
        client = h.client
        await h.submit({"a": BELL3, "b": BELL3})
        latest: dict[str, Fam] = {}

        async def finished() -> bool:
            r = await client.get("/metrics")
            assert KEY not in r.text
            latest.update(parse(r.text))
            jobs = latest["qjobd_jobs"]
            return sum(jobs.value(backend="ionq", state=s) for s in TERMINAL) == 2

        await eventually(finished, 30)
        assert latest["qjobd_backend_requests_total"].value(backend="ionq") > 0
        assert latest["qjobd_backend_requests_per_second"].value(backend="ionq") == 50
        assert KEY not in (await client.get("/metrics")).text
