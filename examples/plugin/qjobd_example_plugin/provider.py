"""Toy Cloud: a tiny quantum provider over HTTP, so that the example plugin runs anywhere.

It simulates small OpenQASM 2 circuits for real (a state vector, at most 12 qubits,
gates ``h``, ``x``, ``cx``, measurements last) and answers a small JSON API under
``/v1``, with a bearer key::

    POST /v1/jobs                {"key", "shots", "circuits": {label: source}} -> 201 {"id"}
    GET  /v1/jobs?ids=A&ids=B    {"jobs": [{"id", "status", "error"}]}: unknown ids left out
    GET  /v1/jobs?key=K          the same, for the jobs made with submission key K
    GET  /v1/jobs/ID/counts?page=N   {"counts": {label: {bitstring: n}}, "next_page"}
    POST /v1/jobs/ID/cancel      200; 409 once the job has ended; 404 if unknown

Statuses: ``waiting``, ``running``, ``done``, ``error``, ``cancelled``. Errors are
``{"error": message}``. A job waits for a fifth of ``duration`` seconds and runs for
the rest. For tests it keeps a request log and takes faults: :meth:`ToyCloud.fail_next`
(answer the next request with an HTTP error) and :meth:`ToyCloud.drop_next_create`
(make the job, then drop the connection unanswered).

Built on :class:`qjobd.testing.FakeServer`, which serves it in a thread
(``with ToyCloud() as cloud:``) or in a process of its own (``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import cmath
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from qjobd.testing.fake_server import FakeServer

__all__ = ["ToyCloud", "UnsupportedCircuit", "main", "simulate"]

MAX_QUBITS = 12
MAX_SHOTS = 10_000
#: labels per page of counts
PAGE_SIZE = 2
_STATEMENT = re.compile(r"//[^\n]*")


class UnsupportedCircuit(ValueError):
    """The circuit uses something Toy Cloud does not simulate."""


def simulate(source: str, shots: int, seed: int | str) -> dict[str, int]:
    """Counts of an OpenQASM 2 circuit, keyed Qiskit's way (classical bit 0 rightmost)."""
    qubits, clbits, gates, measures = _parse(source)
    state = [0j] * (1 << qubits)
    state[0] = 1 + 0j
    for name, targets in gates:
        _apply(state, name, targets)
    weights = [abs(a) ** 2 for a in state]
    outcomes = random.Random(seed).choices(range(len(state)), weights=weights, k=shots)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        bits = ["0"] * clbits
        for qubit, clbit in measures:
            bits[clbits - 1 - clbit] = str((outcome >> qubit) & 1)
        key = "".join(bits)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _parse(source: str) -> tuple[int, int, list[tuple[str, list[int]]], list[tuple[int, int]]]:
    qubits = clbits = 0
    gates: list[tuple[str, list[int]]] = []
    measures: list[tuple[int, int]] = []
    for raw in _STATEMENT.sub("", source).split(";"):
        statement = " ".join(raw.split())
        if not statement or statement.startswith(("OPENQASM 2", "include ")):
            continue
        if m := re.fullmatch(r"qreg q\[(\d+)\]", statement):
            qubits = int(m.group(1))
        elif m := re.fullmatch(r"creg c\[(\d+)\]", statement):
            clbits = int(m.group(1))
        elif statement == "measure q -> c":
            measures += [(i, i) for i in range(qubits)]
        elif m := re.fullmatch(r"measure q\[(\d+)\] -> c\[(\d+)\]", statement):
            measures.append((int(m.group(1)), int(m.group(2))))
        elif m := (re.fullmatch(r"(h|x) q\[(\d+)\]", statement)
                   or re.fullmatch(r"(cx) q\[(\d+)\], ?q\[(\d+)\]", statement)):
            if measures:
                raise UnsupportedCircuit("gates after a measurement are not simulated")
            gates.append((m.group(1), [int(g) for g in m.groups()[1:]]))
        else:
            raise UnsupportedCircuit(f"unsupported statement {statement!r} (Toy Cloud takes "
                                     "qreg q, creg c, h, x, cx and measure)")
    if not 1 <= qubits <= MAX_QUBITS:
        raise UnsupportedCircuit(f"a circuit needs 1 to {MAX_QUBITS} qubits in qreg q")
    used = [t for _, targets in gates for t in targets] + [q for q, _ in measures]
    if any(q >= qubits for q in used) or any(c >= clbits for _, c in measures):
        raise UnsupportedCircuit("a qubit or classical bit index is out of range")
    if not measures:
        raise UnsupportedCircuit("the circuit measures nothing")
    return qubits, clbits, gates, measures


