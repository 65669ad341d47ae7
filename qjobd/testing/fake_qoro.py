"""A fake of Qoro's job API, as divi's ``QoroService`` speaks it, over real HTTP on 127.0.0.1.

Source of truth: ``../shared/wire/qoro.md``. The fake speaks the wire format only (no
client code), so a backend under test exercises its real HTTP path: bearer auth, the
two-phase upload (``job/init/`` then ``add_circuits`` fragments, a job runs only once a
fragment says ``"finalized": "true"``), the 0.95 MB body cap (413 above it), paged
``resultsV2`` with plain or QH1/QH2 histograms of the fake's own encoding, 409 on a late
cancel, and fault knobs: 5xx, 429 with Retry-After, a server-side request budget, stalled
and dropped answers, unknown and failing statuses, corrupt histograms.

Run it in a background thread with its own event loop::

    with FakeQoro(api_key="k", duration=(0.1, 0.3)) as fake:
        fake.base_url, fake.jobs, fake.request_log, fake.expected_counts(job_id, label) ...

Jobs move ``PENDING -> SCHEDULED -> RUNNING -> COMPLETED`` (or the failure status) on
the wall clock from the moment they are finalized; an unfinalized job stays ``PENDING``
and never runs. Results are planted deterministically from the job id and the label
(:func:`planted_counts`), as wide as the circuit's ``creg`` bits.

The QH encoder here (:func:`encode_qh`) is written from the layout, independently of
``backends/qh.py``, and can be told to break any field, for the decoder's tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import hashlib
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl

from qjobd.testing.fake_server import FakeServer, TokenBucket

__all__ = ["MAX_BODY_BYTES", "FakeQoro", "Knobs", "encode_qh", "planted_counts",
           "qh_envelope", "uleb128"]

API_PREFIX = "/api"
#: divi's cap: 0.95 MB of JSON per request body
MAX_BODY_BYTES = 996_147
STATUSES = ("PENDING", "SCHEDULED", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED",
            "INSUFFICIENT_CREDITS", "TIMED_OUT")
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "INSUFFICIENT_CREDITS", "TIMED_OUT"})
FAILURES = ("FAILED", "INSUFFICIENT_CREDITS", "TIMED_OUT")
CORRUPTIONS = ("magic", "encoding", "width", "shots", "unique", "runs", "extras",
               "truncate", "trailing", "base64")
#: request-log tuple fields, in order
LOG_FIELDS = ("mono", "wall", "method", "route", "path", "status", "bytes")


# --------------------------------------------------------------------------- QH encoding

def uleb128(n: int) -> bytes:
    """``n`` as unsigned LEB128: seven bits a byte, least significant first."""
    if n < 0:
        raise ValueError("ULEB128 is unsigned")
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_UNSET: Any = object()


def encode_qh(counts: Mapping[int, int], n_bits: int, version: int = 1, *,
              magic: bytes = _UNSET, width: int = _UNSET, unique: int = _UNSET,
              total_shots: int = _UNSET, gaps: Sequence[int] = _UNSET,
              runs: Sequence[int] = _UNSET, first_value: int = _UNSET,
              rle_len: int = _UNSET, extras: Sequence[int] = _UNSET,
              extras_len: int = _UNSET) -> bytes:
    """A QH1 (``version=1``) or QH2 payload of ``{outcome index: count}``.

    Every keyword overrides one field of the layout as written (the rest is derived
    from ``counts`` as usual), to build payloads that break exactly one rule.
    """
    outcomes = sorted((i, c) for i, c in counts.items() if c > 0)
    if magic is _UNSET:
        magic = b"QH1" if version == 1 else b"QH2"
    if width is _UNSET:
        width = n_bits
    if version == 1 and not 0 <= width <= 255:
        raise ValueError("QH1 carries its width in one byte: use QH2 above 255 bits")
    head = magic + (bytes([width]) if version == 1 else uleb128(width))
    if unique is _UNSET:
        unique = len(outcomes)
    if total_shots is _UNSET:
        total_shots = sum(c for _, c in outcomes)
    if gaps is _UNSET:
        gaps, previous = [], 0
        for index, _ in outcomes:
            gaps.append(index - previous)
            previous = index
    ones = [c == 1 for _, c in outcomes]
    if runs is _UNSET:
        runs = []
        for i, flag in enumerate(ones):
            if i and flag == ones[i - 1]:
                runs[-1] += 1
            else:
                runs.append(1)
    if first_value is _UNSET:
        first_value = 1 if ones and ones[0] else 0
    block = uleb128(len(runs))
    if runs:
        block += bytes([first_value]) + b"".join(uleb128(r) for r in runs)
    if rle_len is _UNSET:
        rle_len = len(block)
    if extras is _UNSET:
        extras = [c - 2 for _, c in outcomes if c != 1]
    if extras_len is _UNSET:
        extras_len = len(extras)
    return (head + uleb128(unique) + uleb128(total_shots) + uleb128(len(gaps))
            + b"".join(uleb128(g) for g in gaps) + uleb128(rle_len) + block
            + uleb128(extras_len) + b"".join(uleb128(e) for e in extras))


def qh_envelope(counts: Mapping[int, int], n_bits: int, version: int = 1,
                **overrides: Any) -> dict[str, Any]:
    """``{"encoding", "n_bits", "payload"}`` as resultsV2 sends it."""
    payload = encode_qh(counts, n_bits, version, **overrides)
    return {"encoding": f"qh{version}", "n_bits": n_bits,
            "payload": base64.b64encode(payload).decode("ascii")}


def corrupt_envelope(counts: Mapping[int, int], n_bits: int, version: int,
                     how: str) -> dict[str, Any]:
    """An envelope broken in one documented way (``CORRUPTIONS``)."""
    total = sum(counts.values())
    if how == "magic":
        return qh_envelope(counts, n_bits, version, magic=b"QHX")
    if how == "encoding":
        env = qh_envelope(counts, n_bits, version)
        env["encoding"] = "qh2" if version == 1 else "qh1"
        return env
    if how == "width":
        env = qh_envelope(counts, n_bits, version)
        env["n_bits"] = n_bits + 1
        return env
    if how == "shots":
        return qh_envelope(counts, n_bits, version, total_shots=total + 1)
    if how == "unique":
        return qh_envelope(counts, n_bits, version, unique=len(counts) + 1)
    if how == "runs":
        return qh_envelope(counts, n_bits, version, runs=[len(counts) + 1], first_value=0)
    if how == "extras":
        extras = [c - 2 for c in counts.values() if c != 1]
        return qh_envelope(counts, n_bits, version, extras_len=len(extras) + 1,
                           extras=[*extras, 0])
    if how in ("truncate", "trailing"):
        env = qh_envelope(counts, n_bits, version)
        raw = base64.b64decode(env["payload"])
        raw = raw[:-2] if how == "truncate" else raw + b"\x00"
        env["payload"] = base64.b64encode(raw).decode("ascii")
        return env
    if how == "base64":
        env = qh_envelope(counts, n_bits, version)
        env["payload"] = "*not base64*"
        return env
    raise ValueError(f"unknown corruption {how!r}; one of {CORRUPTIONS}")


# --------------------------------------------------------------------------- planted data

def planted_counts(job_id: str, label: str, shots: int, n_bits: int) -> dict[int, int]:
    """The counts the fake plants for one circuit of a job: 1 to 8 distinct outcomes below
    ``2**n_bits`` (seeded from SHA-256 of job id and label), summing exactly to ``shots``,
    some of them (usually) exactly 1, so QH's run-length block has both kinds."""
    seed = hashlib.sha256(f"{job_id}/{label}".encode()).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    k = min(1 + rng.randrange(8), shots, 1 << min(n_bits, 16))
    indices: set[int] = set()
    while len(indices) < k:
        indices.add(rng.getrandbits(n_bits))
    ordered = sorted(indices)
    counts = dict.fromkeys(ordered, 1)
    rest = shots - k
    heavy = [i for i in ordered if rng.random() < 0.6] or [ordered[-1]]
    weights = [0.1 + rng.random() for _ in heavy]
    total = sum(weights)
    shares = [int(rest * w / total) for w in weights]
    shares[0] += rest - sum(shares)
    for index, share in zip(heavy, shares, strict=True):
        counts[index] += share
    return counts


