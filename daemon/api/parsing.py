"""The daemon's parse workers: every circuit of a submission is checked in one of them.

Parsing is CPU work that holds the GIL (and Qiskit's native importer must redirect file
descriptor 2, which in the daemon is its log), so it never runs in the daemon's process:
a :class:`ParsePool` of worker processes, started at boot and sized to the cores, does
it, and the event loop only waits. A large batch is cut into chunks that are handed out
round-robin between the requests waiting, so one client's big batch does not queue the
next client's Bell circuit behind all of it.

A worker is a fresh interpreter (``spawn``) that imports Qiskit and the parsers once,
enables the native importer for itself, limits its own address space (``memory``), and
then runs tasks received over a pipe: ``(kind, args)`` in, ``("ok", result)`` or
``("error", exception)`` out. The kinds are a fixed table (``_worker_tasks``): ``check``
(a chunk of a submission), ``offloaded`` (a parse or conversion the daemon's caches could
not answer, :func:`qjobd.backends.qasm.set_offload`), and ``sleep`` and ``exit`` (tests:
a busy worker, a worker that dies).

A task whose requester gives up (a cancelled request, a validation over its time limit,
SIGTERM) is dropped if it has not started, and its worker is terminated and replaced if
it has: the CPU is not spent on an answer nobody waits for. A worker that dies (a
signal, its memory limit) fails its task with :class:`WorkerDied`; the pool replaces it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from qjobd.errors import QjobdError

__all__ = ["ParsePool", "ParsePoolClosed", "WorkerDied", "default_workers"]

log = structlog.get_logger("qjobd.parsing")

#: a worker imports Qiskit and the parsers before it is ready; a cold disk can be slow
_READY_TIMEOUT = 120.0
#: how long a terminated worker gets to exit before it is killed
_EXIT_GRACE = 1.0
#: after this many workers in a row fail to start, tasks fail instead of waiting
_START_FAILURES = 3


class ParsePoolClosed(QjobdError):
    """The parse workers are stopping (the daemon is shutting down) or cannot start."""


class WorkerDied(QjobdError):
    """A parse worker died while it ran the task (a signal, its memory limit)."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                how = f"was killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"was killed by signal {-exitcode}"
        else:
            how = f"exited with status {exitcode}"
        super().__init__(f"the parse worker {how} while it checked the circuit")


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(eq=False)
class _Task:
    kind: str
    args: tuple[Any, ...]
    group: object
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    #: the slot running it, once started
    slot: _Slot | None = None


@dataclass(eq=False)
class _Slot:
    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    #: terminated on purpose (its task was abandoned, or the pool closes)
    killed: bool = False
    thread: threading.Thread | None = None


