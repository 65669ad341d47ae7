"""A local simulator presented like a remote provider: qiskit-aer in worker processes.

``submit`` queues the job and answers a fresh remote id at once; a worker process
takes queued jobs one at a time, in order. Simulation never happens in the daemon's
process: each worker is a fresh interpreter (``spawn``, since forking a process that
has threads is unsafe) that imports Aer once and then receives plain data (labels,
sources, shots, options) over a pipe, parses and simulates, and answers with counts.

Like any ``spawn`` user, a program that starts this backend from its main script must
guard that script with ``if __name__ == "__main__":`` (every worker re-imports it).

Jobs live in memory only (``durable=False``): a restarted daemon finds its old remote
ids unknown. Finished jobs are forgotten :data:`RETENTION` seconds after they finish.

A job's states: ``queued -> running -> completed | failed``, and ``queued | running ->
canceled``. Canceling a running job terminates its worker process, which is replaced.
The backend knows when a job ends, and says so (``when_terminal``): the daemon polls it
then, so a waiter wakes the moment the simulation is done, not at the next poll.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from qjobd.backends import _aer_cost, _aer_worker, qasm
from qjobd.backends.base import (
    Backend,
    Capabilities,
    Circuit,
    Counts,
    Grouping,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
)
from qjobd.backends.errors import ProtocolError, Rejected, Unavailable
from qjobd.errors import QjobdError

__all__ = ["DEFAULT_MAX_ESTIMATED_SECONDS", "METHODS", "RETENTION", "LocalBackend"]

log = logging.getLogger(__name__)

#: Aer simulation methods a batch may ask for (``options = {"method": ...}``); unitary
#: and superop cannot measure, tensor_network needs a GPU
METHODS = frozenset(
    {
        "automatic",
        "statevector",
        "density_matrix",
        "stabilizer",
        "extended_stabilizer",
        "matrix_product_state",
    }
)
#: seconds a finished job's status and counts are kept for the daemon to fetch
RETENTION = 3600.0

_CONFIG_KEYS = frozenset({"workers", "max_qubits", "max_estimated_seconds",
                          "seconds_per_amplitude_op"})
#: the widest circuit simulated unless max_qubits says otherwise (or memory is short)
DEFAULT_MAX_QUBITS = 24
#: a circuit whose simulation is estimated at more seconds than this is refused at
#: submission unless max_estimated_seconds says otherwise (backends/_aer_cost.py): 15
#: minutes of one worker, a fraction of an 18-qubit reset circuit's hour at 4,000 shots
DEFAULT_MAX_ESTIMATED_SECONDS = 900
#: a worker imports Qiskit and Aer before it is ready; a cold disk can make that slow
_READY_TIMEOUT = 120.0
#: how long a terminated worker gets to exit before it is killed
_EXIT_GRACE = 1.0

_T = TypeVar("_T")


class _WorkerStartError(QjobdError):
    """A worker process could not start or initialise."""


@dataclass(eq=False, slots=True)
class _Job:
    id: str
    task: _aer_worker.Task
    state: RemoteState = RemoteState.QUEUED
    error: str | None = None
    counts: dict[str, Counts] | None = None
    finished_at: float | None = None
    #: the worker running it, while it runs
    slot: _Slot | None = None
    #: done when the job ends (``when_terminal``), once the daemon asked for it
    ended: asyncio.Future[None] | None = None


@dataclass(eq=False, slots=True)
class _Slot:
    """One worker position; its process is replaced when it dies or is terminated."""

    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    ready: bool = False
    #: set when we terminated the process on purpose (a cancel, or shutdown)
    killed: bool = False


class LocalBackend(Backend):
    """qiskit-aer in a pool of worker processes.

    Config: ``workers`` (processes, default ``min(2, cpu_count)``), ``max_qubits``
    (widest circuit accepted; default 24, or fewer when a statevector that wide would not
    fit twice in each worker's share of the memory: :func:`memory_qubits`),
    ``max_estimated_seconds`` (a circuit whose simulation is estimated longer is refused
    at submission; default :data:`DEFAULT_MAX_ESTIMATED_SECONDS`, 0: no limit) and
    ``seconds_per_amplitude_op`` (the estimate's constant, for a machine faster or slower
    than the one it was measured on: ``bench/aer_cost_bench.py``). Batch options:
    ``seed_simulator`` (int) and ``method`` (one of :data:`METHODS`).
    """

    capabilities = Capabilities(
        grouping=Grouping.PER_CIRCUIT,
        batch_status=True,
        max_status_batch=10_000,
        lookup_by_key=False,
        durable=False,
        qasm_versions=frozenset({2, 3}),
        default_shots=1000,
        max_shots=1_000_000,
        max_qubits=24,
    )

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        unknown = sorted(set(config) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"backend {name!r}: unknown setting(s) {', '.join(unknown)}; "
                f"the local backend takes {', '.join(sorted(_CONFIG_KEYS))}"
            )
        cpus = os.cpu_count() or 1
        self.workers = _positive_int(name, config, "workers", min(2, cpus))
        memory = memory_qubits(self.workers)
        if "max_qubits" in config:
            self.max_qubits = _positive_int(name, config, "max_qubits", DEFAULT_MAX_QUBITS)
            why = f"[backends.{name}] max_qubits"
        elif memory < DEFAULT_MAX_QUBITS:
            self.max_qubits = memory
            why = (f"a statevector of {memory + 1} qubits would not fit twice in each of its "
                   f"{self.workers} workers' share of this machine's memory")
        else:
            self.max_qubits, why = DEFAULT_MAX_QUBITS, "its default"
        self.capabilities = replace(type(self).capabilities, max_qubits=self.max_qubits,
                                    max_qubits_reason=why,
                                    simulation_cost=_cost_model(name, config))
        # Aer's OpenMP threads per worker, so that the workers share the cores.
        self._threads = max(1, cpus // self.workers)
        self._jobs: dict[str, _Job] = {}
        #: (finished_at, id) in finishing order, for forgetting old jobs cheaply
        self._finished: collections.deque[tuple[float, str]] = collections.deque()
        self._queue: asyncio.Queue[_Job] | None = None
        self._slots: list[_Slot] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._joins: set[asyncio.Future[int | None]] = set()
        self._started = False
        self._closed = False
        #: why workers cannot be started; the backend is unusable once set
        self._broken: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker processes and wait until each has imported Aer."""
        if self._started:
            raise RuntimeError(f"backend {self.name!r} was already started")
        self._started = True
        self._queue = asyncio.Queue()
        self._slots = [_Slot(index) for index in range(self.workers)]
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in self._slots))
        except _WorkerStartError as exc:
            await self.aclose()
            raise Unavailable(f"backend {self.name!r}: {exc}") from exc
        except BaseException:
            await self.aclose()
            raise
        for slot in self._slots:
            task = asyncio.create_task(self._serve(slot), name=f"{self.name}-worker-{slot.index}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    async def aclose(self) -> None:
        """Terminate the workers; a running simulation is abandoned. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Terminate before cancelling: a cancelled task leaves its process behind.
        for slot in self._slots:
            self._terminate(slot)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._reap(slot) for slot in self._slots))
        await asyncio.gather(*self._joins, return_exceptions=True)

    # -- the protocol ------------------------------------------------------------------

    async def submit(self, request: SubmitRequest, *,
                     created: Callable[[str], Awaitable[None]] | None = None) -> str:
        self._check_usable()
        if isinstance(request.shots, bool) or not isinstance(request.shots, int):
            raise Rejected(f"shots must be an integer, not {request.shots!r}")
        if not 1 <= request.shots <= self.capabilities.max_shots:
            raise Rejected(f"shots must be in [1, {self.capabilities.max_shots}]")
        if not request.circuits:
            raise Rejected("the request has no circuits")
        labels = [circuit.label for circuit in request.circuits]
        if len(set(labels)) != len(labels):
            raise Rejected("circuit labels must be unique within a job")
        try:
            self.validate_options(request.options)
        except ValueError as exc:
            raise Rejected(str(exc)) from exc
        # Parsing is CPU work (about 1 ms per OpenQASM 3 circuit): keep it off the loop.
        await asyncio.to_thread(self._check_circuits, request.circuits)
        self._check_usable()
        assert self._queue is not None
        job = _Job(
            id=str(uuid.uuid4()),
            task=_aer_worker.Task(
                circuits=[(c.label, c.source) for c in request.circuits],
                shots=request.shots,
                options=dict(request.options),
            ),
        )
        self._forget_old()
        self._jobs[job.id] = job
        self._queue.put_nowait(job)
        return job.id

    async def status(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        self._forget_old()
        answer = {}
        for remote_id in remote_ids:
            job = self._jobs.get(remote_id)
            if job is not None:
                answer[remote_id] = RemoteStatus(
                    remote_id=remote_id, state=job.state, raw=job.state.value, error=job.error
                )
        return answer

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        job = self._jobs.get(remote_id)
        if job is None:
            raise Rejected(f"unknown job {remote_id!r}")
        if job.state in (RemoteState.QUEUED, RemoteState.RUNNING):
            raise Unavailable(f"job {remote_id!r} is {job.state.value}: no results yet")
        if job.state is not RemoteState.COMPLETED or job.counts is None:
            raise Rejected(f"job {remote_id!r} is {job.state.value}: it has no results")
        answer = {}
        for circuit in circuits:
            counts = job.counts.get(circuit.label)
            if counts is None:
                raise ProtocolError(f"job {remote_id!r} has no circuit {circuit.label!r}")
            if any(len(bits) != circuit.num_clbits for bits in counts):
                raise ProtocolError(
                    f"job {remote_id!r}: counts of {circuit.label!r} are not "
                    f"{circuit.num_clbits} bits wide"
                )
            answer[circuit.label] = dict(counts)
        return answer

    def when_terminal(self, remote_id: str) -> asyncio.Future[None] | None:
        """Done when the job ends: the daemon polls it then, not at its next poll."""
        job = self._jobs.get(remote_id)
        if job is None:
            return None
        if job.ended is None:
            job.ended = asyncio.get_running_loop().create_future()
            if job.state.terminal:
                job.ended.set_result(None)
        return job.ended

    async def cancel(self, remote_ids: Sequence[str]) -> None:
        for remote_id in remote_ids:
            job = self._jobs.get(remote_id)
            if job is None or job.state.terminal:
                continue
            slot = job.slot
            # A queued job stays in the queue, where its worker skips it.
            self._finish(job, RemoteState.CANCELED)
            if slot is not None:
                # The only way to stop Aer mid-simulation; the worker is replaced.
                self._terminate(slot)

    async def reconfigure(self, config: Mapping[str, Any]) -> None:
        """A reload (SIGHUP) applies new cost settings to the next submission; the others
        (workers, max_qubits) take a restart."""
        self.capabilities = replace(self.capabilities,
                                    simulation_cost=_cost_model(self.name, config))

    def validate_options(self, options: Mapping[str, Any]) -> None:
        for key, value in options.items():
            if key == "seed_simulator":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                    raise ValueError(
                        f"seed_simulator must be an integer in [0, 2**63), not {value!r}"
                    )
            elif key == "method":
                if value not in METHODS:
                    raise ValueError(
                        f"method must be one of {', '.join(sorted(METHODS))}; got {value!r}"
                    )
            else:
                raise ValueError(
                    f"backend {self.name!r} does not take option {key!r} "
                    "(it takes seed_simulator and method)"
                )

    def health(self) -> dict[str, Any]:
        states = collections.Counter(job.state for job in self._jobs.values())
        details: dict[str, Any] = {
            "workers": self.workers,
            "ready_workers": sum(1 for slot in self._slots if slot.ready),
            "queued": states[RemoteState.QUEUED],
            "running": states[RemoteState.RUNNING],
            "max_qubits": self.max_qubits,
        }
        if self._broken is not None:
            details["error"] = self._broken
        return details

    # -- submission checks -------------------------------------------------------------

    def _check_usable(self) -> None:
        if not self._started or self._closed:
            raise Unavailable(f"backend {self.name!r} is not running")
        if self._broken is not None:
            raise Unavailable(f"backend {self.name!r} cannot run jobs: {self._broken}")

    def _check_circuits(self, circuits: Sequence[Circuit]) -> None:
        for circuit in circuits:
            try:
                parsed = qasm.parse_circuit(circuit.label, circuit.source)
            except qasm.QasmError as exc:
                raise Rejected(str(exc)) from exc
            if parsed.num_qubits > self.max_qubits:
                raise Rejected(
                    f"circuit {circuit.label!r} uses {parsed.num_qubits} qubits; "
                    f"backend {self.name!r} simulates at most {self.max_qubits}"
                )
            # The counts' width comes from the source; a disagreement would be a daemon bug
            # that mislabels every result.
            if parsed.num_clbits != circuit.num_clbits:
                raise Rejected(
                    f"circuit {circuit.label!r} has {parsed.num_clbits} classical bits, "
                    f"not {circuit.num_clbits}"
                )

    # -- job bookkeeping ---------------------------------------------------------------

    def _finish(
        self,
        job: _Job,
        state: RemoteState,
        *,
        error: str | None = None,
        counts: dict[str, Counts] | None = None,
    ) -> None:
        assert not job.state.terminal, f"job {job.id} is already {job.state}"
        job.state, job.error, job.counts, job.slot = state, error, counts, None
        job.finished_at = time.monotonic()
        self._finished.append((job.finished_at, job.id))
        if job.ended is not None and not job.ended.done():
            job.ended.set_result(None)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - RETENTION
        while self._finished and self._finished[0][0] < horizon:
            _, job_id = self._finished.popleft()
            self._jobs.pop(job_id, None)

    # -- workers -----------------------------------------------------------------------

    async def _serve(self, slot: _Slot) -> None:
        """Feed one worker jobs from the queue; replace its process when it dies."""
        assert self._queue is not None
        while True:
            if slot.process is None:
                try:
                    await self._spawn(slot)
                except _WorkerStartError as exc:
                    self._break(str(exc))
                    return
            job = await self._queue.get()
            if job.state is not RemoteState.QUEUED:
                continue  # canceled while queued
            assert slot.process is not None
            if not slot.process.is_alive():
                # Died while idle (OOM killer...): not this job's fault.
                self._queue.put_nowait(job)
                await self._reap(slot)
                continue
            await self._run(slot, job)

    async def _run(self, slot: _Slot, job: _Job) -> None:
        assert slot.conn is not None
        job.state, job.slot = RemoteState.RUNNING, slot
        try:
            reply = await _in_thread(_exchange, slot.conn, job.task)
        except (EOFError, OSError):
            reply = None
        if slot.killed or reply is None:
            # Canceled (the result, if any, is discarded) or the worker died: either way
            # the process is gone and _serve starts another.
            exitcode = await self._reap(slot)
            if job.state is RemoteState.RUNNING:
                reason = _death(exitcode)
                log.warning("local backend %r: job %s: %s", self.name, job.id, reason)
                self._finish(job, RemoteState.FAILED, error=reason)
            return
        kind, payload = reply
        if kind == "done":
            self._finish(job, RemoteState.COMPLETED, counts=payload)
        else:
            self._finish(job, RemoteState.FAILED, error=str(payload))

    async def _spawn(self, slot: _Slot) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=_aer_worker.main,
            args=(child_end, os.getpid(), self._threads),
            name=f"qjobd-{self.name}-worker-{slot.index}",
            # multiprocessing's exit handler terminates daemonic children instead of
            # waiting for them to finish a simulation.
            daemon=True,
        )
        # Started from the event loop's thread, deliberately: the worker's parent-death
        # signal fires when the thread that started it exits.
        try:
            process.start()
        except OSError as exc:
            parent_end.close()
            raise _WorkerStartError(f"cannot start a worker process: {exc}") from exc
        finally:
            child_end.close()
        slot.process, slot.conn, slot.killed = process, parent_end, False
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                kind, payload = await _in_thread(parent_end.recv)
        except TimeoutError:
            self._terminate(slot)
            await self._reap(slot)
            raise _WorkerStartError(
                f"a worker process was not ready after {_READY_TIMEOUT:.0f} s"
            ) from None
        except (EOFError, OSError):
            await self._reap(slot)
            raise _WorkerStartError("a worker process exited while starting") from None
        if kind != "ready":
            await self._reap(slot)
            raise _WorkerStartError(f"a worker process failed to start:\n{payload}")
        slot.ready = True

    def _terminate(self, slot: _Slot) -> None:
        slot.ready = False
        if slot.process is not None and slot.process.exitcode is None:
            slot.killed = True
            slot.process.terminate()

    async def _reap(self, slot: _Slot) -> int | None:
        """Wait for the slot's process to exit (killing it if it lingers); its exit code."""
        process, conn = slot.process, slot.conn
        slot.process, slot.conn, slot.ready = None, None, False
        if conn is not None:
            conn.close()
        if process is None:
            return None
        # Shielded and tracked: aclose may cancel the caller, but must still wait for
        # the exit, or it would leave a zombie behind.
        join = asyncio.ensure_future(_in_thread(_join, process))
        self._joins.add(join)
        join.add_done_callback(self._joins.discard)
        return await asyncio.shield(join)

    def _break(self, reason: str) -> None:
        log.error("local backend %r cannot start workers: %s", self.name, reason)
        self._broken = reason
        for job in list(self._jobs.values()):
            if job.state is RemoteState.QUEUED:
                self._finish(job, RemoteState.FAILED, error=reason)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("local backend %r lost a worker slot", self.name, exc_info=task.exception())


def memory_qubits(workers: int) -> int:
    """The widest statevector (16 bytes per amplitude) that fits twice in a worker's share
    of the memory this process may use (the machine's, or its cgroup's limit)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return DEFAULT_MAX_QUBITS
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            memory = min(memory, int(limit))
    except OSError:
        pass
    share = memory // max(1, workers)
    return max(1, (share // 32).bit_length() - 1)


def _positive_int(name: str, config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"backend {name!r}: {key} must be a positive integer, not {value!r}")
    return value


def _cost_model(name: str, config: Mapping[str, Any]) -> _aer_cost.CostModel:
    """The settings' cost model (backends/_aer_cost.py); ValueError naming a bad one."""
    return _aer_cost.CostModel(
        max_seconds=_number(name, config, "max_estimated_seconds",
                            DEFAULT_MAX_ESTIMATED_SECONDS, zero=True),
        setting=f"[backends.{name}] max_estimated_seconds",
        seconds_per_amplitude_op=_number(name, config, "seconds_per_amplitude_op",
                                         _aer_cost.SECONDS_PER_AMPLITUDE_OP))


def _number(name: str, config: Mapping[str, Any], key: str, default: float, *,
            zero: bool = False) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        wanted = "a number >= 0 (0: no limit)" if zero else "a positive number"
        raise ValueError(f"backend {name!r}: {key} must be {wanted}, not {value!r}")
    return float(value)


def _exchange(conn: Connection, task: _aer_worker.Task) -> tuple[str, Any]:
    conn.send(task)
    kind, payload = conn.recv()
    if kind == "done":
        payload = {label: _aer_worker.unpack(packed) for label, packed in payload.items()}
    return kind, payload


def _join(process: BaseProcess) -> int | None:
    process.join(_EXIT_GRACE)
    if process.exitcode is None:
        process.kill()
        process.join()
    exitcode = process.exitcode
    process.close()
    return exitcode


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if exitcode == -signal.SIGKILL else ""
        return f"the simulator worker process was killed by {name}{hint}"
    return f"the simulator worker process exited unexpectedly (exit code {exitcode})"


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking call in a daemon thread of its own.

    Not in an executor: a call blocked on a worker's pipe can last as long as a
    simulation, and executor threads are joined at interpreter exit, daemon threads are
    not. If the awaiting task is cancelled, the thread finishes unobserved.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        result: _T | None = None
        error: Exception | None = None
        try:
            result = function(*args)
        except Exception as exc:  # delivered to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    threading.Thread(target=run, name=f"qjobd-local-{function.__name__}", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