def _apply(state: list[complex], name: str, targets: list[int]) -> None:
    if name == "h":
        bit = 1 << targets[0]
        root = 1 / cmath.sqrt(2)
        for i in range(len(state)):
            if not i & bit:
                a, b = state[i], state[i | bit]
                state[i], state[i | bit] = (a + b) * root, (a - b) * root
    elif name == "x":
        bit = 1 << targets[0]
        for i in range(len(state)):
            if not i & bit:
                state[i], state[i | bit] = state[i | bit], state[i]
    else:  # cx control, target
        control, target = 1 << targets[0], 1 << targets[1]
        for i in range(len(state)):
            if i & control and not i & target:
                state[i], state[i | target] = state[i | target], state[i]


@dataclass(eq=False)
class ToyJob:
    """One job, its outcome decided (and simulated) when it is made."""

    id: str
    key: str
    created_at: float
    duration: float
    counts: dict[str, dict[str, int]]
    cancelled_at: float | None = None

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if now >= self.created_at + self.duration:
            return "done"
        return "running" if now >= self.created_at + self.duration / 5 else "waiting"

    def ran(self) -> bool:
        """Whether it has run or will run (not cancelled while waiting)."""
        return self.cancelled_at is None or \
            self.cancelled_at >= self.created_at + self.duration / 5