def bitstrings(counts: Mapping[int, int], n_bits: int) -> dict[str, int]:
    """Outcome indices -> Qiskit-order bitstrings (most significant bit first)."""
    return {format(i, f"0{n_bits}b"): c for i, c in counts.items()}


_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_CREG = re.compile(r"\bcreg\s+[A-Za-z_]\w*\s*\[\s*(\d+)\s*\]")
_QASM2 = re.compile(r"\s*OPENQASM\s+2(\.\d+)?\s*;")


def creg_bits(source: str) -> int:
    """The classical bits an OpenQASM 2 program declares (the width of its counts)."""
    return sum(int(m.group(1)) for m in _CREG.finditer(_COMMENTS.sub(" ", source)))


# --------------------------------------------------------------------------- state

@dataclass
class Knobs:
    """Tunable at construction (``FakeQoro(**knobs)``) or at runtime (``configure``).
    Rates are fractions 0..1; per-job draws happen at finalization."""

    api_key: str = "test-key"
    #: seconds from finalization to the terminal status: fixed or (lo, hi) uniform
    duration: Any = (0.2, 0.5)
    #: fractions of the duration spent PENDING and SCHEDULED (the rest is RUNNING)
    phase_split: tuple[float, float] = (0.2, 0.2)
    #: fraction of jobs that end with ``failure_status`` instead of COMPLETED
    failure_rate: float = 0.0
    failure_status: str = "FAILED"
    #: fraction of jobs that report ``unknown_status`` for ``unknown_seconds`` between
    #: SCHEDULED and RUNNING (their run is that much longer)
    unknown_rate: float = 0.0
    unknown_status: str = "CALIBRATING"
    unknown_seconds: float = 0.3
    #: fraction of API requests answered with one of error_statuses (before auth)
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (503, 502)
    #: server-side token bucket over all API requests (429 with Retry-After when empty)
    max_rps: float | None = None
    burst: float | None = None
    #: added latency per API request
    latency: float = 0.0
    #: bodies above this get 413
    max_body_bytes: int = MAX_BODY_BYTES
    #: resultsV2 serves at most this many results per page, whatever `limit` asks
    max_page: int = 100
    #: histogram encoding: "dict", "qh1", "qh2" (QH2 also above 255 bits), or "mixed"
    #: (per label, in turn)
    encoding: str = "qh1"
    #: label -> corruption (one of CORRUPTIONS) applied to that label's histogram
    corrupt: dict[str, str] = field(default_factory=dict)
    #: accepted targets
    clusters: tuple[str, ...] = ("qoro_maestro", "qoro_maestro_gpu")
    qpu_systems: tuple[str, ...] = ("qpu_alpha",)
    #: delay the 201 of the next stall_init_count inits (None: all) by this many seconds
    stall_init_seconds: float = 0.0
    stall_init_count: int | None = None
    #: create the next N jobs, then close the connection unanswered (-1: all)
    drop_init_responses: int = 0
    #: stall add_circuits fragment number `stall_add_fragment` (0-based within its job;
    #: None: every fragment) for `stall_add_seconds`, "before" storing it or "after";
    #: `stall_add_count` stalls in all (None: unlimited)
    stall_add_seconds: float = 0.0
    stall_add_fragment: int | None = None
    stall_add_when: str = "before"
    stall_add_count: int | None = None
    #: store the next N fragments (of index `drop_add_fragment`, None: any), then close
    #: the connection unanswered
    drop_add_responses: int = 0
    drop_add_fragment: int | None = None

    _FLOATS = ("failure_rate", "unknown_rate", "unknown_seconds", "error_rate", "latency",
               "stall_init_seconds", "stall_add_seconds")

    def update(self, values: Mapping[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in names:
                raise ValueError(f"unknown knob {name!r}")
            if name in ("phase_split", "error_statuses", "clusters", "qpu_systems"):
                value = tuple(value)
            if name == "duration" and isinstance(value, list):
                value = tuple(value)
            if name in self._FLOATS:
                value = float(value)
            setattr(self, name, value)
        if self.failure_status not in FAILURES:
            raise ValueError(f"failure_status must be one of {FAILURES}")
        if self.encoding not in ("dict", "qh1", "qh2", "mixed"):
            raise ValueError("encoding must be dict, qh1, qh2 or mixed")
        bad = {k: v for k, v in self.corrupt.items() if v not in CORRUPTIONS}
        if bad:
            raise ValueError(f"unknown corruption(s) {bad}; one of {CORRUPTIONS}")
        if self.stall_add_when not in ("before", "after"):
            raise ValueError('stall_add_when must be "before" or "after"')


@dataclass(eq=False)
class FakeJob:
    id: str
    seq: int
    tag: str
    target: dict[str, str]
    created_at: float
    #: label -> the decoded OpenQASM 2 source, in upload order
    circuits: dict[str, str] = field(default_factory=dict)
    shots: int | None = None
    #: body size in bytes of each add_circuits fragment stored, in order
    fragments: list[int] = field(default_factory=list)
    finalized_at: float | None = None
    canceled_at: float | None = None
    # the plan, drawn at finalization
    scheduled_at: float = 0.0
    unknown_at: float | None = None
    unknown_status: str | None = None
    running_at: float = 0.0
    ends_at: float = 0.0
    outcome: str = "COMPLETED"

    def status_at(self, now: float) -> str:
        if self.canceled_at is not None:
            return "CANCELLED"
        if self.finalized_at is None or now < self.scheduled_at:
            return "PENDING"
        if now >= self.ends_at:
            return self.outcome
        if now >= self.running_at:
            return "RUNNING"
        if self.unknown_at is not None and now >= self.unknown_at:
            return self.unknown_status or "SCHEDULED"
        return "SCHEDULED"

    def run_time(self, now: float) -> float:
        if self.finalized_at is None or now < self.running_at:
            return 0.0
        end = min(now, self.ends_at, self.canceled_at or now)
        return round(max(0.0, end - self.running_at), 3)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, key: str = "detail") -> None:
        super().__init__(detail)
        self.status, self.detail, self.key = status, detail, key


def _route(method: str, path: str) -> str:
    parts = [p for p in path[len(API_PREFIX):].split("/") if p]
    if parts == ["job", "init"]:
        return f"{method} job/init/"
    if len(parts) == 3 and parts[0] == "job":
        return f"{method} job/{{id}}/{parts[2]}/"
    return f"{method} {path}"


# --------------------------------------------------------------------------- the fake

class FakeQoro(FakeServer):
    """Qoro's job API on 127.0.0.1. Public methods are thread-safe."""

    label = "fake Qoro"
    backlog = 512

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
                 **knobs: Any) -> None:
        super().__init__(host=host, port=port)
        self._initial_knobs = dict(knobs)
        self._seed = seed
        #: stalls under way right now (a test waits for one to begin)
        self.stalling = 0
        #: (loop, event) of each stall under way, for release_stalls()
        self._stalls: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._reset_state()

    def _reset_state(self) -> None:
        self.knobs = Knobs()
        self.knobs.update(self._initial_knobs)
        self._rng = random.Random(self._seed)
        #: bumped by reset(): requests in flight across a reset are not logged
        self._generation += 1
        #: job id -> FakeJob
        self.jobs: dict[str, FakeJob] = {}
        #: (monotonic, wall, method, route, path, status, request bytes); status 0: dropped
        self.request_log: list[tuple[float, float, str, str, str, int, int]] = []
        #: init tag -> jobs created with it
        self.inits_by_tag: Counter[str] = Counter()
        #: answers dropped on purpose ("init <id>", "add_circuits <id>#<fragment>")
        self.dropped: list[str] = []
        self._injections: list[list[Any]] = []
        self._bucket = TokenBucket()

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    # ------------------------------------------------------------------ knobs and helpers

    def release_stalls(self) -> None:
        """End every stall under way now (the stalled requests go on as planned)."""
        with self._lock:
            for loop, event in self._stalls:
                loop.call_soon_threadsafe(event.set)

    def reset(self, timeout: float = 5.0) -> None:
        """Forget jobs, logs, counters and injections; knobs back to the constructor's.
        Ends stalls under way first, so no stalled request spills into what follows."""
        self.release_stalls()
        deadline = time.monotonic() + timeout
        while self.stalling and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            self._reset_state()

    def configure(self, **knobs: Any) -> None:
        with self._lock:
            self.knobs.update(knobs)
            self._bucket.reset()

    def inject(self, n: int, status: int, retry_after: float | str | None = None,
               route: str | None = None) -> None:
        """Answer the next ``n`` API requests (of ``route``, e.g. "GET job/{id}/status/",
        if given) with ``status``, with a Retry-After header if given."""
        with self._lock:
            self._injections.append([int(n), int(status), retry_after, route])

    def rate_limit(self, n: int, retry_after: float | str | None = None,
                   route: str | None = None) -> None:
        self.inject(n, 429, retry_after, route)

    def status(self, job_id: str) -> str:
        with self._lock:
            return self.jobs[job_id].status_at(time.time())

    def finish_now(self, job_id: str, status: str = "COMPLETED") -> None:
        """Make a finalized job terminal now with ``status``."""
        with self._lock:
            job = self.jobs[job_id]
            now = time.time()
            if job.finalized_at is None or job.status_at(now) in TERMINAL:
                return
            job.scheduled_at = min(job.scheduled_at, now)
            job.running_at = min(job.running_at, now)
            job.unknown_at = None
            job.ends_at, job.outcome = now, status

    def expected_counts(self, job_id: str, label: str) -> dict[str, int]:
        """The planted counts of one circuit as bitstrings (what the daemon must store)."""
        with self._lock:
            job = self.jobs[job_id]
            bits = creg_bits(job.circuits[label])
            return bitstrings(planted_counts(job_id, label, job.shots or 0, bits), bits)

    def finalized(self) -> list[FakeJob]:
        with self._lock:
            return [j for j in self.jobs.values() if j.finalized_at is not None]

    def never_finalized(self) -> list[FakeJob]:
        with self._lock:
            return [j for j in self.jobs.values() if j.finalized_at is None]

    def duplicate_tags(self) -> dict[str, int]:
        with self._lock:
            return {t: n for t, n in self.inits_by_tag.items() if n > 1}

    def requests(self, route: str | None = None, status: int | None = None
                 ) -> list[tuple[float, float, str, str, str, int, int]]:
        """Logged API requests; ``route`` is a template such as "POST job/{id}/cancel/"."""
        with self._lock:
            return [r for r in self.request_log if (route is None or r[3] == route)
                    and (status is None or r[5] == status)]

    # ------------------------------------------------------------------ ASGI

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        mono, wall = time.monotonic(), time.time()
        method, path = scope["method"], scope["path"]
        route = _route(method, path)
        size = [0]

        def log(status: int) -> None:
            self.request_log.append((mono, wall, method, route, path, status, size[0]))

        record, logging_send = self._recorder(log, send)
        try:
            await self._api(scope, receive, logging_send, route, size, record)
        except _HTTPError as exc:
            await _json(logging_send, exc.status, {exc.key: exc.detail})
        finally:
            record(0)

    async def _api(self, scope: dict[str, Any], receive: Any, send: Any, route: str,
                   size: list[int], record: Callable[[int], None]) -> None:
        k = self.knobs
        if k.latency > 0:
            await asyncio.sleep(k.latency)
        injected = self._take_injection(route)
        if injected is None and k.error_rate > 0:
            with self._lock:
                if self._rng.random() < k.error_rate:
                    injected = (self._rng.choice(k.error_statuses), None)
        if injected is not None:
            status, retry_after = injected
            headers = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
            await _drain(receive, 64 << 20)
            detail = "Request was throttled." if status == 429 else f"injected HTTP {status}"
            await _json(send, status, {"detail": detail}, headers)
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {k.api_key}":
            await _drain(receive, 64 << 20)
            raise _HTTPError(401, "Invalid token.")
        wait = self._take_token()
        if wait > 0:
            await _drain(receive, 64 << 20)
            await _json(send, 429, {"detail": "Request was throttled."},
                        [(b"retry-after", str(max(1, round(wait + 0.5))).encode())])
            return
        raw = await _drain(receive, k.max_body_bytes)
        size[0] = len(raw) if raw is not None else k.max_body_bytes + 1
        if raw is None:
            raise _HTTPError(413, f"Request body exceeds {k.max_body_bytes} bytes")
        parts = [p for p in scope["path"][len(API_PREFIX):].split("/") if p]
        method = scope["method"]
        if not scope["path"].endswith("/") or parts[:1] != ["job"]:
            raise _HTTPError(404, "Not found.")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if parts == ["job", "init"] and method == "POST":
            await self._init(_parse_json(raw), scope, send, record)
        elif len(parts) == 3 and parts[2] == "add_circuits" and method == "POST":
            await self._add(parts[1], _parse_json(raw), len(raw), scope, send, record)
        elif len(parts) == 3 and parts[2] == "status" and method == "GET":
            with self._lock:
                job = self._job(parts[1])
                now = time.time()
                answer = {"status": job.status_at(now), "run_time": job.run_time(now)}
            await _json(send, 200, answer)
        elif len(parts) == 3 and parts[2] == "resultsV2" and method == "GET":
            await _json(send, 200, self._results(parts[1], query))
        elif len(parts) == 3 and parts[2] == "cancel" and method == "POST":
            await self._cancel(parts[1], send)
        else:
            raise _HTTPError(404, "Not found.")

    def _take_injection(self, route: str) -> tuple[int, Any] | None:
        with self._lock:
            for inj in self._injections:
                if inj[0] > 0 and (inj[3] is None or inj[3] == route):
                    inj[0] -= 1
                    self._injections = [i for i in self._injections if i[0] > 0]
                    return inj[1], inj[2]
        return None

    def _take_token(self) -> float:
        with self._lock:
            rate = self.knobs.max_rps
            if rate is None:
                return 0.0
            burst = float(self.knobs.burst or max(1.0, rate))
            return self._bucket.take(rate, burst)

    def _job(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise _HTTPError(404, "Not found.")
        return job

    async def _drop(self, scope: dict[str, Any], record: Callable[[int], None],
                    what: str) -> None:
        transport = self._transports.get(scope.get("client"))
        with self._lock:
            self.dropped.append(what)
        record(0)
        if transport is not None:
            transport.abort()
            for _ in range(3):
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ handlers

    async def _init(self, body: Any, scope: dict[str, Any], send: Any,
                    record: Callable[[int], None]) -> None:
        if not isinstance(body, dict):
            raise _HTTPError(400, "Expected a JSON object.")
        tag, job_type = body.get("tag", "default"), body.get("job_type")
        if not isinstance(tag, str) or not tag:
            raise _HTTPError(400, "tag must be a non-empty string")
        if job_type != "EXECUTE":
            raise _HTTPError(400, f"the fake runs EXECUTE jobs only, not {job_type!r}")
        if not isinstance(body.get("use_packing", False), bool):
            raise _HTTPError(400, "use_packing must be a boolean")
        cluster, system = body.get("simulator_cluster"), body.get("qpu_system_name")
        k = self.knobs
        if (cluster is None) == (system is None):
            raise _HTTPError(400, "give exactly one of simulator_cluster, qpu_system_name")
        if cluster is not None and cluster not in k.clusters:
            raise _HTTPError(400, f"unknown simulator cluster {cluster!r}")
        if system is not None and system not in k.qpu_systems:
            raise _HTTPError(400, f"unknown QPU system {system!r}")
        with self._lock:
            job = FakeJob(id=str(uuid.uuid4()), seq=len(self.jobs), tag=tag,
                          target={"simulator_cluster": cluster} if cluster
                          else {"qpu_system_name": system}, created_at=time.time())
            self.jobs[job.id] = job
            self.inits_by_tag[tag] += 1
            drop = k.drop_init_responses != 0
            if k.drop_init_responses > 0:
                k.drop_init_responses -= 1
            stall = 0.0
            if not drop and k.stall_init_seconds > 0:
                stall = k.stall_init_seconds
                if k.stall_init_count is not None:
                    k.stall_init_count -= 1
                    if k.stall_init_count <= 0:
                        k.stall_init_seconds, k.stall_init_count = 0.0, None
        if drop:
            await self._drop(scope, record, f"init {job.id}")
            return
        if stall:
            await self._stall(stall)
        await _json(send, 201, {"job_id": job.id})

    async def _stall(self, seconds: float) -> None:
        wake = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self.stalling += 1
            self._stalls.add(wake)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake[1].wait(), seconds)
        finally:
            with self._lock:
                self.stalling -= 1
                self._stalls.discard(wake)

    async def _add(self, job_id: str, body: Any, size: int, scope: dict[str, Any],
                   send: Any, record: Callable[[int], None]) -> None:
        if not isinstance(body, dict):
            raise _HTTPError(400, "Expected a JSON object.")
        circuits, mode = body.get("circuits"), body.get("mode")
        finalized, shots = body.get("finalized"), body.get("shots")
        if mode != "append":
            raise _HTTPError(400, f"mode must be 'append', not {mode!r}")
        if finalized not in ("true", "false"):  # divi sends strings, not booleans
            raise _HTTPError(400, f'finalized must be the string "true" or "false", '
                                  f"not {finalized!r}")
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise _HTTPError(400, f"shots must be a positive integer, not {shots!r}")
        if not isinstance(circuits, dict) or not circuits:
            raise _HTTPError(400, "circuits must be a non-empty object")
        decoded = {}
        for label, data in circuits.items():
            try:
                source = gzip.decompress(base64.b64decode(data, validate=True)).decode()
            except (binascii.Error, ValueError, TypeError, OSError, EOFError) as exc:
                raise _HTTPError(400, f"circuit {label!r} is not base64(gzip(QASM)): "
                                      f"{exc}") from None
            if not _QASM2.match(_COMMENTS.sub(" ", source)):
                raise _HTTPError(400, f"circuit {label!r}: only OpenQASM 2.0 is supported")
            if creg_bits(source) < 1:
                raise _HTTPError(400, f"circuit {label!r} declares no classical bits")
            decoded[label] = source
        k = self.knobs
        with self._lock:
            job = self._job(job_id)
            index = len(job.fragments)
            stall = 0.0
            if k.stall_add_seconds > 0 and k.stall_add_fragment in (None, index) \
                    and (k.stall_add_count is None or k.stall_add_count > 0):
                stall = k.stall_add_seconds
                if k.stall_add_count is not None:
                    k.stall_add_count -= 1
        if stall and k.stall_add_when == "before":
            await self._stall(stall)
        with self._lock:
            if job.canceled_at is not None:
                raise _HTTPError(409, "the job was cancelled", "error")
            if job.finalized_at is not None:
                raise _HTTPError(400, "the job is already finalized")
            if job.shots is not None and job.shots != shots:
                raise _HTTPError(400, f"shots {shots} differs from the job's {job.shots}")
            twice = sorted(set(decoded) & set(job.circuits))
            if twice:
                raise _HTTPError(400, f"circuit label(s) already added: {twice}")
            job.shots = shots
            job.circuits.update(decoded)
            job.fragments.append(size)
            if finalized == "true":
                self._finalize(job, time.time())
            drop = k.drop_add_responses > 0 and k.drop_add_fragment in (None, index)
            if drop:
                k.drop_add_responses -= 1
        if drop:
            await self._drop(scope, record, f"add_circuits {job.id}#{index}")
            return
        if stall and k.stall_add_when == "after":
            await self._stall(stall)
        await _json(send, 200, {"job_id": job.id, "circuits_added": len(decoded),
                                "finalized": finalized == "true"})

    def _finalize(self, job: FakeJob, now: float) -> None:
        k, rng = self.knobs, self._rng
        duration = (rng.uniform(*k.duration) if isinstance(k.duration, tuple)
                    else float(k.duration))
        f_pending, f_scheduled = k.phase_split
        job.finalized_at = now
        job.scheduled_at = now + f_pending * duration
        queued_until = now + (f_pending + f_scheduled) * duration
        extra = 0.0
        if k.unknown_rate > 0 and rng.random() < k.unknown_rate:
            job.unknown_at, job.unknown_status = queued_until, k.unknown_status
            extra = k.unknown_seconds
        job.running_at = queued_until + extra
        job.ends_at = now + duration + extra
        if k.failure_rate > 0 and rng.random() < k.failure_rate:
            job.outcome = k.failure_status

    def _results(self, job_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        try:
            limit = int(query.get("limit", "100"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise _HTTPError(400, "limit and offset must be integers") from None
        if limit < 1 or offset < 0:
            raise _HTTPError(400, "limit must be >= 1 and offset >= 0")
        k = self.knobs
        with self._lock:
            job = self._job(job_id)
            if job.status_at(time.time()) != "COMPLETED":
                raise _HTTPError(400, "Job results not available: the job has not completed")
            labels = list(job.circuits)
            size = min(limit, k.max_page)
            page = labels[offset:offset + size]
            results = [{"label": label, "results": self._histogram(job, label, offset + i)}
                       for i, label in enumerate(page)]
        base = f"{self.base_url}/job/{job_id}/resultsV2/?limit={limit}"
        more = offset + len(page) < len(labels)
        return {"count": len(labels),
                "next": f"{base}&offset={offset + len(page)}" if more else None,
                "previous": f"{base}&offset={max(0, offset - size)}" if offset else None,
                "results": results}

    def _histogram(self, job: FakeJob, label: str, position: int) -> Any:
        bits = creg_bits(job.circuits[label])
        counts = planted_counts(job.id, label, job.shots or 0, bits)
        encoding = self.knobs.encoding
        if encoding == "mixed":
            encoding = ("dict", "qh1", "qh2")[position % 3]
        if encoding == "qh1" and bits > 255:
            encoding = "qh2"
        how = self.knobs.corrupt.get(label)
        if how is not None:
            return corrupt_envelope(counts, bits, 2 if encoding == "qh2" or bits > 255 else 1,
                                    how)
        if encoding == "dict":
            return bitstrings(counts, bits)
        return qh_envelope(counts, bits, 1 if encoding == "qh1" else 2)

    async def _cancel(self, job_id: str, send: Any) -> None:
        with self._lock:
            job = self._job(job_id)
            now = time.time()
            if job.status_at(now) in TERMINAL:
                raise _HTTPError(409, "Can only cancel a PENDING or RUNNING job", "error")
            job.canceled_at = now
            answer = {"status": "cancelled", "job_id": job.id,
                      "circuits_cancelled": len(job.circuits)}
        await _json(send, 200, answer)


# --------------------------------------------------------------------------- ASGI I/O

def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _HTTPError(400, f"JSON parse error - {exc}") from None


async def _drain(receive: Any, limit: int) -> bytes | None:
    """The request body, or None if it exceeds ``limit`` (read to the end regardless, so
    the client gets to read the answer)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit and chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return None if size > limit else b"".join(chunks)


async def _json(send: Any, status: int, payload: Any,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})
