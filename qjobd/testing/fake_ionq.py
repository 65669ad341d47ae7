"""A faithful fake of IonQ's Cloud API v0.4 jobs endpoints, over real HTTP on 127.0.0.1.

Source of truth: the OpenAPI document shipped in ``ionq-core`` 0.2.0 and
``../shared/wire/ionq.md``. The fake speaks the wire format only (no IonQ client code), so a
backend under test exercises its real HTTP path: auth, validation, pagination, rate limits,
server errors, lost create responses.

Two ways to run it:

* in-process, in a background thread with its own event loop::

      with FakeIonQ(api_key="k", duration=(0.2, 0.4)) as fake:
          httpx.get(f"{fake.base_url}/jobs", headers={"Authorization": "apiKey k"})
          fake.jobs, fake.request_log, fake.expected_counts(job_id) ...

* as a separate process (its CPU is not counted in the client's)::

      python -m qjobd.testing.fake_ionq --port 0 --port-file /tmp/p --api-key k --duration 2,4

  or ``FakeIonQProcess(api_key="k", knobs={...}).start()``; its state is read through the
  control API under ``/_fake/`` (no auth): ``GET /_fake/stats``, ``GET /_fake/jobs``,
  ``GET /_fake/requests``, ``GET /_fake/polls`` (knob ``log_polled_ids``),
  ``GET|POST /_fake/knobs``, ``POST /_fake/finish``,
  ``POST /_fake/plant`` (``plant()`` over HTTP), ``POST /_fake/reset``.

Jobs move ``submitted -> ready -> started -> completed`` (or ``failed``) on the wall clock;
the status is computed from the job's planned timestamps at request time, so idle jobs cost
nothing. ``FakeJob.completed_at`` is the exact ``time.time()`` at which the job became
terminal. Results are planted deterministically from the job id (``planted_histogram``).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from qjobd.testing.fake_server import FakeServer, TokenBucket

__all__ = [
    "HISTOGRAM_V1",
    "JOB_STATUSES",
    "PROBABILITIES_V1",
    "FakeIonQ",
    "FakeIonQProcess",
    "FakeJob",
    "Knobs",
    "count_bits",
    "counts_to_bitstrings",
    "http_date",
    "planted_histogram",
]

API_PREFIX = "/v0.4"
CONTROL_PREFIX = "/_fake"
JOB_STATUSES = ("submitted", "ready", "started", "canceled", "failed", "completed")
TERMINAL = frozenset({"completed", "failed", "canceled"})
HISTOGRAM_V1 = "ionq.result.histogram.json.v1"
PROBABILITIES_V1 = "ionq.result.probabilities.json.v1"
SUPPORTED_FORMATS = (HISTOGRAM_V1, PROBABILITIES_V1)
QASM3_TYPE = "ionq.qasm3.v1"
DOCUMENTED_BACKENDS = ("simulator", "qpu.forte-1", "qpu.forte-enterprise-1")
CREATE_FIELDS = frozenset({"name", "metadata", "shots", "backend", "session_id", "settings",
                           "dry_run", "noise", "type", "input"})
LIST_PARAMS = frozenset({"ids", "ids[]", "parent_job_id", "status", "target", "session_id",
                         "submitter_id", "limit", "next"})
_ARTIFACT_NS = uuid.UUID("6f0e4c1a-9a53-4c55-8f7c-2d1b1e0f3a77")
_REASONS = {400: "Bad Request", 401: "Unauthorized Error", 404: "Not Found Error",
            413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_BAD_GATEWAY_HTML = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                     b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n")
#: request-log tuple fields, in order
LOG_FIELDS = ("mono", "wall", "method", "path", "status", "n_ids")

DurationSpec = float | tuple[float, float] | Callable[[dict[str, Any]], float]


# --------------------------------------------------------------------------- pure helpers

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_QASM3_HEADER = re.compile(r"\s*OPENQASM\s+3(?:\.\d+)?\s*;")
_BIT_DECL = re.compile(r"\bbit\s*(?:\[\s*(\d+)\s*\])?\s+[A-Za-z_]\w*")
_CREG_DECL = re.compile(r"\bcreg\s+[A-Za-z_]\w*\s*(?:\[\s*(\d+)\s*\])?")
_QUBIT_DECL = re.compile(r"\bqubit\s*(?:\[\s*(\d+)\s*\])?\s+[A-Za-z_%$]\w*")
_QREG_DECL = re.compile(r"\bqreg\s+[A-Za-z_]\w*\s*(?:\[\s*(\d+)\s*\])?")


def _strip_comments(source: str) -> str:
    return _COMMENTS.sub(" ", source)


def is_qasm3(source: str) -> bool:
    """True if the program (after leading whitespace and comments) opens ``OPENQASM 3``."""
    return _QASM3_HEADER.match(_strip_comments(source)) is not None


def _sum_decls(pattern: re.Pattern[str], text: str) -> int:
    return sum(int(m.group(1)) if m.group(1) else 1 for m in pattern.finditer(text))


def count_bits(source: str) -> tuple[int, int]:
    """(measured bits, qubits) of an OpenQASM 3 program.

    Bits: the sum of every ``bit[N] name`` / ``bit name`` / ``creg name[N]`` declaration.
    Qubits: the same over ``qubit``/``qreg`` declarations. The fake's states use the bits,
    falling back to the qubit count (then 1) when the program declares no classical bits.
    """
    text = _strip_comments(source)
    return _sum_decls(_BIT_DECL, text) + _sum_decls(_CREG_DECL, text), (
        _sum_decls(_QUBIT_DECL, text) + _sum_decls(_QREG_DECL, text))


def planted_histogram(job_id: str, shots: int, num_bits: int) -> dict[int, int]:
    """The counts the fake plants for a job: 1 to 4 distinct states below ``2**num_bits``,
    derived from SHA-256 of the job id, with integer counts summing exactly to ``shots``
    (states whose share rounds to 0 are left out, as a histogram lists no zero counts)."""
    num_bits = max(1, num_bits)
    rng = random.Random(int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big"))
    k = min(1 << min(num_bits, 16), max(1, shots), 1 + rng.randrange(4))
    states: set[int] = set()
    while len(states) < k:
        states.add(rng.getrandbits(num_bits))
    ordered = sorted(states)
    weights = [0.05 + rng.random() for _ in ordered]
    total = sum(weights)
    raw = [w / total * shots for w in weights]
    counts = [int(x) for x in raw]
    for i in sorted(range(k), key=lambda i: counts[i] - raw[i])[: shots - sum(counts)]:
        counts[i] += 1
    return {s: c for s, c in zip(ordered, counts, strict=True) if c > 0}


def counts_to_bitstrings(hist: Mapping[int, int], num_bits: int) -> dict[str, int]:
    """Decimal-state counts -> Qiskit-order bitstrings (classical bit 0 rightmost)."""
    return {format(state, f"0{num_bits}b"): count for state, count in hist.items()}


def iso(ts: float) -> str:
    """``2026-06-11T20:47:05.440Z`` (UTC, milliseconds), IonQ's timestamp format."""
    whole = int(ts)
    ms = int((ts - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def http_date(seconds_from_now: float = 0.0) -> str:
    """An HTTP date (for a ``Retry-After`` given as a date)."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _draw(spec: Any, rng: random.Random, ctx: dict[str, Any]) -> float:
    if callable(spec):
        return max(0.0, float(spec(ctx)))
    if isinstance(spec, list | tuple):
        lo, hi = spec
        return rng.uniform(float(lo), float(hi))
    return max(0.0, float(spec))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- state

@dataclass
class Knobs:
    """Everything tunable at construction (``FakeIonQ(**knobs)``) or at runtime
    (``fake.configure(**knobs)``, ``POST /_fake/knobs``). Rates are fractions 0..1.
    Per-job draws (duration, failure, unknown status) happen at creation."""

    api_key: str = "test-key"
    #: seconds from submission to the terminal state: fixed, (lo, hi) uniform, or a
    #: callable(ctx) -> seconds with ctx = {"seq","shots","backend","name","metadata"}
    duration: Any = (2.0, 4.0)
    #: fractions of the duration spent `submitted` and `ready` (the rest is `started`)
    phase_split: tuple[float, float] = (0.1, 0.2)
    #: report `predicted_wait_time_ms` / `predicted_execution_duration_ms` (else null)
    predictions: bool = True
    #: how wrong they are: each job's predictions are its true times times
    #: prediction_bias * e**N(0, prediction_error), one draw per job (from a random stream
    #: of its own: the durations drawn do not change with it)
    prediction_bias: float = 1.0
    prediction_error: float = 0.0
    failure_rate: float = 0.0
    failure: dict[str, str] = field(default_factory=lambda: {
        "code": "SimulationError", "message": "Simulated failure injected by the fake"})
    #: fraction of API requests answered with one of error_statuses (before auth)
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (503, 502)
    #: an injected 5xx on POST /jobs is answered after the job was created
    create_error_after_commit: bool = False
    #: server-side token bucket (requests/s over all API requests; burst defaults to max_rps)
    max_rps: float | None = None
    burst: float | None = None
    #: fraction of jobs that report `unknown_status` for `unknown_seconds` between
    #: `ready` and `started` (their run is that much longer)
    unknown_rate: float = 0.0
    unknown_status: str = "calibrating"
    unknown_seconds: float = 0.5
    #: delay the 201 of creates by this many seconds (job already exists); count=None: all
    stall_create_seconds: float = 0.0
    stall_create_count: int | None = None
    #: close the connection without an answer after creating: the next N creates (-1: all)
    drop_create_responses: int = 0
    #: added latency per API request: seconds or (lo, hi)
    latency: Any = 0.0
    max_body_bytes: int = 10 * 1024 * 1024
    default_limit: int = 25
    max_limit: int = 25
    #: GET /jobs?ids=... is paginated like a listing (limit, next)
    ids_respect_limit: bool = True
    #: accepted `backend` values (None: any string)
    backends: tuple[str, ...] | None = DOCUMENTED_BACKENDS
    #: formats listed in a completed job's `results`
    result_formats: tuple[str, ...] = SUPPORTED_FORMATS
    #: answer to cancelling a terminal job: "canceled" (200, spec: the response status enum
    #: is only "canceled"; the job is unchanged), "status" (200 with its real status),
    #: "error" (400)
    cancel_terminal_reply: str = "canceled"
    #: drop `shots` from job objects on the ideal simulator ("shots are not included with
    #: ideal simulator backend")
    omit_shots_for_ideal: bool = False
    #: metadata key counted in creates_by_key
    key_field: str = "qjobd_key"
    #: record (monotonic time, job id) for every id asked for in a batch status query
    #: (``poll_log``, ``GET /_fake/polls?since=``): which jobs were polled when
    log_polled_ids: bool = False

    _TUPLES = ("phase_split", "error_statuses", "backends", "result_formats")
    _FLOATS = ("failure_rate", "error_rate", "unknown_rate", "unknown_seconds",
               "stall_create_seconds", "max_rps", "burst", "prediction_error",
               "prediction_bias")
    _INTS = ("max_body_bytes", "default_limit", "max_limit", "drop_create_responses",
             "stall_create_count")
    _BOOLS = ("create_error_after_commit", "ids_respect_limit", "omit_shots_for_ideal",
              "predictions", "log_polled_ids")

    def update(self, values: Mapping[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        staged = {}
        for name, value in values.items():
            if name not in names:
                raise ValueError(f"unknown knob {name!r}")
            if name in self._TUPLES and value is not None:
                value = tuple(value)
            if name in ("duration", "latency") and isinstance(value, list):
                value = tuple(value)
            if name in self._FLOATS and value is not None:
                value = float(value)
            if name in self._INTS and value is not None:
                value = int(value)
            if name in self._BOOLS and not isinstance(value, bool):
                raise ValueError(f"{name} must be a boolean")
            if name in ("api_key", "unknown_status", "key_field", "cancel_terminal_reply") \
                    and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            staged[name] = value
        candidate = {**{f.name: getattr(self, f.name) for f in fields(self)}, **staged}
        _check_knobs(candidate)
        for name, value in staged.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = repr(value) if callable(value) else value
        return out


def _check_knobs(k: Mapping[str, Any]) -> None:
    for name in ("failure_rate", "error_rate", "unknown_rate"):
        if not 0.0 <= float(k[name]) <= 1.0:
            raise ValueError(f"{name} must be within 0..1")
    if not 0.0 <= float(k["prediction_error"]) <= 5.0:
        raise ValueError("prediction_error must be within 0..5")
    if not float(k["prediction_bias"]) > 0:
        raise ValueError("prediction_bias must be positive")
    for name in ("duration", "latency"):
        spec = k[name]
        if isinstance(spec, tuple) and (len(spec) != 2 or float(spec[0]) > float(spec[1])):
            raise ValueError(f"{name} must be seconds or (lo, hi)")
    a, b = k["phase_split"]
    if not (0 <= a and 0 <= b and a + b <= 1):
        raise ValueError("phase_split must be two fractions summing to at most 1")
    failure = k["failure"]
    if not (isinstance(failure, dict) and isinstance(failure.get("code"), str)
            and isinstance(failure.get("message"), str)):
        raise ValueError('failure must be {"code": str, "message": str}')
    if any(int(s) < 500 or int(s) > 599 for s in k["error_statuses"]) or not k["error_statuses"]:
        raise ValueError("error_statuses must be 5xx codes")
    if k["max_rps"] is not None and float(k["max_rps"]) <= 0:
        raise ValueError("max_rps must be positive or None")
    if not set(k["result_formats"]) <= set(SUPPORTED_FORMATS):
        raise ValueError(f"result_formats must be among {SUPPORTED_FORMATS}")
    if k["cancel_terminal_reply"] not in ("canceled", "status", "error"):
        raise ValueError('cancel_terminal_reply must be "canceled", "status" or "error"')
    if not 1 <= int(k["default_limit"]) <= int(k["max_limit"]):
        raise ValueError("need 1 <= default_limit <= max_limit")
    if not isinstance(k["api_key"], str) or not k["api_key"]:
        raise ValueError("api_key must be a non-empty string")


@dataclass(eq=False, slots=True)
class FakeJob:
    """One job with its whole planned timeline (wall-clock seconds, ``time.time()``)."""

    id: str
    seq: int
    type: str
    backend: str
    name: str | None
    metadata: dict[str, str] | None
    shots: int
    noise: dict[str, Any] | None
    session_id: str | None
    settings: dict[str, Any]
    dry_run: bool
    num_bits: int
    num_qubits: int
    submitted_at: float
    ready_at: float
    unknown_at: float | None
    unknown_status: str | None
    started_at: float
    #: when the job reaches `completed`/`failed` (exact; moved earlier by finish_now)
    completed_at: float
    #: set: the job ends `failed` with this failure
    failure: dict[str, str] | None
    canceled_at: float | None = None
    histogram: dict[int, int] | None = None
    #: the job's predicted times are its true times times this
    prediction_factor: float = 1.0

    def status_at(self, now: float) -> str:
        if self.canceled_at is not None:
            return "canceled"
        if now >= self.completed_at:
            return "failed" if self.failure is not None else "completed"
        if now >= self.started_at:
            return "started"
        if self.unknown_at is not None and now >= self.unknown_at:
            return self.unknown_status or "ready"
        if now >= self.ready_at:
            return "ready"
        return "submitted"

    @property
    def terminal_at(self) -> float:
        """When the job became (or becomes) terminal, cancellation included."""
        return self.canceled_at if self.canceled_at is not None else self.completed_at

    def counts(self) -> dict[int, int]:
        if self.histogram is None:
            self.histogram = planted_histogram(self.id, self.shots, self.num_bits)
        return self.histogram

    def artifact_id(self, fmt: str) -> str:
        return str(uuid.uuid5(_ARTIFACT_NS, f"{self.id}/{fmt}"))


class _Injection:
    __slots__ = ("method", "n", "retry_after", "status")

    def __init__(self, n: int, status: int, retry_after: Any, method: str | None) -> None:
        self.n, self.status, self.retry_after, self.method = n, status, retry_after, method


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, keys: Sequence[str] | None = None,
                 source: str = "body") -> None:
        super().__init__(message)
        self.status, self.message, self.keys, self.source = status, message, keys, source


def _route_of(method: str, path: str) -> str:
    """Route template of an API path, for the counters."""
    p = path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path
    parts = [x for x in p.split("/") if x]
    if parts[:1] != ["jobs"]:
        return f"{method} {p}"
    if len(parts) == 1:
        return f"{method} /jobs"
    if parts[1:] == ["status", "cancel"]:
        return f"{method} /jobs/status/cancel"
    tail = parts[2:]
    if not tail:
        return f"{method} /jobs/{{id}}"
    if tail[:1] == ["artifacts"]:
        return f"{method} /jobs/{{id}}/artifacts/{{artifactId}}"
    return f"{method} /jobs/{{id}}/" + "/".join(tail)


# --------------------------------------------------------------------------- the fake

class FakeIonQ(FakeServer):
    """IonQ v0.4 jobs API on 127.0.0.1. All public methods are thread-safe."""

    label = "fake IonQ"
    keep_alive = 30
    graceful_shutdown = 2

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
                 submitter_id: str = "fake-submitter", project_id: str | None = None,
                 **knobs: Any) -> None:
        super().__init__(host=host, port=port)
        self.submitter_id = submitter_id
        self.project_id = project_id if project_id is not None else str(uuid.UUID(int=seed))
        self.knobs = Knobs()
        self.knobs.update(knobs)
        self._initial_knobs = dict(knobs)
        self._seed = seed
        self._reset_state()

    def _reset_state(self) -> None:
        #: bumped by reset(): requests in flight across a reset are not logged
        self._generation += 1
        self._rng = random.Random(self._seed)
        self._prediction_rng = random.Random(self._seed + 0x9E3779B9)
        #: job id -> FakeJob (live: read-only for callers)
        self.jobs: dict[str, FakeJob] = {}
        self._order: list[FakeJob] = []
        #: (monotonic, wall, method, path, status, n_ids); status 0 = connection dropped
        self.request_log: list[tuple[float, float, str, str, int, int]] = []
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        #: metadata[key_field] -> number of jobs created with it
        self.creates_by_key: Counter[str] = Counter()
        self.dropped_creates: list[str] = []
        self.stalled_creates: list[str] = []
        #: how often each job id was asked for in a batch status query (?ids=...)
        self.polls_by_id: Counter[str] = Counter()
        #: (monotonic, job id) of every id in a batch status query, with log_polled_ids
        self.poll_log: list[tuple[float, str]] = []
        self._injections: list[_Injection] = []
        self._bucket = TokenBucket()

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.port}{CONTROL_PREFIX}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"apiKey {self.knobs.api_key}"}

    # ------------------------------------------------------------------ knobs

    def configure(self, **knobs: Any) -> None:
        """Change knobs at runtime (validated, atomically)."""
        with self._lock:
            self.knobs.update(knobs)
            if "max_rps" in knobs or "burst" in knobs:
                self._bucket.reset()

    def rate_limit(self, n: int, retry_after: float | str | None = None,
                   method: str | None = None) -> None:
        """Answer the next ``n`` API requests (optionally only of ``method``) with 429.
        ``retry_after``: seconds (sent as given, e.g. "2" or "0.2"), a string sent verbatim
        (e.g. ``http_date(2)``), or None for no Retry-After header."""
        self.inject(n, 429, retry_after, method)

    def error_next(self, n: int, status: int = 503, retry_after: float | str | None = None,
                   method: str | None = None) -> None:
        """Answer the next ``n`` API requests (optionally only of ``method``) with ``status``."""
        self.inject(n, status, retry_after, method)

    def inject(self, n: int, status: int, retry_after: Any = None,
               method: str | None = None) -> None:
        with self._lock:
            self._injections.append(
                _Injection(int(n), int(status), retry_after, method.upper() if method else None))

    def stall_create(self, seconds: float, n: int | None = None) -> None:
        """Delay the 201 of the next ``n`` creates (all if None) by ``seconds``; 0 clears."""
        self.configure(stall_create_seconds=float(seconds), stall_create_count=n)

    def drop_create_response(self, n: int = 1) -> None:
        """Create the next ``n`` jobs (-1: all), then close the connection unanswered."""
        self.configure(drop_create_responses=int(n))

    def reset(self) -> None:
        """Forget jobs, logs, counters and injections; knobs back to the constructor's."""
        with self._lock:
            self.knobs = Knobs()
            self.knobs.update(self._initial_knobs)
            self._reset_state()

    # ------------------------------------------------------------------ job helpers

    def job_ids(self) -> list[str]:
        with self._lock:
            return [j.id for j in self._order]

    def status(self, job_id: str) -> str:
        with self._lock:
            return self.jobs[job_id].status_at(time.time())

    def job_json(self, job_id: str) -> dict[str, Any]:
        """The job object exactly as GET /jobs/{id} would answer it now."""
        with self._lock:
            return self._job_json(self.jobs[job_id], time.time())

    def expected_histogram(self, job_id: str) -> dict[str, int]:
        """The histogram v1 artifact payload of a job: decimal state -> count."""
        with self._lock:
            return {str(s): c for s, c in self.jobs[job_id].counts().items()}

    def expected_counts(self, job_id: str, num_bits: int | None = None) -> dict[str, int]:
        """The planted counts as Qiskit-order bitstrings of ``num_bits`` (default: the bits
        declared by the job's program)."""
        with self._lock:
            job = self.jobs[job_id]
            return counts_to_bitstrings(job.counts(), num_bits or job.num_bits)

    def finish_now(self, job_id: str, failure: Mapping[str, str] | None = None) -> None:
        """Make a job terminal now (completed, or failed with ``failure``)."""
        with self._lock:
            job = self.jobs[job_id]
            if job.status_at(time.time()) in TERMINAL:
                return
            now = time.time()
            job.ready_at = min(job.ready_at, now)
            job.started_at = min(job.started_at, now)
            if job.unknown_at is not None:
                job.unknown_at = min(job.unknown_at, now)
            job.completed_at = now
            job.failure = dict(failure) if failure else None

    # ------------------------------------------------------------------ request log

    def _select(self, method: str | None, route: str | None,
                status: int | None) -> list[tuple[float, float, str, str, int, int]]:
        with self._lock:
            log = list(self.request_log)
        if method is None and route is None and status is None:
            return log
        return [r for r in log if (method is None or r[2] == method)
                and (route is None or _route_of(r[2], r[3]) == route)
                and (status is None or r[4] == status)]

    def requests(self, method: str | None = None, route: str | None = None,
                 status: int | None = None) -> list[tuple[float, float, str, str, int, int]]:
        """Logged API requests, filtered; route is a template such as "GET /jobs/{id}"."""
        return self._select(method, route, status)

    def requests_after(self, t: float, *, wall: bool = False, method: str | None = None,
                       route: str | None = None) -> list[tuple[float, float, str, str, int, int]]:
        """Requests that arrived at or after ``t`` (time.monotonic(), or time.time() if wall)."""
        i = 1 if wall else 0
        return [r for r in self._select(method, route, None) if r[i] >= t]

    def requests_in_any_window(self, seconds: float, *, method: str | None = None,
                               route: str | None = None, status: int | None = None) -> int:
        """Most requests (by arrival time) within any window of ``seconds``."""
        times = sorted(r[0] for r in self._select(method, route, status))
        best = lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def max_requests_per_second(self, **filters: Any) -> int:
        return self.requests_in_any_window(1.0, **filters)

    def duplicate_keys(self) -> dict[str, int]:
        """Submission keys (metadata[key_field]) that created more than one job."""
        with self._lock:
            return {k: n for k, n in self.creates_by_key.items() if n > 1}

    def stats(self, window: float = 1.0) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            by_job_status = Counter(j.status_at(now) for j in self._order)
            out = {
                "jobs": len(self._order),
                "jobs_by_status": dict(by_job_status),
                "requests": len(self.request_log),
                "by_route": dict(self.by_route),
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "creates": sum(self.creates_by_key.values()),
                "creates_by_key_count": len(self.creates_by_key),
                "duplicate_keys": {k: n for k, n in self.creates_by_key.items() if n > 1},
                "dropped_creates": list(self.dropped_creates),
                "stalled_creates": list(self.stalled_creates),
                "first_request_mono": self.request_log[0][0] if self.request_log else None,
            }
        out["window"] = window
        out["max_requests_in_window"] = self.requests_in_any_window(window)
        out["max_requests_per_second"] = self.max_requests_per_second()
        return out

    def jobs_state(self, ids: Iterable[str] | None = None,
                   counts: bool = True) -> dict[str, dict[str, Any]]:
        """id -> status, exact times, metadata, shots, bits, expected counts (for /_fake/jobs)."""
        now = time.time()
        with self._lock:
            chosen = (self._order if ids is None
                      else [self.jobs[i] for i in ids if i in self.jobs])
            out = {}
            for job in chosen:
                status = job.status_at(now)
                entry = {
                    "status": status, "seq": job.seq, "submitted_at": job.submitted_at,
                    "completed_at": job.terminal_at if status in TERMINAL else None,
                    "planned_completed_at": job.completed_at,
                    "metadata": job.metadata, "name": job.name, "shots": job.shots,
                    "num_bits": job.num_bits, "failure": job.failure,
                }
                if counts:
                    entry["expected_counts"] = counts_to_bitstrings(job.counts(), job.num_bits)
                out[job.id] = entry
            return out

    # ------------------------------------------------------------------ ASGI

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        rid = uuid.uuid4().hex
        if path.startswith(CONTROL_PREFIX + "/"):
            await self._control(scope, receive, send, rid)
            return
        mono, wall = time.monotonic(), time.time()
        method: str = scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        n_ids = (sum(1 for k, v in parse_qsl(query, keep_blank_values=True)
                     if k in ("ids", "ids[]") and v)
                 if method == "GET" and path.rstrip("/") == API_PREFIX + "/jobs" else 0)

        def log(status: int) -> None:
            self.request_log.append((mono, wall, method, path, status, n_ids))
            self.by_route[_route_of(method, path)] += 1
            self.by_status[status] += 1

        record, logging_send = self._recorder(log, send)
        try:
            await self._api(scope, receive, logging_send, rid, record)
        except Exception:
            record(500)
            raise
        finally:
            record(0)  # no answer: the connection was dropped

    async def _api(self, scope: dict[str, Any], receive: Any, send: Any, rid: str,
                   record: Callable[[int], None]) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        headers = dict(scope["headers"])
        with self._lock:
            latency = _draw(self.knobs.latency, self._rng, {})
        if latency > 0:
            await asyncio.sleep(latency)
        if not path.startswith(API_PREFIX + "/"):
            await _error(send, rid, 404, "Resource not found.")
            return
        parts = [p for p in path[len(API_PREFIX):].split("/") if p]
        query = scope.get("query_string", b"").decode("latin-1")
        is_create = method == "POST" and parts == ["jobs"]

        # infrastructure trouble first (a proxy answers before the API sees the key)
        late_error: int | None = None
        injected = self._take_injection(method)
        if injected is not None:
            status, retry_after = injected
            if not (status >= 500 and is_create and self.knobs.create_error_after_commit):
                await _server_error(send, rid, status, retry_after)
                return
            late_error = status
        else:
            late_error = self._random_error()
            if late_error is not None and not (is_create
                                               and self.knobs.create_error_after_commit):
                await _server_error(send, rid, late_error, None)
                return

        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth != f"apiKey {self.knobs.api_key}":
            await _error(send, rid, 401, "Invalid key provided. See "
                         "https://docs.ionq.com/#authentication for details.")
            return
        wait = self._take_token()
        if wait > 0:
            await _error(send, rid, 429, "Too Many Requests",
                         headers=[(b"retry-after", str(max(1, math.ceil(wait))).encode())])
            return

        try:
            await self._dispatch(method, parts, query, headers, receive, send, rid, scope,
                                 late_error, record)
        except _HTTPError as exc:
            await _error(send, rid, exc.status, exc.message, keys=exc.keys, source=exc.source)

    def _take_injection(self, method: str) -> tuple[int, Any] | None:
        with self._lock:
            for inj in self._injections:
                if inj.n > 0 and (inj.method is None or inj.method == method):
                    inj.n -= 1
                    self._injections = [i for i in self._injections if i.n > 0]
                    return inj.status, inj.retry_after
        return None

    def _random_error(self) -> int | None:
        with self._lock:
            k = self.knobs
            if k.error_rate > 0 and self._rng.random() < k.error_rate:
                return self._rng.choice(k.error_statuses)
        return None

    def _take_token(self) -> float:
        """0 if the request may pass the token bucket, else seconds until a token."""
        with self._lock:
            rate = self.knobs.max_rps
            if rate is None:
                return 0.0
            burst = float(self.knobs.burst if self.knobs.burst is not None else max(1.0, rate))
            return self._bucket.take(rate, burst)

    async def _dispatch(self, method: str, parts: list[str], query: str,
                        headers: dict[bytes, bytes], receive: Any, send: Any, rid: str,
                        scope: dict[str, Any], late_error: int | None,
                        record: Callable[[int], None]) -> None:
        n = len(parts)
        if n == 0 or parts[0] != "jobs":
            raise _HTTPError(404, "Resource not found.")
        if n == 1 and method == "POST":
            await self._create(headers, receive, send, rid, scope, late_error, record)
        elif n == 1 and method == "GET":
            await _json(send, rid, 200, self._list(query))
        elif n == 3 and parts[1:] == ["status", "cancel"] and method == "PUT":
            body = await self._json_body(headers, receive)
            await _json(send, rid, 200, self._cancel_many(body))
        elif n == 2 and method == "GET":
            with self._lock:
                payload = self._job_json(self._job(parts[1]), time.time())
            await _json(send, rid, 200, payload)
        elif n == 4 and parts[2:] == ["status", "cancel"] and method == "PUT":
            await _drain(receive, self.knobs.max_body_bytes)
            await _json(send, rid, 200, self._cancel_one(parts[1]))
        elif n == 4 and parts[2:] == ["results", "probabilities"] and method == "GET":
            await _json(send, rid, 200, self._result(parts[1], PROBABILITIES_V1, None))
        elif n == 4 and parts[2] == "artifacts" and method == "GET":
            await _json(send, rid, 200, self._result(parts[1], None, parts[3]))
        else:
            raise _HTTPError(404, "Resource not found.")

    # ------------------------------------------------------------------ handlers

    def _job(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise _HTTPError(404, "Resource not found.")
        return job

    async def _json_body(self, headers: dict[bytes, bytes], receive: Any) -> Any:
        raw = await _drain(receive, self.knobs.max_body_bytes)
        if raw is None:
            raise _HTTPError(413, "request entity too large")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json" or not raw:
            return {}  # like Express: no JSON body parsed -> validation of an empty object
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HTTPError(400, f"Invalid JSON body: {exc}") from None

    async def _create(self, headers: dict[bytes, bytes], receive: Any, send: Any, rid: str,
                      scope: dict[str, Any], late_error: int | None,
                      record: Callable[[int], None]) -> None:
        body = await self._json_body(headers, receive)
        spec = _validate_create(body, self.knobs.backends)
        now = time.time()
        with self._lock:
            job = self._new_job(spec, now)
            k = self.knobs
            drop = k.drop_create_responses != 0
            if drop and k.drop_create_responses > 0:
                k.drop_create_responses -= 1
            stall = 0.0
            if not drop and k.stall_create_seconds > 0:
                stall = k.stall_create_seconds
                if k.stall_create_count is not None:
                    k.stall_create_count -= 1
                    if k.stall_create_count <= 0:
                        k.stall_create_seconds, k.stall_create_count = 0.0, None
            if drop:
                self.dropped_creates.append(job.id)
            elif stall:
                self.stalled_creates.append(job.id)
        if drop:
            transport = self._transports.get(scope.get("client"))
            if transport is not None:
                record(0)
                transport.abort()
                for _ in range(3):  # let connection_lost mark the cycle disconnected
                    await asyncio.sleep(0)
                return
        if stall:
            await asyncio.sleep(stall)
        if late_error is not None:
            await _server_error(send, rid, late_error, None)
            return
        await _json(send, rid, 201, {"id": job.id, "status": "submitted",
                                     "session_id": job.session_id})

    def polls_after(self, t: float) -> list[tuple[float, str]]:
        """(monotonic, job id) of the ids polled at or after ``t`` (with log_polled_ids)."""
        with self._lock:
            return [p for p in self.poll_log if p[0] >= t]

    def polled_ids(self) -> set[str]:
        """Every job id asked for so far in a batch status query."""
        with self._lock:
            return set(self.polls_by_id)

    def plant(self, n: int, source: str, *, shots: int = 100, backend: str = "simulator",
              metadata: Mapping[str, str] | None = None) -> list[str]:
        """Create ``n`` jobs as if submitted now, without HTTP (for restart-at-scale tests)."""
        spec = {"type": QASM3_TYPE, "backend": backend, "name": None,
                "metadata": dict(metadata or {}), "shots": shots, "noise": None,
                "session_id": None, "settings": None, "dry_run": False, "data": source}
        with self._lock:
            now = time.time()
            return [self._new_job(spec, now).id for _ in range(n)]

    def _new_job(self, spec: dict[str, Any], now: float) -> FakeJob:
        k, rng = self.knobs, self._rng
        seq = len(self._order)
        ctx = {"seq": seq, "shots": spec["shots"], "backend": spec["backend"],
               "name": spec["name"], "metadata": spec["metadata"]}
        duration = _draw(k.duration, rng, ctx)
        f_sub, f_ready = k.phase_split
        ready_at = now + f_sub * duration
        queued_until = now + (f_sub + f_ready) * duration
        unknown_at = None
        unknown_status = None
        extra = 0.0
        if k.unknown_rate > 0 and rng.random() < k.unknown_rate:
            unknown_at, unknown_status = queued_until, k.unknown_status
            extra = max(0.0, float(k.unknown_seconds))
        started_at = queued_until + extra
        completed_at = now + duration + extra
        failure = None
        if k.failure_rate > 0 and rng.random() < k.failure_rate:
            failure = dict(k.failure)
        factor = k.prediction_bias * (math.exp(self._prediction_rng.gauss(0.0, k.prediction_error))
                                      if k.prediction_error > 0 else 1.0)
        bits, qubits = count_bits(spec["data"])
        job = FakeJob(
            id=str(uuid.uuid4()), seq=seq, type=spec["type"], backend=spec["backend"],
            name=spec["name"], metadata=spec["metadata"], shots=spec["shots"],
            noise=spec["noise"], session_id=spec["session_id"], settings=spec["settings"],
            dry_run=spec["dry_run"], num_bits=bits or qubits or 1, num_qubits=qubits,
            submitted_at=now, ready_at=ready_at, unknown_at=unknown_at,
            unknown_status=unknown_status, started_at=started_at, completed_at=completed_at,
            failure=failure, prediction_factor=factor)
        self.jobs[job.id] = job
        self._order.append(job)
        if spec["metadata"] and k.key_field in spec["metadata"]:
            self.creates_by_key[spec["metadata"][k.key_field]] += 1
        return job

    def _job_json(self, job: FakeJob, now: float) -> dict[str, Any]:
        status = job.status_at(now)
        end = job.canceled_at if job.canceled_at is not None else now
        started = end >= job.started_at
        terminal = status in TERMINAL
        completed = status == "completed"
        predict, factor = self.knobs.predictions, job.prediction_factor
        d: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "type": job.type,
            "backend": job.backend,
            "dry_run": job.dry_run,
            "submitter_id": self.submitter_id,
            "project_id": self.project_id,
            "parent_job_id": None,
            "child_job_ids": None,
            "session_id": job.session_id,
            "metadata": job.metadata,
            "name": job.name,
            "submitted_at": iso(job.submitted_at),
            "started_at": iso(job.started_at) if started else None,
            "completed_at": iso(job.terminal_at) if terminal else None,
            "predicted_wait_time_ms": (None if started or terminal or not predict
                                       else int((job.started_at - now) * factor * 1000)),
            "predicted_execution_duration_ms": (
                int((job.completed_at - job.started_at) * factor * 1000) if predict else None),
            "execution_duration_ms": (int((min(end, job.completed_at) - job.started_at) * 1000)
                                      if started and terminal else None),
            "shots": job.shots,
            "failure": job.failure if status == "failed" else None,
            "cost_model": "QCT",
            "settings": job.settings,
            "stats": {"qubits": job.num_qubits, "circuits": 1},
            # no debiasing ran: its output (an object of variants) is absent
            "output": ({"compilation": {}, "error_mitigation": {}}
                       if completed else {}),
            "results": ({fmt: {"id": job.artifact_id(fmt), "format": fmt,
                               "media_type": "application/json"}
                         for fmt in self.knobs.result_formats} if completed else None),
        }
        if job.backend == "simulator":
            d["noise"] = job.noise if job.noise is not None else {"model": "ideal"}
            if self.knobs.omit_shots_for_ideal and d["noise"].get("model") == "ideal":
                del d["shots"]
        return d

    def _list(self, query: str) -> dict[str, Any]:
        params = parse_qsl(query, keep_blank_values=True)
        ids: list[str] = []
        has_ids = False
        single: dict[str, str] = {}
        for key, value in params:
            if key not in LIST_PARAMS:
                raise _HTTPError(400, f'"{key}" is not allowed', [key], "query")
            if key in ("ids", "ids[]"):
                has_ids = True
                if value:
                    ids.append(value)
            else:
                single[key] = value
        k = self.knobs
        limit = k.default_limit
        if "limit" in single:
            raw = single["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= k.max_limit:
                raise _HTTPError(400, f'"limit" must be an integer from 1 to {k.max_limit}',
                                 ["limit"], "query")
            limit = int(raw)
        if has_ids and not k.ids_respect_limit:
            limit = len(ids) + 1
        if ids:
            with self._lock:
                self.polls_by_id.update(ids)
                if k.log_polled_ids:
                    mono = time.monotonic()
                    self.poll_log += [(mono, i) for i in ids]
        status = single.get("status")
        if status is not None and status not in JOB_STATUSES:
            raise _HTTPError(400, f'"status" must be one of [{", ".join(JOB_STATUSES)}]',
                             ["status"], "query")
        targets = ({t.strip() for t in single["target"].split(",") if t.strip()}
                   if single.get("target") else None)
        session = single.get("session_id")
        parent = single.get("parent_job_id")
        now = time.time()
        with self._lock:
            cursor_seq = len(self._order) - 1
            if single.get("next"):
                cursor = self.jobs.get(single["next"])
                if cursor is None:
                    raise _HTTPError(400, '"next" is not a valid cursor', ["next"], "query")
                cursor_seq = cursor.seq
            if has_ids:
                found = {self.jobs[i] for i in ids if i in self.jobs}
                candidates: Iterable[FakeJob] = sorted(found, key=lambda j: j.seq, reverse=True)
            else:
                candidates = (self._order[i] for i in range(cursor_seq, -1, -1))
            page: list[FakeJob] = []
            nxt = None
            for job in candidates:
                if job.seq > cursor_seq:
                    continue
                if parent is not None:
                    continue  # the fake's jobs have no parent
                if targets is not None and job.backend not in targets:
                    continue
                if session is not None and job.session_id != session:
                    continue
                if status is not None and job.status_at(now) != status:
                    continue
                if len(page) == limit:
                    nxt = job.id
                    break
                page.append(job)
            # a listing's entries are BaseJob, which has no child_job_ids (the OpenAPI
            # document's schema and its example agree)
            jobs = [self._job_json(j, now) for j in page]
            for job in jobs:
                del job["child_job_ids"]
            return {"jobs": jobs, "next": nxt}

    def _cancel(self, job: FakeJob, now: float) -> str:
        status = job.status_at(now)
        if status not in TERMINAL:
            job.canceled_at = now
            return "canceled"
        return status

    def _cancel_one(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            was = job.status_at(time.time())
            status = self._cancel(job, time.time())
            if was in TERMINAL:
                reply = self.knobs.cancel_terminal_reply
                if reply == "error":
                    raise _HTTPError(400, f"Job {job_id} is already {was}")
                if reply == "status":
                    return {"id": job_id, "status": status}
            return {"id": job_id, "status": "canceled"}

    def _cancel_many(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or "ids" not in body:
            raise _HTTPError(400, '"ids" is required', ["ids"])
        extra = sorted(set(body) - {"ids"})
        if extra:
            raise _HTTPError(400, f'"{extra[0]}" is not allowed', extra)
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _HTTPError(400, '"ids" must be an array of strings', ["ids"])
        now = time.time()
        done: list[str] = []
        with self._lock:
            for job_id in dict.fromkeys(ids):
                job = self.jobs.get(job_id)
                if job is not None:
                    self._cancel(job, now)
                    done.append(job_id)
        return {"ids": done, "status": "canceled"}

    def _result(self, job_id: str, fmt: str | None, artifact_id: str | None) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job.status_at(time.time()) != "completed":
                raise _HTTPError(404, "Resource not found.")
            if artifact_id is not None:
                fmt = next((f for f in self.knobs.result_formats
                            if job.artifact_id(f) == artifact_id), None)
                if fmt is None:
                    raise _HTTPError(404, "Resource not found.")
            counts = job.counts()
            if fmt == HISTOGRAM_V1:
                return {str(s): c for s, c in counts.items()}
            return {str(s): c / job.shots for s, c in counts.items()}

    # ------------------------------------------------------------------ control API

    async def _control(self, scope: dict[str, Any], receive: Any, send: Any, rid: str) -> None:
        method, path = scope["method"], scope["path"][len(CONTROL_PREFIX):]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        multi = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        try:
            body: Any = None
            if method == "POST":
                raw = await _drain(receive, 1 << 20)
                body = json.loads(raw) if raw else {}
            if method == "GET" and path == "/stats":
                payload: Any = self.stats(float(query.get("window", 1.0)))
            elif method == "GET" and path == "/jobs":
                ids = [v for k, v in multi if k == "ids"] or None
                payload = self.jobs_state(ids, counts=query.get("counts", "1") != "0")
            elif method == "GET" and path == "/requests":
                since = float(query.get("since", "-inf"))
                payload = {"fields": list(LOG_FIELDS),
                           "requests": [list(r) for r in self.requests_after(since)]}
            elif method == "GET" and path == "/polls":
                payload = {"polls": [list(p) for p in
                                     self.polls_after(float(query.get("since", "-inf")))]}
            elif method == "GET" and path == "/knobs":
                with self._lock:
                    payload = self.knobs.to_json()
            elif method == "POST" and path == "/knobs":
                payload = self._apply_control_knobs(body)
            elif method == "POST" and path == "/plant":
                payload = {"ids": self.plant(int(body["n"]), str(body["source"]),
                                             shots=int(body.get("shots", 100)))}
            elif method == "POST" and path == "/finish":
                for job_id in body.get("ids", []):
                    self.finish_now(job_id, body.get("failure"))
                payload = {"ok": True}
            elif method == "POST" and path == "/reset":
                self.reset()
                payload = {"ok": True}
            else:
                await _error(send, rid, 404, "no such control endpoint")
                return
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            await _error(send, rid, 400, f"{type(exc).__name__}: {exc}")
            return
        await _json(send, rid, 200, payload)

    def _apply_control_knobs(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValueError("knobs must be a JSON object")
        body = dict(body)
        actions = {name: body.pop(name) for name in
                   ("rate_limit", "error_next", "stall_create", "drop_create_response")
                   if name in body}
        self.configure(**body)
        if "rate_limit" in actions:
            a = actions["rate_limit"]
            self.rate_limit(a["n"], a.get("retry_after"), a.get("method"))
        if "error_next" in actions:
            a = actions["error_next"]
            self.error_next(a["n"], a.get("status", 503), a.get("retry_after"), a.get("method"))
        if "stall_create" in actions:
            a = actions["stall_create"]
            self.stall_create(a["seconds"], a.get("n"))
        if "drop_create_response" in actions:
            self.drop_create_response(int(actions["drop_create_response"]))
        with self._lock:
            return self.knobs.to_json()


# --------------------------------------------------------------------------- validation

def _validate_create(body: Any, backends: tuple[str, ...] | None) -> dict[str, Any]:
    """Check a create body against CircuitJobCreationPayload (qasm3 only); 400 on problems."""
    if not isinstance(body, dict):
        raise _HTTPError(400, '"value" must be of type object', ["value"])
    extra = sorted(set(body) - CREATE_FIELDS)
    if extra:
        raise _HTTPError(400, f'"{extra[0]}" is not allowed', extra)
    for key in ("backend", "type", "input"):
        if key not in body:
            raise _HTTPError(400, f'"{key}" is required', [key])
    job_type = body["type"]
    if job_type != QASM3_TYPE:
        raise _HTTPError(400, f'"type" must be [{QASM3_TYPE}] (the fake runs OpenQASM 3 only)',
                         ["type"])
    backend = body["backend"]
    if not isinstance(backend, str) or not backend:
        raise _HTTPError(400, '"backend" must be a string', ["backend"])
    if backends is not None and backend not in backends:
        raise _HTTPError(400, f'"backend" must be one of [{", ".join(backends)}]', ["backend"])
    inp = body["input"]
    if not isinstance(inp, dict):
        raise _HTTPError(400, '"input" must be of type object', ["input"])
    bad = sorted(set(inp) - {"data"})
    if bad:
        raise _HTTPError(400, f'"input.{bad[0]}" is not allowed', [f"input.{bad[0]}"])
    data = inp.get("data")
    if not isinstance(data, str):
        raise _HTTPError(400, '"input.data" must be a string', ["input.data"])
    if not is_qasm3(data):
        raise _HTTPError(400, '"input.data" must be an OpenQASM 3 program', ["input.data"])
    shots = body.get("shots", 100)
    if not isinstance(shots, int) or isinstance(shots, bool):
        raise _HTTPError(400, '"shots" must be an integer', ["shots"])
    if shots < 1:
        raise _HTTPError(400, '"shots" must be greater than or equal to 1', ["shots"])
    if shots > 1_000_000:
        raise _HTTPError(400, '"shots" must be less than or equal to 1000000', ["shots"])
    metadata = body.get("metadata")
    if "metadata" in body and not (isinstance(metadata, dict)
                                   and all(isinstance(v, str) for v in metadata.values())):
        raise _HTTPError(400, '"metadata" must be an object of strings', ["metadata"])
    name = body.get("name")
    if "name" in body and not isinstance(name, str):
        raise _HTTPError(400, '"name" must be a string', ["name"])
    session_id = body.get("session_id")
    if "session_id" in body and not isinstance(session_id, str):
        raise _HTTPError(400, '"session_id" must be a string', ["session_id"])
    settings = body.get("settings", {})
    if not isinstance(settings, dict):
        raise _HTTPError(400, '"settings" must be of type object', ["settings"])
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise _HTTPError(400, '"dry_run" must be a boolean', ["dry_run"])
    noise = body.get("noise")
    if "noise" in body:
        if not isinstance(noise, dict) or not isinstance(noise.get("model"), str):
            raise _HTTPError(400, '"noise.model" is required', ["noise.model"])
        bad = sorted(set(noise) - {"model", "seed"})
        if bad:
            raise _HTTPError(400, f'"noise.{bad[0]}" is not allowed', [f"noise.{bad[0]}"])
        seed = noise.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _HTTPError(400, '"noise.seed" must be an integer', ["noise.seed"])
    return {"type": job_type, "backend": backend, "data": data, "shots": shots,
            "metadata": dict(metadata) if metadata is not None else None, "name": name,
            "session_id": session_id, "settings": settings, "dry_run": dry_run,
            "noise": noise}


# --------------------------------------------------------------------------- ASGI I/O

async def _drain(receive: Any, limit: int) -> bytes | None:
    """The request body, or None if it exceeds ``limit`` (then read and discarded, up to
    64 MiB, so the client gets to read the 413)."""
    chunks: list[bytes] = []
    size = 0
    too_big = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_big = True
            chunks.clear()
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body", False) or size > (64 << 20):
            break
    return None if too_big else b"".join(chunks)


async def _send(send: Any, rid: str, status: int, body: bytes, ctype: bytes,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Any, rid: str, status: int, payload: Any) -> None:
    await _send(send, rid, status, _dumps(payload), b"application/json; charset=utf-8")


async def _error(send: Any, rid: str, status: int, message: str, *,
                 keys: Sequence[str] | None = None, source: str = "body",
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload: dict[str, Any] = {"statusCode": status,
                               "error": _REASONS.get(status, "Error"), "message": message}
    if keys:
        payload["validation"] = {"source": source, "keys": list(keys)}
    await _send(send, rid, status, _dumps(payload), b"application/json; charset=utf-8",
                headers)


async def _server_error(send: Any, rid: str, status: int, retry_after: Any) -> None:
    headers = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
    if status == 429:
        await _error(send, rid, 429, "Too Many Requests. To get a higher rate limit, please "
                     "reach out to support@ionq.co", headers=headers)
    elif status == 502:  # proxies answer HTML
        await _send(send, rid, 502, _BAD_GATEWAY_HTML, b"text/html", headers)
    else:
        await _error(send, rid, status, "Internal service outage. Visit "
                     "https://status.ionq.co/ to track this incident.", headers=headers)


# --------------------------------------------------------------------------- process mode

class FakeIonQProcess:
    """``python -m qjobd.testing.fake_ionq`` in a child process, driven through ``/_fake/``."""

    def __init__(self, *, api_key: str = "test-key", knobs: Mapping[str, Any] | None = None,
                 seed: int = 0, python: str = sys.executable,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.api_key = api_key
        self.knobs = dict(knobs or {})
        self.seed = seed
        self.python = python
        #: the child's working directory (None: ours); the fake runs from the installed package
        self.cwd = str(cwd) if cwd is not None else None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CONTROL_PREFIX}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"apiKey {self.api_key}"}

    def start(self, timeout: float = 15.0) -> FakeIonQProcess:
        self._dir = tempfile.TemporaryDirectory(prefix="fake-ionq-")
        port_file = Path(self._dir.name) / "port"
        cmd = [self.python, "-m", "qjobd.testing.fake_ionq", "--port", "0", "--port-file",
               str(port_file), "--api-key", self.api_key, "--seed", str(self.seed),
               "--knobs-json", json.dumps(self.knobs)]
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                self._cleanup()
                raise RuntimeError(f"fake IonQ process exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("fake IonQ process did not start")
            time.sleep(0.01)
        self.port = int(port_file.read_text())
        return self

    def _control(self, method: str, path: str, **kw: Any) -> Any:
        import httpx  # only the helper needs a client

        r = httpx.request(method, f"{self.control_url}{path}", timeout=30.0, **kw)
        r.raise_for_status()
        return r.json()

    def stats(self, window: float = 1.0) -> dict[str, Any]:
        return self._control("GET", "/stats", params={"window": window})

    def jobs(self, ids: Sequence[str] | None = None, counts: bool = True) -> dict[str, Any]:
        params: list[tuple[str, str]] = [("counts", "1" if counts else "0")]
        params += [("ids", i) for i in ids or ()]
        return self._control("GET", "/jobs", params=params)

    def requests(self, since: float | None = None) -> list[list[Any]]:
        params = {} if since is None else {"since": since}
        return self._control("GET", "/requests", params=params)["requests"]

    def polls(self, since: float | None = None) -> list[list[Any]]:
        """[monotonic, job id] of each id polled (knob log_polled_ids), since ``since``."""
        params = {} if since is None else {"since": since}
        return self._control("GET", "/polls", params=params)["polls"]

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        return self._control("POST", "/knobs", json=knobs)

    def finish(self, ids: Sequence[str], failure: Mapping[str, str] | None = None) -> None:
        self._control("POST", "/finish", json={"ids": list(ids), "failure": failure})

    def plant(self, n: int, source: str, *, shots: int = 100) -> list[str]:
        """Create ``n`` jobs without HTTP creates (see ``FakeIonQ.plant``); their ids."""
        return self._control("POST", "/plant", json={"n": n, "source": source,
                                                     "shots": shots})["ids"]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; the exit code (0 on a clean stop)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        self._cleanup()
        return rc

    def _cleanup(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> FakeIonQProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_range(text: str) -> float | tuple[float, float]:
    lo, _, hi = text.partition(",")
    return (float(lo), float(hi)) if hi else float(lo)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qjobd.testing.fake_ionq",
                                description="Fake IonQ v0.4 jobs API on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", help="write the bound port here (atomically) once listening")
    p.add_argument("--api-key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knobs", help="JSON file of knobs (see Knobs)")
    p.add_argument("--knobs-json", help="knobs as an inline JSON object")
    p.add_argument("--duration", type=_parse_range, help="seconds or LO,HI")
    p.add_argument("--latency", type=_parse_range, help="seconds or LO,HI")
    p.add_argument("--failure-rate", type=float)
    p.add_argument("--error-rate", type=float)
    p.add_argument("--max-rps", type=float)
    p.add_argument("--burst", type=float)
    p.add_argument("--unknown-rate", type=float)
    p.add_argument("--unknown-status")
    p.add_argument("--unknown-seconds", type=float)
    p.add_argument("--max-limit", type=int)
    args = p.parse_args(argv)
    knobs: dict[str, Any] = {}
    if args.knobs:
        knobs.update(json.loads(Path(args.knobs).read_text()))
    if args.knobs_json:
        knobs.update(json.loads(args.knobs_json))
    for name in ("api_key", "duration", "latency", "failure_rate", "error_rate", "max_rps",
                 "burst", "unknown_rate", "unknown_status", "unknown_seconds", "max_limit"):
        value = getattr(args, name)
        if value is not None:
            knobs[name] = value
    fake = FakeIonQ(host=args.host, port=args.port, seed=args.seed, **knobs)
    fake.serve_forever(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