class _Answer(Exception):
    """An error answer: ``{"error": message}`` with this status."""

    def __init__(self, status: int, message: str,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class ToyCloud(FakeServer):
    """Toy Cloud on 127.0.0.1 (``port`` 0: any free one). Public methods are thread-safe."""

    label = "Toy Cloud"

    def __init__(self, *, api_key: str = "toy-key", duration: float = 0.2,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        #: seconds from a job's creation to its end
        self.duration = duration
        self.jobs: dict[str, ToyJob] = {}
        #: (monotonic time, method, path, status) of every API request; status 0: dropped
        self.request_log: list[tuple[float, str, str, int]] = []
        self._faults: list[tuple[int, float | None]] = []
        self._drop_creates = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- what a test may do --------------------------------------------------------------

    def fail_next(self, status: int, retry_after: float | None = None) -> None:
        """Answer the next API request with ``status`` (and ``Retry-After``, if given)."""
        with self._lock:
            self._faults.append((status, retry_after))

    def drop_next_create(self) -> None:
        """Make the next create's job, then close the connection without an answer."""
        with self._lock:
            self._drop_creates += 1

    def finish_now(self, job_id: str) -> None:
        """End a job now (done), unless it has ended."""
        with self._lock:
            job = self.jobs[job_id]
            now = time.time()
            if job.status(now) in ("waiting", "running"):
                job.duration = now - job.created_at

    def jobs_with_key(self, key: str) -> list[str]:
        """The jobs made with this submission key that have run or will run."""
        with self._lock:
            return [job.id for job in self.jobs.values() if job.key == key and job.ran()]

    # -- the API --------------------------------------------------------------------------

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path, at = scope["method"], scope["path"], time.monotonic()

        def log(status: int) -> None:
            self.request_log.append((at, method, path, status))

        record, logged_send = self._recorder(log, send)
        try:
            body = await _read(receive)
            await self._route(scope, method, path, body, logged_send, record)
        except _Answer as answer:
            await _json(logged_send, answer.status, {"error": answer.message}, answer.headers)
        except Exception:
            record(500)
            raise
        finally:
            record(0)  # nothing was answered: the connection was dropped

    async def _route(self, scope: dict[str, Any], method: str, path: str, body: bytes,
                     send: Any, record: Callable[[int], None]) -> None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            status, retry_after = fault
            headers = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
            raise _Answer(status, "too many requests" if status == 429 else "injected failure",
                          headers)
        headers = dict(scope["headers"])
        if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.api_key}":
            raise _Answer(401, "unknown API key")
        parts = [p for p in path.split("/") if p]
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if parts[:2] != ["v1", "jobs"]:
            raise _Answer(404, "no such endpoint")
        if parts == ["v1", "jobs"] and method == "POST":
            await self._create(_json_body(body), scope, send, record)
        elif parts == ["v1", "jobs"] and method == "GET":
            await _json(send, 200, {"jobs": self._list(query)})
        elif len(parts) == 4 and parts[3] == "counts" and method == "GET":
            await _json(send, 200, self._counts(parts[2], dict(query)))
        elif len(parts) == 4 and parts[3] == "cancel" and method == "POST":
            await _json(send, 200, self._cancel(parts[2]))
        else:
            raise _Answer(404, "no such endpoint")

    async def _create(self, body: Any, scope: dict[str, Any], send: Any,
                      record: Callable[[int], None]) -> None:
        if not isinstance(body, dict):
            raise _Answer(400, "the body must be a JSON object")
        key, shots, circuits = body.get("key"), body.get("shots"), body.get("circuits")
        if not isinstance(key, str) or not key:
            raise _Answer(400, "key must be a non-empty string")
        if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= MAX_SHOTS:
            raise _Answer(400, f"shots must be an integer from 1 to {MAX_SHOTS}")
        if not isinstance(circuits, dict) or not circuits:
            raise _Answer(400, "circuits must be a non-empty object of label: source")
        job_id = str(uuid.uuid4())
        counts = {}
        for i, (label, source) in enumerate(circuits.items()):
            try:
                counts[label] = simulate(str(source), shots, seed=f"{job_id}/{i}")
            except UnsupportedCircuit as exc:
                raise _Answer(400, f"circuit {label!r}: {exc}") from None
        with self._lock:
            self.jobs[job_id] = ToyJob(job_id, key, time.time(), self.duration, counts)
            drop = self._drop_creates > 0
            if drop:
                self._drop_creates -= 1
        if drop:
            record(0)
            transport = self._transports.get(scope.get("client"))
            if transport is not None:
                transport.abort()
                await asyncio.sleep(0)
            return
        await _json(send, 201, {"id": job_id})

    def _list(self, query: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        ids = [v for k, v in query if k == "ids"]
        keys = [v for k, v in query if k == "key"]
        now = time.time()
        with self._lock:
            chosen = [self.jobs[i] for i in dict.fromkeys(ids) if i in self.jobs]
            if keys:
                chosen += [j for j in self.jobs.values() if j.key in keys]
            return [{"id": j.id, "status": j.status(now), "error": None} for j in chosen]

    def _job(self, job_id: str) -> ToyJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise _Answer(404, f"no job {job_id}")
        return job

    def _counts(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        page = int(query.get("page", "0")) if query.get("page", "0").isdigit() else -1
        with self._lock:
            job = self._job(job_id)
            if job.status(time.time()) != "done":
                raise _Answer(409, f"job {job_id} is not done")
            labels = list(job.counts)
        if page < 0 or page * PAGE_SIZE >= max(len(labels), 1):
            raise _Answer(400, "page out of range")
        chosen = labels[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        more = (page + 1) * PAGE_SIZE < len(labels)
        return {"counts": {label: job.counts[label] for label in chosen},
                "next_page": page + 1 if more else None}

    def _cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            now = time.time()
            if job.status(now) not in ("waiting", "running"):
                raise _Answer(409, f"job {job_id} has ended")
            job.cancelled_at = now
        return {"id": job_id, "status": "cancelled"}


async def _read(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return b"".join(chunks)


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise _Answer(400, "the body is not JSON") from None


async def _json(send: Any, status: int, payload: Any,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m qjobd_example_plugin.provider``: Toy Cloud until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m qjobd_example_plugin.provider",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="toy-key")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds each job takes (default 2)")
    args = parser.parse_args(argv)
    cloud = ToyCloud(api_key=args.api_key, duration=args.duration, port=args.port)
    print(f"Toy Cloud on http://127.0.0.1:{args.port}/v1 (key {args.api_key!r})", flush=True)
    cloud.serve_forever()


if __name__ == "__main__":
    main()