class ParsePool:
    """Worker processes that run parse tasks; usable from the event loop and from threads.

    ``memory``: each worker's address-space limit in bytes (None: none).
    """

    def __init__(self, workers: int | None = None, *, memory: int | None = None,
                 name: str = "qjobd-parse") -> None:
        self.workers = workers or default_workers()
        self.memory = memory
        self.name = name
        self._queues: collections.OrderedDict[object, collections.deque[_Task]] = \
            collections.OrderedDict()
        self._lock = threading.Condition()
        self._slots = [_Slot(i) for i in range(self.workers)]
        self._closed = False
        self._start_failures = 0
        self._started = False
        #: counters for /v1/health and /metrics
        self.stats: collections.Counter[str] = collections.Counter()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers' threads; each spawns its process. Returns at once."""
        if self._started:
            raise RuntimeError("the parse pool was already started")
        self._started = True
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._serve, args=(slot,), daemon=True,
                                           name=f"{self.name}-{slot.index}")
            slot.thread.start()

    def close(self) -> None:
        """Fail every waiting task, terminate the workers. Idempotent, never blocks."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = [task for queue in self._queues.values() for task in queue]
            self._queues.clear()
            self._lock.notify_all()
        for task in waiting:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(ParsePoolClosed("the daemon is stopping"))
        for slot in self._slots:
            self._terminate(slot)

    async def aclose(self) -> None:
        """:meth:`close`, then wait (in a thread) for the workers to be gone."""
        self.close()
        await asyncio.to_thread(self.join)

    def join(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))

    def health(self) -> dict[str, Any]:
        with self._lock:
            waiting = sum(len(queue) for queue in self._queues.values())
        ready = sum(1 for slot in self._slots if slot.conn is not None)
        return {"workers": self.workers, "ready": ready, "waiting_tasks": waiting,
                **dict(self.stats)}

    # -- running tasks -------------------------------------------------------------------

    def submit(self, kind: str, args: tuple[Any, ...], *, group: object = None
               ) -> concurrent.futures.Future[Any]:
        """Queue a task; tasks of one ``group`` (a request) take turns with other groups'."""
        return self._submit(kind, args, group).future

    async def run(self, kind: str, args: tuple[Any, ...], *, group: object = None) -> Any:
        """Run one task and return its result; cancelling the caller abandons the task."""
        task = self._submit(kind, args, group)
        try:
            return await asyncio.wrap_future(task.future)
        except asyncio.CancelledError:
            self._abandon(task)
            raise

    def call(self, kind: str, args: tuple[Any, ...]) -> Any:
        """Run one task from a thread that is not the event loop's, and wait for it."""
        return self.submit(kind, args).result()

    def offload(self, kind: str, args: tuple[Any, ...]) -> Any:
        """``qasm.offloaded(kind, args)`` in a worker: what :func:`qasm.set_offload` takes."""
        return self.call("offloaded", (kind, args))

    # -- inside ----------------------------------------------------------------------------

    def _submit(self, kind: str, args: tuple[Any, ...], group: object) -> _Task:
        task = _Task(kind, args, group if group is not None else object())
        with self._lock:
            if self._closed:
                raise ParsePoolClosed("the daemon is stopping")
            if self._start_failures >= _START_FAILURES:
                raise ParsePoolClosed("the parse workers cannot start; see the daemon's log")
            self._queues.setdefault(task.group, collections.deque()).append(task)
            self._lock.notify()
        return task

    def _abandon(self, task: _Task) -> None:
        """Nobody waits for ``task`` any more: drop it, or stop the worker running it."""
        with self._lock:
            queue = self._queues.get(task.group)
            if queue is not None and task in queue:
                queue.remove(task)
                if not queue:
                    del self._queues[task.group]
            slot = task.slot
        task.future.cancel()  # a task not yet started is never started
        if slot is not None:
            # running: its answer is not wanted, so its CPU is not spent either
            self.stats["abandoned"] += 1
            self._terminate(slot)

    def _next(self, slot: _Slot) -> _Task | None:
        """The next task, round-robin over groups, now ``slot``'s; None once closed."""
        with self._lock:
            while True:
                if self._closed:
                    return None
                while self._queues:
                    group, queue = next(iter(self._queues.items()))
                    task = queue.popleft()
                    if queue:
                        self._queues.move_to_end(group)
                    else:
                        del self._queues[group]
                    if task.future.set_running_or_notify_cancel():
                        task.slot = slot
                        return task
                self._lock.wait()

    def _serve(self, slot: _Slot) -> None:
        """One worker's life: (re)start its process, run tasks on it until the pool closes."""
        while not self._closed:
            try:
                if slot.conn is None and not self._spawn(slot):
                    time.sleep(min(5.0, 0.5 * 2 ** self._start_failures))
                    continue
                task = self._next(slot)
                if task is None:
                    break
                process = slot.process
                if process is None or not process.is_alive():
                    # died while idle (the OOM killer...): not this task's fault
                    self._reap(slot)
                    while slot.conn is None and not self._closed and not self._spawn(slot):
                        time.sleep(min(5.0, 0.5 * 2 ** self._start_failures))
                    if slot.conn is None:
                        task.future.set_exception(ParsePoolClosed("the daemon is stopping"))
                        continue
                self._run(slot, task)
            except Exception:  # a bug here must not leave the pool a worker short
                log.exception("parse worker slot failed; restarting it", slot=slot.index)
                self._terminate(slot)
                self._reap(slot)
        self._terminate(slot)
        self._reap(slot)

    def _run(self, slot: _Slot, task: _Task) -> None:
        conn = slot.conn
        assert conn is not None
        started = time.monotonic()
        try:
            conn.send((task.kind, task.args))
            status, payload = conn.recv()
        except Exception as exc:
            if not isinstance(exc, EOFError | OSError):  # e.g. arguments that do not pickle
                task.slot = None
                task.future.set_exception(exc)
                return
            killed = slot.killed
            exitcode = self._reap(slot)
            if not killed:
                self.stats["died"] += 1
            if not task.future.done():
                error: BaseException = (ParsePoolClosed("the daemon is stopping") if self._closed
                                        else WorkerDied(exitcode))
                task.future.set_exception(error)
            return
        finally:
            task.slot = None
        self.stats["tasks"] += 1
        self.stats["busy_ms"] += int((time.monotonic() - started) * 1000)
        if task.future.done():
            return
        if status == "ok":
            task.future.set_result(payload)
        else:
            task.future.set_exception(payload)

    def _spawn(self, slot: _Slot) -> bool:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(target=worker_main, args=(child_end, os.getpid(), self.memory),
                                  name=f"{self.name}-worker-{slot.index}", daemon=True)
        try:
            process.start()
        except Exception as exc:  # OSError; RuntimeError from an unguarded __main__
            parent_end.close()
            child_end.close()
            self._start_failed(f"cannot start a parse worker: {type(exc).__name__}: {exc}")
            return False
        child_end.close()
        slot.process, slot.killed = process, False
        deadline = time.monotonic() + _READY_TIMEOUT
        while not parent_end.poll(0.1):
            if not process.is_alive() or time.monotonic() > deadline or self._closed:
                break
        try:
            message = parent_end.recv() if parent_end.poll() else (
                "timeout" if process.is_alive() else "exited", None)
        except (EOFError, OSError):
            message = ("exited", None)
        if message[0] != "ready":
            parent_end.close()
            self._terminate(slot)
            self._reap(slot)
            if not self._closed:
                self._start_failed(f"a parse worker did not start ({message[0]}): "
                                   f"{message[1] or ''}".strip())
            return False
        with self._lock:
            if self._closed:
                parent_end.close()
                return False
            slot.conn = parent_end
            self._start_failures = 0
        return True

    def _start_failed(self, why: str) -> None:
        with self._lock:
            self._start_failures += 1
            failures = self._start_failures
        log.error("parse worker failed to start", problem=why, failures=failures)
        if failures >= _START_FAILURES:
            with self._lock:
                waiting = [task for queue in self._queues.values() for task in queue]
                self._queues.clear()
            for task in waiting:
                if task.future.set_running_or_notify_cancel():
                    task.future.set_exception(ParsePoolClosed(
                        "the parse workers cannot start; see the daemon's log"))

    def _terminate(self, slot: _Slot) -> None:
        process = slot.process
        if process is not None and process.exitcode is None:
            slot.killed = True
            with contextlib.suppress(OSError, ValueError):
                process.terminate()

    def _reap(self, slot: _Slot) -> int | None:
        process, conn = slot.process, slot.conn
        slot.process, slot.conn = None, None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        process.join(_EXIT_GRACE)
        if process.exitcode is None:
            process.kill()
            process.join()
        exitcode = process.exitcode
        process.close()
        return exitcode


# -- inside a worker process ---------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def worker_main(conn: Connection, parent_pid: int, memory: int | None) -> None:
    """A parse worker's entry point (spawned): import, say ready, serve tasks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    _die_with_parent(parent_pid)
    try:
        tasks = _worker_tasks()
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except BaseException:
        conn.send(("init_failed", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", tasks[kind](*args))
        except MemoryError:
            reply = ("error", MemoryError(f"the parse worker ran out of its memory limit "
                                          f"({memory or 0:,} bytes)"))
        except Exception as exc:
            reply = ("error", exc)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
        except Exception as exc:  # an answer that does not pickle
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _worker_tasks() -> dict[str, Callable[..., Any]]:
    from qjobd.backends import qasm
    from qjobd.daemon.api import validation

    qasm.enable_native()
    return {"check": validation.check_chunk, "offloaded": qasm.offloaded,
            "sleep": _sleep, "exit": _exit}


def _sleep(seconds: float) -> float:
    """A task that only takes time (tests: a worker busy on purpose)."""
    time.sleep(seconds)
    return seconds


def _exit() -> None:
    """A task that kills its worker (tests: a worker dying mid-task)."""
    os._exit(137)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this worker when its parent dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(1)
