"""``qjobd.divi.QjobdBackend``: run unmodified divi programs through qjobd.

A divi (``qoro-divi`` 0.15) circuit runner whose every ``submit_circuits`` call is one
qjobd batch (or a few: see *Shots*), so the daemon stores the circuits before it answers,
submits them to the configured backend (local simulator, IonQ, Qoro, a plugin), rides
out its own restarts and keeps the results. It is asynchronous in divi's sense
(``is_async`` is True) and satisfies ``divi.backends.AsyncJobBackend``::

    from divi.qprog import QAOA
    from qjobd.divi import QjobdBackend

    backend = QjobdBackend("local", shots=1000, run_key="maxcut-2026-05-01")
    QAOA(problem, optimizer=optimizer, max_iterations=10, backend=backend).run()

``QjobdBackend(backend="local", shots=1000, socket=None, run_key=None, **options)``:
``backend`` is the name of a backend in the daemon's config, ``socket`` the daemon's
socket (default: found as ``qjobctl`` finds it), ``options`` the qjobd backend's batch
options (e.g. ``seed_simulator=7`` on a local backend).

The divi contract, as this runner keeps it:

- labels: divi's labels (``ham:0/param_set:0/obs_group:0``) are the batch's circuit
  labels, unchanged; results come back under exactly the labels sent (a missing or extra
  label is an error, never a silent gap).
- counts: bitstrings in Qiskit's order (highest classical bit leftmost), as divi
  expects and as qjobd returns them for every backend.
- shots: ``backend.shots`` is the shots each circuit runs with (divi divides counts by
  it); every result is checked to add up to the shots its batch ran.
- ``poll_job_status(..., loop_until_complete=True)`` waits on qjobd's long-poll
  (``GET /v1/batches/{id}/wait``): the daemon answers the moment the batch ends. One
  long-poll lasts at most ``wait_chunk`` seconds (1 s) so that divi's cancellation
  event is seen promptly; a set event raises ``divi.exceptions.ExecutionCancelledError``
  (a completed batch wins the race). While the daemon cannot be reached (a restart) or
  answers 503, every call retries with backoff for ``reconnect_for`` seconds (60).
- a batch that ends ``failed``, ``canceled`` (not by the caller) or ``timed_out``
  raises divi's job error family: ``JobFailedError``, ``JobCancelledError``,
  ``JobTimedOutError`` (``QoroJobError`` subclasses), chained to qjobd's
  ``BatchFailed`` and noting the jobs' errors.
- ``cancel_job`` cancels the batch; it is idempotent (a finished batch is left as is).

Not paying twice (``run_key``)
------------------------------
divi keeps no job ids: a program killed mid-run and started again (from the start, or
from a divi checkpoint) submits its circuits again. With a ``run_key`` it does not pay
for them again. Each ``submit_circuits`` call is sent with an ``Idempotency-Key``
derived from

    (run_key, a hash of the call's content, how many times that same content was
     already submitted by this runner)

where the content is the backend name, the circuits (labels and OpenQASM, in order),
the shots of each circuit, the options and ``batch_timeout``. The daemon answers a key
it has seen with the batch it stored under it instead of creating another, so a rerun
with the same ``run_key`` gets back the batches (running or finished) of every call
the killed run made, and only pays for work that was never submitted. Counting
occurrences keeps intent intact: a call whose identical content is sent a second time on
purpose (the same circuits at the same parameters) gets a new key and runs again, as it
would without qjobd, while the rerun's second identical call maps onto the first run's
second batch.

Use one ``run_key`` per logical run (for instance the experiment's name and date), the
same one when rerunning it, and a new one for a fresh run. What follows from the design:

- A rerun reuses batches only while it sends what the first run sent: a program that
  draws unseeded random numbers (initial parameters, a stochastic optimizer) sends other
  circuits and pays for them. Seed the program (``seed=...``) to replay it.
- A ``ProgramEnsemble`` (partitioning workflows, sweeps) runs its programs in threads
  and merges their calls as they arrive, so the calls of a rerun are cut differently
  and are paid for again: run keys save reruns of single programs.
- A rerun from a checkpoint reuses the calls it repeats; if it resumes past an identical
  call that the first run sent twice, its first copy maps onto the first run's first
  batch (the same content, the same results, not a fresh sample).
- A reused batch that ended ``failed``, ``canceled`` or ``timed_out`` is not reused:
  the call is submitted again under a fresh key (the key plus ``/retry-N``), so that
  rerunning a program that was interrupted with Ctrl+C (divi then cancels its batch) or
  that hit a failure retries the work instead of failing again.
- The daemon keeps a key as long as it keeps the batch: a batch deleted by retention
  (``[daemon] retention_days``) is paid for again by a rerun.
- Without a ``run_key`` each runner instance is its own run (a random key): a submit
  retried after a daemon restart is still never created twice.

Shots
-----
One qjobd batch has one shot count. A call with divi's per-circuit ``shot_groups``
(shot allocation, an adaptive shot budget) becomes one batch per distinct shot count,
and a call with more than ``max_batch_circuits`` circuits (10,000: the daemon's default
``max_circuits``) several batches; the ``ExecutionResult``'s ``job_id`` is then their
ids joined with ``+``. Expectation-value mode (``ham_ops``) is not offered:
``supports_expval`` is False, so divi measures and sends counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from threading import Event
from types import TracebackType
from typing import Any, Self, TypeVar

from divi.backends import (
    CircuitRunner,
    ExecutionResult,
    JobCancelledError,
    JobFailedError,
    JobStatus,
    JobTimedOutError,
    QoroJobError,
    normalise_circuit_batch,
)
from divi.exceptions import ExecutionCancelledError

from qjobd.client import (
    ApiError,
    Batch,
    BatchFailed,
    BatchTimeout,
    Client,
    DaemonUnreachable,
    Results,
)

__all__ = ["QjobdBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: qjobd batch state -> divi's job status
STATUS_OF: Mapping[str, JobStatus] = {
    "queued": JobStatus.PENDING,
    "submitting": JobStatus.PENDING,
    "submitted": JobStatus.SCHEDULED,
    "running": JobStatus.RUNNING,
    "completed": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
    "canceled": JobStatus.CANCELLED,
    "timed_out": JobStatus.TIMED_OUT,
}
#: a batch that ended this way raises this divi error
ERROR_OF: Mapping[str, type[QoroJobError]] = {
    "failed": JobFailedError,
    "canceled": JobCancelledError,
    "timed_out": JobTimedOutError,
}
#: how advanced each state is, for the status of a call made of several batches
_PROGRESS = {state: n for n, state in enumerate(
    ("queued", "submitting", "submitted", "running", "completed"))}
#: separates the batch ids of a call sent as several batches, in ``job_id``
JOB_ID_SEPARATOR = "+"
#: daemon answers that mean "not now": retried like an unreachable daemon
_TRANSIENT_STATUSES = frozenset({503})
_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 2.0
#: the version of the key derivation, part of every key
_KEY_SCHEME = "divi1"


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, DaemonUnreachable) or (
        isinstance(exc, ApiError) and exc.status in _TRANSIENT_STATUSES)


class QjobdBackend(CircuitRunner):
    """A divi circuit runner that sends each call to qjobd as a batch (module docs).

    ``backend``: a backend name of the daemon's config. ``shots``: shots per circuit.
    ``socket``: the daemon's socket (default: as ``qjobctl`` finds it). ``run_key``:
    names the run, so that a rerun does not pay again for what it already submitted.
    ``options``: the qjobd backend's batch options.
    """

    #: the longest single long-poll while waiting: bounds how late a set cancellation
    #: event is noticed (the daemon still answers the moment the batch ends)
    wait_chunk: float = 1.0
    #: how long a daemon that cannot be reached (restarting) is waited for, per call
    reconnect_for: float = 60.0
    #: most circuits in one qjobd batch; a larger call is split into several
    max_batch_circuits: int = 10_000
    #: each batch's own time limit in seconds (it then ends ``timed_out`` and divi gets
    #: JobTimedOutError); None: no limit
    batch_timeout: float | None = None
    #: divi's progress display reads it: polling has no attempt limit
    max_retries: int | None = None

    def __init__(self, backend: str = "local", shots: int = 1000,
                 socket: str | None = None, run_key: str | None = None,
                 **options: Any) -> None:
        super().__init__(shots=shots)
        if not isinstance(backend, str) or not backend:
            raise ValueError("backend must be the name of a backend of the daemon's config")
        if run_key is not None and (not isinstance(run_key, str) or not run_key):
            raise ValueError("run_key must be a non-empty string")
        self.backend = backend
        self.socket = socket
        self.run_key = run_key
        self.options: dict[str, Any] = dict(options)
        # The run's identity in every key: the caller's run_key, or this instance's own.
        self._run = run_key if run_key is not None else f"instance:{uuid.uuid4()}"
        self._run_tag = hashlib.sha256(self._run.encode()).hexdigest()[:20]
        self._sent: Counter[str] = Counter()
        self._labels: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[Client] = []
        # a runner dropped without close() still closes its connections
        self._finalizer = weakref.finalize(self, _close_clients, self._clients)

    def __repr__(self) -> str:
        return (f"QjobdBackend(backend={self.backend!r}, shots={self.shots}, "
                f"run_key={self.run_key!r})")

    # -- divi's CircuitRunner properties ---------------------------------------------

    @property
    def supports_expval(self) -> bool:
        """qjobd samples: divi measures and computes expectation values from counts."""
        return False

    @property
    def is_async(self) -> bool:
        """A call returns a job id (the batch id) to poll, not results."""
        return True

    @property
    def resolves_parameters(self) -> bool:
        """Circuits arrive bound: qjobd batches carry plain OpenQASM."""
        return False

    def set_seed(self, seed: int) -> None:
        """Seed the simulation: the ``seed_simulator`` batch option of a local backend."""
        self.options["seed_simulator"] = int(seed)

    # -- the connection --------------------------------------------------------------

    def _client(self) -> Client:
        """This thread's client (divi runs programs of an ensemble in threads)."""
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = Client(self.socket, reconnect_for=self.reconnect_for)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the connections to the daemon (the runner reconnects if used again)."""
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        self._local = threading.local()
        _close_clients(clients)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _retrying(self, call: Callable[[Client], T],
                  cancellation_event: Event | None = None) -> T:
        """``call(client)``, sent again while the daemon is unreachable or answers 503,
        with backoff, for up to ``reconnect_for`` seconds (a daemon restart)."""
        outage_since: float | None = None
        delay = _RETRY_FIRST_DELAY
        while True:
            try:
                return call(self._client())
            except (DaemonUnreachable, ApiError) as exc:
                if not _transient(exc):
                    raise
                now = time.monotonic()
                outage_since = now if outage_since is None else outage_since
                if now - outage_since >= self.reconnect_for:
                    raise
                log.debug("qjobd not reachable (%s); retrying", exc)
                pause = delay * (0.5 + random.random() / 2)
                if cancellation_event is not None:
                    if cancellation_event.wait(pause):
                        raise ExecutionCancelledError(
                            "cancelled while waiting for qjobd to come back") from exc
                else:
                    time.sleep(pause)
                delay = min(delay * 2, _RETRY_MAX_DELAY)

    # -- submitting ------------------------------------------------------------------

    def submit_circuits(self, payloads: Any, *, cancellation_event: Event | None = None,
                        ham_ops: str | None = None,
                        circuit_ham_map: Sequence[Sequence[int]] | None = None,
                        shot_groups: Sequence[Sequence[int]] | None = None,
                        **kwargs: Any) -> ExecutionResult:
        """Store the circuits in qjobd as one batch (or a few); a handle to poll.

        ``payloads``: divi's bound payloads, or a label -> OpenQASM (or
        ``QuantumCircuit``) mapping. ``shot_groups``: ``[start, end, shots]`` ranges
        over the circuits, overriding ``shots``. Raises ExecutionCancelledError if
        ``cancellation_event`` is already set, ValueError for ``ham_ops``.
        """
        self._reject_unknown_options(kwargs)
        if cancellation_event is not None and cancellation_event.is_set():
            raise ExecutionCancelledError("qjobd batch cancelled before dispatch")
        if ham_ops is not None or circuit_ham_map is not None:
            raise ValueError("qjobd backends sample (supports_expval is False): "
                             "ham_ops is not supported")
        circuits = normalise_circuit_batch(payloads)
        if not circuits:
            return ExecutionResult(results=[])
        self._record_qasm_depths(circuits.values())
        shots = self._shots_per_circuit(len(circuits), shot_groups)
        base_key = self._next_key(circuits, shots)
        parts = self._parts(list(circuits), shots)
        batches = []
        for n, (labels, part_shots) in enumerate(parts):
            key = base_key if len(parts) == 1 else f"{base_key}/part-{n}"
            batches.append(self._submit_part({label: circuits[label] for label in labels},
                                             part_shots, key, cancellation_event))
        job_id = JOB_ID_SEPARATOR.join(batch.id for batch in batches)
        with self._lock:
            self._labels[job_id] = tuple(circuits)
        log.debug("divi call sent as qjobd batch(es) %s (key %s)", job_id, base_key)
        return ExecutionResult(job_id=job_id,
                               backend_jobs=sum(max(1, len(b.jobs)) for b in batches))

    def _shots_per_circuit(self, n: int, shot_groups: Sequence[Sequence[int]] | None
                           ) -> list[int]:
        if shot_groups is None:
            return [self.shots] * n
        shots: list[int | None] = [None] * n
        for group in shot_groups:
            start, end, count = (int(v) for v in group)
            if not (0 <= start < end <= n) or count <= 0:
                raise ValueError(f"shot_groups: bad range {list(group)} for {n} circuits")
            for i in range(start, end):
                if shots[i] is not None:
                    raise ValueError(f"shot_groups: circuit {i} is in two ranges")
                shots[i] = count
        if any(s is None for s in shots):
            missing = next(i for i, s in enumerate(shots) if s is None)
            raise ValueError(f"shot_groups: circuit {missing} is in no range")
        return [s for s in shots if s is not None]

    def _parts(self, labels: list[str], shots: list[int]) -> list[tuple[list[str], int]]:
        """The batches of one call: one per distinct shot count (first-seen order), each
        cut into pieces of at most ``max_batch_circuits`` circuits."""
        by_shots: dict[int, list[str]] = {}
        for label, count in zip(labels, shots, strict=True):
            by_shots.setdefault(count, []).append(label)
        size = max(1, int(self.max_batch_circuits))
        return [(group[i:i + size], count) for count, group in by_shots.items()
                for i in range(0, len(group), size)]

    def _next_key(self, circuits: Mapping[str, str], shots: list[int]) -> str:
        """The call's Idempotency-Key: the run, the content's hash, and how many times
        this runner already sent that same content."""
        content = json.dumps({"backend": self.backend, "circuits": list(circuits.items()),
                              "shots": shots, "options": self.options,
                              "timeout": self.batch_timeout},
                             sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(content.encode()).hexdigest()[:32]
        with self._lock:
            seen = self._sent[digest]
            self._sent[digest] += 1
        return f"{_KEY_SCHEME}/{self._run_tag}/{digest}/{seen}"

    def _submit_part(self, circuits: Mapping[str, str], shots: int, key: str,
                     cancellation_event: Event | None) -> Batch:
        """Submit one batch under ``key``; a batch the key already names is reused
        unless it ended without completing (then ``key/retry-N``, the next free one)."""
        tags = {"toolkit": "divi"}
        if self.run_key is not None and len(self.run_key) <= 500:
            tags["divi_run_key"] = self.run_key
        attempt_key = key
        for attempt in range(1, 1000):
            batch = self._retrying(lambda c, k=attempt_key: c.submit(
                circuits, self.backend, shots=shots, name="divi", tags=tags,
                timeout=self.batch_timeout, options=self.options or None,
                idempotency_key=k), cancellation_event)
            if not batch.terminal or batch.completed:
                return batch
            log.info("qjobd batch %s under key %s ended %s: submitting again",
                     batch.id, attempt_key, batch.state)
            attempt_key = f"{key}/retry-{attempt}"
        raise RuntimeError(f"key {key}: every retry key names a batch that did not complete")

    # -- waiting ---------------------------------------------------------------------

    @staticmethod
    def batch_ids(execution_result: ExecutionResult) -> list[str]:
        """The qjobd batch ids behind an ``ExecutionResult`` of this runner."""
        if execution_result.job_id is None:
            raise ValueError("ExecutionResult has no job_id")
        return execution_result.job_id.split(JOB_ID_SEPARATOR)

    def poll_job_status(self, execution_result: ExecutionResult,
                        loop_until_complete: bool = False, verbose: bool = True,
                        progress_callback: Callable[[int, str], None] | None = None,
                        cancellation_event: Event | None = None) -> JobStatus:
        """The batch's status now; with ``loop_until_complete``, wait (long-polls) until
        it completed: ``COMPLETED``, or divi's job error if it ended otherwise, or
        ExecutionCancelledError once ``cancellation_event`` is set."""
        ids = self.batch_ids(execution_result)
        if not loop_until_complete:
            batches = [self._retrying(lambda c, i=i: c.get(i)) for i in ids]
            return self._status(batches)
        scope: AbstractContextManager[Event]
        if cancellation_event is None:
            scope = _auto_cancellation(self, execution_result)
        else:
            scope = nullcontext(cancellation_event)
        with scope as event:
            return self._wait_all(ids, event, verbose, progress_callback)

    def _wait_all(self, ids: list[str], event: Event, verbose: bool,
                  progress_callback: Callable[[int, str], None] | None) -> JobStatus:
        cancelled = f"waiting cancelled for qjobd batch {JOB_ID_SEPARATOR.join(ids)}"
        pending = list(ids)
        attempt = 0
        last: str | None = None
        while pending:
            if event.is_set():
                raise ExecutionCancelledError(cancelled)
            attempt += 1
            batch_id = pending[0]
            try:
                batch = self._retrying(lambda c, i=batch_id: c.wait(
                    i, timeout=self.wait_chunk, raise_on_failure=False), event)
            except BatchTimeout as exc:
                state = exc.last_state
            else:
                state = batch.state
                if batch.completed:
                    pending.pop(0)
                    continue
                # completion wins the race with a cancellation; nothing else does
                if event.is_set():
                    raise ExecutionCancelledError(cancelled)
                raise _job_error(batch)
            status = STATUS_OF.get(state, JobStatus.PENDING).value
            if progress_callback is not None:
                progress_callback(attempt, status)
            elif verbose and state != last:
                log.info("qjobd batch %s is %s", batch_id, state)
            last = state
        return JobStatus.COMPLETED

    @staticmethod
    def _status(batches: Sequence[Batch]) -> JobStatus:
        """One status for a call of several batches: an ending that is not completion
        if any has one, else the least advanced."""
        for batch in batches:
            if batch.state in ERROR_OF:
                return STATUS_OF[batch.state]
        least = min(batches, key=lambda b: _PROGRESS.get(b.state, 0))
        return STATUS_OF.get(least.state, JobStatus.PENDING)

    # -- results ---------------------------------------------------------------------

    def get_job_results(self, execution_result: ExecutionResult) -> ExecutionResult:
        """The call's counts as divi takes them: ``[{"label", "results", "metadata"}]``
        in the order the circuits were sent, every label exactly once, each result's
        counts adding up to the shots its batch ran."""
        by_label: dict[str, dict[str, Any]] = {}
        for batch_id in self.batch_ids(execution_result):
            batch = self._retrying(lambda c, i=batch_id: c.get(i))
            if not batch.terminal:
                raise RuntimeError(f"qjobd batch {batch.id} is {batch.state}: results are "
                                   "served once it completed (poll_job_status first)")
            if not batch.completed:
                raise _job_error(batch)
            results: Results = self._retrying(lambda c, i=batch_id: c.results(i))
            sent = [label for job in batch.jobs for label in job.labels]
            missing = [label for label in sent if label not in results]
            extra = [label for label in results if label not in set(sent)]
            if missing or extra:
                raise RuntimeError(f"qjobd batch {batch.id}: results do not match the "
                                   f"circuits sent (missing {missing[:5]}, "
                                   f"unexpected {extra[:5]})")
            for label in sent:
                result = results[label]
                total = sum(result.counts.values())
                if batch.shots is not None and not result.shots == total == batch.shots:
                    raise RuntimeError(
                        f"qjobd batch {batch.id}, circuit {label!r}: {total} counts for "
                        f"{result.shots} shots, but the batch ran {batch.shots}")
                by_label[label] = {
                    "label": label, "results": dict(result.counts),
                    "metadata": {"qjobd_batch": batch.id, "qjobd_job": result.job_id,
                                 "shots": result.shots}}
        with self._lock:
            order = self._labels.get(execution_result.job_id or "")
        if order is not None and set(order) != set(by_label):
            raise RuntimeError(f"qjobd batch {execution_result.job_id}: its circuits are "
                               "not the ones this runner sent")
        labels = order if order is not None else tuple(by_label)
        return execution_result.with_results([by_label[label] for label in labels])

    # -- cancelling ------------------------------------------------------------------

    def cancel_job(self, execution_result: ExecutionResult) -> list[Batch]:
        """Cancel the call's batches; idempotent (a finished batch stays as it is).
        The batches as the daemon shows them then."""
        return [self._retrying(lambda c, i=batch_id: c.cancel(i))
                for batch_id in self.batch_ids(execution_result)]


def _close_clients(clients: list[Client]) -> None:
    for client in clients:
        client.close()


def _job_error(batch: Batch) -> QoroJobError:
    """divi's error for a batch that ended without completing, chained to qjobd's."""
    failed = BatchFailed(batch)
    error = ERROR_OF.get(batch.state, JobFailedError)(batch.id)
    error.add_note(f"qjobd: {failed}")
    error.__cause__ = failed
    error.__suppress_context__ = True
    return error


@contextlib.contextmanager
def _auto_cancellation(backend: QjobdBackend, execution_result: ExecutionResult
                       ) -> Iterator[Event]:
    """divi's own scope for a waiting caller that brought no cancellation event: Ctrl+C
    sets the event, and the batch is cancelled before ExecutionCancelledError goes on."""
    try:
        from divi.backends._cancellation import _auto_cancellation_scope
    except ImportError:  # pragma: no cover - a divi without the private helper
        yield Event()
        return
    with _auto_cancellation_scope(backend, execution_result) as event:
        yield event
