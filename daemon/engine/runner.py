"""One backend's engine: submits its queued jobs, polls its remote jobs, stores results.

Each job carries its own backoff (stored with the job, so a restart continues the
schedule). Due polls sit in one calendar per backend (10-ms slots of job ids, the slots
in a heap) rather than one sleeping task per job: that keeps 100,000 in-flight jobs
cheap and lets polls that fall due together be merged into one request where the
provider can answer for many jobs at once. Every request draws from the backend's
budget; a 429 pauses this backend only.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog

from qjobd.backends import qasm
from qjobd.backends.base import Backend, Circuit, RemoteState, RemoteStatus, SubmitRequest
from qjobd.backends.errors import AuthError, BackendError, RateLimited, Rejected, Unavailable
from qjobd.daemon.config import BackendConfig
from qjobd.daemon.engine.backoff import Backoff
from qjobd.daemon.engine.histogram import Histogram
from qjobd.daemon.engine.ratelimit import Priority, RequestBudget
from qjobd.store.errors import StoreError
from qjobd.store.models import Batch, Job
from qjobd.store.states import IllegalTransition, JobState, can_move
from qjobd.store.store import Store

log = structlog.get_logger("qjobd.runner")
R = TypeVar("R")

_REMOTE_TO_JOB = {
    RemoteState.QUEUED: JobState.SUBMITTED,
    RemoteState.RUNNING: JobState.RUNNING,
    RemoteState.COMPLETED: JobState.COMPLETED,
    RemoteState.FAILED: JobState.FAILED,
    RemoteState.CANCELED: JobState.CANCELED,
}

#: polls due within this window of the first are sent together (coalescing)
COALESCE_WINDOW = 0.05
#: the calendar's slot: polls due within one slot are one entry of its heap
SLOT = 0.01
#: at most this many requests to one backend in flight at once
MAX_IN_FLIGHT = 16
#: concurrent submissions per backend (each waits on the budget like any request)
SUBMITTERS = 16
#: how long a backend whose credentials were refused waits before trying again
AUTH_PAUSE = 60.0
#: how far the provider's clock may run behind ours, for lookups by creation time
LOOKUP_CLOCK_SKEW = 60.0
#: the pace (requests/s) a restart's overdue polls are spread at when the backend has no
#: budget: "unlimited" must not mean 4,000 requests in the first second after a restart
UNBUDGETED_RESUME_RATE = 100.0

#: the budget priority of the call in progress: the extra requests of a multi-request
#: call (an upload's fragments, paged results) wait in the same place as its first
_PRIORITY: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "qjobd_request_priority", default=Priority.TRACK)


@dataclass(slots=True)
class Tracked:
    """What the engine keeps in memory about one in-flight job."""

    job_id: str
    batch_id: str
    state: JobState
    remote_id: str | None
    interval: float | None
    raw: str | None
    #: a cancel (or timeout) that arrived while the create request was in flight
    pending_end: tuple[JobState, str] | None = None
    #: polled before it was due, to fill a request (its backoff does not grow)
    early: bool = False
    #: loop time its current poll fell due (for the scheduling lag)
    due: float = 0.0
    #: wall time of its next poll (what the API shows; the store may hold an older one)
    next_at: float | None = None
    #: the backoff step (un-jittered interval) the store holds for it
    saved_step: float | None = None
    #: the next poll time (wall) the store holds for it; older than ``next_at`` when a
    #: poll at the cap was not written
    saved_at: float | None = None
    #: a predicted wait is over: its schedule's cap is the near-end one from now on
    near_end: bool = False


class BackendRunner:
    """Drives every job of one backend to a terminal state."""

    def __init__(self, backend: Backend, config: BackendConfig, store: Store,
                 on_batch_change: Callable[[str], None]) -> None:
        self.backend = backend
        self.name = backend.name
        self.config = config
        self.store = store
        self.budget = RequestBudget(config.requests_per_second)
        # a call that sends several requests draws from the budget for each after the first
        backend.pace = self._pace
        self.backoff = Backoff(config.polling)
        self._on_batch_change = on_batch_change
        self._log = log.bind(backend=self.name)
        self._jobs: dict[str, Tracked] = {}
        #: due polls: slot number -> job ids, and a heap of the slot numbers in use. A
        #: heap of 100,000 (due, job) entries cost ~4 us a push and pop; this, ~0.3 us
        self._calendar: dict[int, list[str]] = {}
        self._slot_heap: list[int] = []
        self._wake = asyncio.Event()
        self._submit_queue: asyncio.Queue[str] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_schedule: list[tuple[str, str | None, float, float]] = []
        #: the schedule write in progress: the poll loop does not wait for its commit
        self._flushing: asyncio.Task[None] | None = None
        self._batches: dict[str, Batch] = {}
        #: counters for health and tests
        self.requests = 0
        self.errors = 0
        self.last_error: str | None = None
        #: seconds from a poll's due time to its request being sent, per job polled
        self.poll_lag = Histogram()

    # -- public ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def health(self) -> dict[str, object]:
        return {
            "type": self.config.type,
            "in_flight": self.in_flight,
            "submit_backlog": self._submit_queue.qsize(),
            "requests": self.requests,
            "errors": self.errors,
            "last_error": self.last_error,
            "requests_per_second": self.config.requests_per_second or None,
            "paused_for": round(self.budget.paused_for, 3),
            "poll_lag": {"polls": self.poll_lag.count,
                         "p50": _rounded(self.poll_lag.quantile(0.5)),
                         "p99": _rounded(self.poll_lag.quantile(0.99))},
            **self.backend.health(),
        }

    async def resume(self, jobs: Iterable[Job]) -> None:
        """Take over the non-terminal jobs found in the store at start."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        wall = _wall_offset(loop)
        durable = self.backend.capabilities.durable
        overdue: list[str] = []
        for job in jobs:
            tracked = Tracked(job.id, job.batch_id, job.state, job.remote_id,
                              job.poll_interval, job.remote_status, next_at=job.next_poll_at,
                              saved_at=job.next_poll_at)
            if job.poll_interval is not None:
                tracked.saved_step = self.backoff.step_of(job.poll_interval)
            self._jobs[job.id] = tracked
            if job.state == JobState.QUEUED:
                self._submit_queue.put_nowait(job.id)
            elif job.state == JobState.SUBMITTING or not durable:
                self._spawn(self._recover(tracked))
            else:
                due = (job.next_poll_at - wall) if job.next_poll_at else now
                if due <= now:
                    overdue.append(job.id)
                else:
                    self._push(due, tracked)
        # polls that fell due while the daemon was down are spread over the time the
        # budget needs for them, not fired at once (the budget would hold a burst back
        # anyway, but a spread keeps the order fair and the first seconds responsive)
        window = self._spread_window(len(overdue))
        for job_id in overdue:
            self._push(now + random.uniform(0, window), self._jobs[job_id])
        if self._jobs:
            self._log.info("resumed jobs", jobs=len(self._jobs))

    def _spread_window(self, n: int) -> float:
        """Seconds over which ``n`` overdue polls are spread at resume."""
        caps = self.backend.capabilities
        per_request = caps.max_status_batch if caps.batch_status else 1
        rate = self.config.requests_per_second or UNBUDGETED_RESUME_RATE
        needed = n / per_request / rate
        return min(max(needed, self.config.polling.initial_interval),
                   self.config.polling.max_interval)

    def enqueue(self, jobs: Iterable[Job]) -> None:
        """Accept newly stored (queued) jobs."""
        for job in jobs:
            self._jobs[job.id] = Tracked(job.id, job.batch_id, job.state, None, None, None)
            self._submit_queue.put_nowait(job.id)

    async def cancel(self, job_ids: Sequence[str], *, reason: JobState = JobState.CANCELED,
                     why: str = "canceled by user") -> None:
        """End these jobs as ``reason``, canceling their remote jobs first."""
        remote: list[Tracked] = []
        for job_id in job_ids:
            tracked = self._jobs.get(job_id)
            if tracked is None:
                continue
            if tracked.state == JobState.SUBMITTING:
                # the create may be in flight: end the job once its remote id is known,
                # so the remote job is canceled too instead of running orphaned
                tracked.pending_end = (reason, why)
                continue
            if tracked.remote_id is None:
                await self._move(tracked, reason, error=why if reason != JobState.CANCELED
                                 else None, detail={"reason": why})
            else:
                remote.append(tracked)
        chunk = max(1, self.backend.capabilities.max_status_batch)
        for start in range(0, len(remote), chunk):
            group = remote[start:start + chunk]
            ids = [t.remote_id for t in group]
            try:
                await self._request(self.backend.cancel, ids)
            except BackendError as exc:
                self._log.warning("remote cancel failed; ending the jobs anyway",
                                  error=str(exc), jobs=len(group))
            # a job may have finished before the cancel reached it (a provider may still
            # answer "canceled"): ask, and keep what it finished
            try:
                statuses = await self._request(self.backend.status, ids)
            except BackendError:
                statuses = {}
            for tracked in group:
                if tracked.job_id not in self._jobs:
                    continue
                status = statuses.get(tracked.remote_id or "")
                if status is not None and status.state in (RemoteState.COMPLETED,
                                                           RemoteState.FAILED):
                    await self._handle_safely(tracked, status)
                else:
                    await self._move(tracked, reason,
                                     error=why if reason != JobState.CANCELED else None,
                                     detail={"reason": why})

    async def run(self) -> None:
        """The engine's loops; runs until cancelled."""
        submitters = [asyncio.create_task(self._submit_loop(), name=f"{self.name}-submit-{i}")
                      for i in range(SUBMITTERS)]
        try:
            await self._poll_loop()
        finally:
            for task in [*submitters, *self._tasks]:
                task.cancel()
            await asyncio.gather(*submitters, *self._tasks, return_exceptions=True)
            if self._flushing is not None:
                await asyncio.wait([self._flushing])
            # a clean stop leaves every due time in the store: the next start resumes
            # each job on its own schedule rather than finding it overdue
            self._pending_schedule += [
                (t.job_id, None, t.interval, t.next_at) for t in self._jobs.values()
                if t.interval is not None and t.next_at is not None
                and t.next_at != t.saved_at]
            await self._flush_schedule()

    # -- submission ------------------------------------------------------------------

    async def _submit_loop(self) -> None:
        while True:
            job_id = await self._submit_queue.get()
            tracked = self._jobs.get(job_id)
            if tracked is None or tracked.state != JobState.QUEUED:
                continue
            with structlog.contextvars.bound_contextvars(
                    job_id=job_id, batch_id=tracked.batch_id, backend=self.name):
                try:
                    await self._submit(tracked)
                except StoreError as exc:
                    self._log.error("submission could not be recorded", error=str(exc))
                    self._retry_later(tracked)
                except IllegalTransition as exc:
                    self._log.error("job changed under the submitter", error=str(exc))
                    await self._resync(tracked)
                except Exception:
                    # never let one job's surprise stop the submitter for everyone else
                    self._log.exception("submission failed unexpectedly")
                    self._retry_later(tracked)

    async def _submit(self, tracked: Tracked) -> None:
        try:
            request = await self._build_request(tracked)
        except qasm.QasmError as exc:
            await self._move(tracked, JobState.FAILED, error=str(exc))
            return
        # the intent is stored before the request: a crash from here on is reconciled
        await self._move(tracked, JobState.SUBMITTING)

        async def created(remote_id: str) -> None:
            # a multi-request create: keep the id before the upload, to settle a crash
            await self.store.record_remote_id(tracked.job_id, remote_id)
            tracked.remote_id = remote_id

        try:
            remote_id = await self._request(self.backend.submit, request, created=created,
                                            _priority=Priority.CREATE)
        except Rejected as exc:
            await self._move(tracked, JobState.FAILED, error=f"rejected by {self.name}: {exc}")
            return
        except AuthError as exc:
            # refused before anything was created: wait for new credentials (SIGHUP)
            self._log.error("credentials refused; pausing backend", error=str(exc),
                            seconds=AUTH_PAUSE)
            self.budget.pause(AUTH_PAUSE)
            await self._move(tracked, JobState.QUEUED, detail={"reason": str(exc)})
            self._submit_queue.put_nowait(tracked.job_id)
            return
        except BackendError as exc:
            # the job may or may not exist remotely now: find out before any resubmission
            self._log.warning("submission outcome unknown; will reconcile", error=str(exc))
            await asyncio.sleep(self.backoff.first())
            self._spawn(self._recover(tracked))
            return
        self._log.info("submitted", remote_id=remote_id)
        await self._submitted(tracked, remote_id)

    async def _build_request(self, tracked: Tracked) -> SubmitRequest:
        batch = await self._batch(tracked.batch_id)
        job = await self.store.get_job(tracked.job_id)
        records = await self.store.circuits(tracked.job_id)
        versions = self.backend.capabilities.qasm_versions
        if all(r.qasm_version in versions for r in records):
            # checked at submission and stored with its version: sent as it is
            circuits = [Circuit(r.label, r.source, r.qasm_version, r.num_clbits)
                        for r in records]
        else:
            # converting is CPU work (about 1 ms per OpenQASM 3 circuit): off the loop
            circuits = await anyio.to_thread.run_sync(
                lambda: [self._wire_circuit(r.label, r.source) for r in records])
        return SubmitRequest(submission_key=job.submission_key, circuits=circuits,
                             shots=batch.shots, name=batch.name or None, options=batch.options)

    def _wire_circuit(self, label: str, source: str) -> Circuit:
        parsed = qasm.parse_circuit(label, source)
        versions = self.backend.capabilities.qasm_versions
        wire = qasm.convert(parsed, versions)
        version = parsed.qasm_version if parsed.qasm_version in versions else min(versions)
        return Circuit(label=label, source=wire, qasm_version=version,
                       num_clbits=parsed.num_clbits)

    async def _submitted(self, tracked: Tracked, remote_id: str, *, found: bool = False) -> None:
        interval = self.backoff.first()
        detail = {"reason": "interrupted submission settled: the job exists remotely"} \
            if found else None
        next_at = _wall(interval)
        await self._move(tracked, JobState.SUBMITTED, remote_id=remote_id,
                         poll_interval=interval, next_poll_at=next_at, detail=detail)
        tracked.interval, tracked.next_at, tracked.saved_at = interval, next_at, next_at
        tracked.saved_step = self.backoff.step_of(interval)
        self._push(asyncio.get_running_loop().time() + interval, tracked)

    async def _recover(self, tracked: Tracked) -> None:
        """Settle a job whose submission or remote job may have been lost with a crash.

        Whatever path it takes, the event log says which: found remotely, upload resumed,
        partial job canceled and submitted again, or proven absent and submitted again.
        """
        with structlog.contextvars.bound_contextvars(
                job_id=tracked.job_id, batch_id=tracked.batch_id, backend=self.name):
            caps = self.backend.capabilities
            if not caps.durable:
                # the simulator's work died with the old process: nothing exists remotely
                await self._requeue(tracked, f"{self.name} jobs do not survive a restart; "
                                             "running it again")
                return
            job = await self.store.get_job(tracked.job_id)
            if job.remote_id is not None and job.state == JobState.SUBMITTING:
                await self._resume_upload(tracked, job.remote_id)
                return
            if caps.lookup_by_key:
                remote_id = await self._keep_trying(
                    "lookup", self.backend.lookup, job.submission_key,
                    # the intent was stored after the job row: nothing older can match
                    created_after=job.created_at - LOOKUP_CLOCK_SKEW)
                if remote_id is None:
                    await self._requeue(tracked, "interrupted submission: the provider has "
                                                 "no such job; submitting again")
                else:
                    self._log.info("interrupted submission found remotely",
                                   remote_id=remote_id)
                    await self._submitted(tracked, remote_id, found=True)
                return
            if caps.lost_create_is_inert:
                await self._requeue(tracked, "interrupted submission: whatever the lost "
                                             "create left can never run; submitting again")
                return
            await self._move(tracked, JobState.FAILED, error=(
                "the submission was interrupted and this backend cannot tell whether the "
                "job was created; not resubmitting to avoid a duplicate"))

    async def _resume_upload(self, tracked: Tracked, partial_id: str) -> None:
        request = await self._build_request(tracked)
        remote_id = await self._keep_trying("resume", self.backend.resume_interrupted,
                                            partial_id, request)
        if remote_id is None:
            await self._requeue(tracked, f"interrupted upload: partial job {partial_id} "
                                         "was canceled; submitting again")
        else:
            self._log.info("interrupted upload settled", remote_id=remote_id)
            await self._submitted(tracked, remote_id, found=True)

    async def _keep_trying(self, what: str, fn: Callable[..., Awaitable[R]], *args: Any,
                           **kw: Any) -> R:
        """Retry a settling request through outages: until it answers, nothing is safe."""
        interval: float | None = None
        while True:
            try:
                return await self._request(fn, *args, **kw)
            except Unavailable as exc:
                interval = self.backoff.next(interval)
                self._log.warning(f"{what} failed; retrying", error=str(exc), seconds=interval)
                await asyncio.sleep(interval)

    async def _requeue(self, tracked: Tracked, reason: str) -> None:
        await self._move(tracked, JobState.QUEUED, detail={"reason": reason})
        self._submit_queue.put_nowait(tracked.job_id)

    # -- polling ---------------------------------------------------------------------

    def _push(self, due: float, tracked: Tracked) -> None:
        tracked.due = due
        slot = int(due // SLOT)
        jobs = self._calendar.get(slot)
        if jobs is not None:
            jobs.append(tracked.job_id)
            return
        self._calendar[slot] = [tracked.job_id]
        first = not self._slot_heap or slot < self._slot_heap[0]
        heapq.heappush(self._slot_heap, slot)
        if first:
            self._wake.set()

    def _next_due(self) -> list[str]:
        """Take the job ids of the earliest slot out of the calendar."""
        return self._calendar.pop(heapq.heappop(self._slot_heap))

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._slot_heap:
                self._flush_soon()
                await self._wake.wait()
                continue
            delay = self._slot_heap[0] * SLOT - loop.time()
            if delay > 0:
                self._flush_soon()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            limit = loop.time() + COALESCE_WINDOW
            due: list[Tracked] = []
            jobs = self._jobs
            while self._slot_heap and self._slot_heap[0] * SLOT <= limit:
                for job_id in self._next_due():
                    tracked = jobs.get(job_id)
                    if tracked is not None and tracked.remote_id is not None \
                            and not tracked.state.terminal:
                        due.append(tracked)
            caps = self.backend.capabilities
            size = caps.max_status_batch if caps.batch_status else 1
            if size > 1 and due:
                self._fill(due, size)
            for start in range(0, len(due), size):
                await self._slots.acquire()
                self._spawn(self._poll(due[start:start + size]), slot=True)

    def _fill(self, due: list[Tracked], size: int) -> None:
        """Top the last request up with the jobs due next: polled early at no extra cost.

        Without this, 1,000 jobs at a 30 s interval fall due ~30 ms apart and each request
        would carry one or two ids; filled, each request carries ``size``.
        """
        room = -len(due) % size
        while room and self._slot_heap:
            slot = self._slot_heap[0]
            waiting = self._calendar[slot]
            job_id = waiting.pop()
            if not waiting:
                self._next_due()
            tracked = self._jobs.get(job_id)
            if tracked is not None and tracked.remote_id is not None \
                    and not tracked.state.terminal:
                tracked.early = True
                due.append(tracked)
                room -= 1

    async def _poll(self, group: list[Tracked]) -> None:
        try:
            statuses = await self._request(self._status, group)
        except Exception as exc:  # a bug, or an answer nothing foresaw, too: polled again
            for tracked in group:
                self._later(tracked, None)
            if isinstance(exc, BackendError):
                self._log.warning("status poll failed", error=str(exc), jobs=len(group))
            else:
                self._log.exception("status poll failed unexpectedly", jobs=len(group))
            return
        # most answers change nothing (the job is still queued or running): those are
        # rescheduled right here, without a task each; the others are handled
        # concurrently, so the store writes of one answer share a group commit
        moved = []
        for tracked in group:
            status = statuses.get(tracked.remote_id or "")
            try:
                if status is not None and self._unchanged(tracked, status):
                    continue
            except Exception:  # logged by the careful path below, which polls it again
                pass
            moved.append((tracked, status))
        if moved:
            await asyncio.gather(*(self._handle_safely(t, s) for t, s in moved))

    async def _status(self, group: list[Tracked]) -> dict[str, RemoteStatus]:
        """The status request of a poll, once the budget let it go: its lag is measured here."""
        now = asyncio.get_running_loop().time()
        for tracked in group:
            if not tracked.early:  # a job polled early to fill the request was not due
                self.poll_lag.observe(now - tracked.due)
        return await self.backend.status([t.remote_id for t in group])

    async def _handle_safely(self, tracked: Tracked, status: RemoteStatus | None) -> None:
        with structlog.contextvars.bound_contextvars(
                job_id=tracked.job_id, batch_id=tracked.batch_id, backend=self.name):
            try:
                await self._handle(tracked, status)
            except StoreError as exc:
                self._log.error("could not record a poll", error=str(exc))
                self._later(tracked, None)
            except IllegalTransition as exc:
                self._log.error("job changed under the poller", error=str(exc))
                await self._resync(tracked)
            except Exception:
                self._log.exception("could not handle a poll; will poll again")
                self._later(tracked, None)

    async def _handle(self, tracked: Tracked, status: RemoteStatus | None) -> None:
        if status is None:
            if not self.backend.capabilities.durable:
                await self._recover(tracked)
                return
            self._log.warning("the provider does not know this job; still polling",
                              remote_id=tracked.remote_id)
            self._later(tracked, None)
            return
        if self._unchanged(tracked, status):
            return
        target = _REMOTE_TO_JOB[status.state]
        if target == JobState.COMPLETED:
            await self._complete(tracked, status)
            return
        await self._move(tracked, target, remote_status=status.raw, error=status.error)
        tracked.raw = status.raw
        if not target.terminal:
            if target != JobState.RUNNING:
                # a status change resets the backoff: things are moving
                tracked.interval = None
            # except a start: the job has only begun, its end is no nearer than it was a
            # poll ago, and polling from 1 s again costs ~8 polls per job for nothing
            self._later(tracked, None, status.eta)

    def _unchanged(self, tracked: Tracked, status: RemoteStatus) -> bool:
        """If the answer moves the job nowhere, schedule its next poll and say True."""
        target = _REMOTE_TO_JOB.get(status.state)
        if target is not None and target != tracked.state and can_move(tracked.state, target):
            return False
        raw_changed = status.raw if status.raw != tracked.raw else None
        if status.state == RemoteState.UNKNOWN and raw_changed:
            self._log.warning("unrecognised remote status; still polling", raw=status.raw,
                              job_id=tracked.job_id, batch_id=tracked.batch_id,
                              remote_id=tracked.remote_id)
        tracked.raw = status.raw
        self._later(tracked, raw_changed, status.eta)
        return True

    async def _complete(self, tracked: Tracked, status: RemoteStatus) -> None:
        records = await self.store.circuits(tracked.job_id)
        circuits = [Circuit(r.label, r.source, r.qasm_version, r.num_clbits) for r in records]
        try:
            counts = await self._request(self.backend.results, tracked.remote_id, circuits)
        except Unavailable as exc:
            self._log.warning("result fetch failed; retrying", error=str(exc))
            self._later(tracked, None)
            return
        except BackendError as exc:
            await self._move(tracked, JobState.FAILED, remote_status=status.raw,
                             error=f"results could not be read: {exc}")
            return
        missing = [c.label for c in circuits if c.label not in counts]
        if missing:
            await self._move(tracked, JobState.FAILED, remote_status=status.raw,
                             error=f"the provider returned no counts for {', '.join(missing)}")
            return
        batch = await self._batch(tracked.batch_id)
        await self._move(tracked, JobState.COMPLETED, remote_status=status.raw,
                         results={c.label: counts[c.label] for c in circuits},
                         shots=batch.shots)
        self._log.info("completed", remote_id=tracked.remote_id)

    def _later(self, tracked: Tracked, raw_changed: str | None,
               eta: float | None = None) -> None:
        """Schedule the job's next poll with backoff; the store learns it in the next flush
        if it is news: a new raw status, or a new step of the backoff.

        A job polled early (to fill a request) keeps its interval: it was not due.

        ``eta``, the provider's prediction of the time the job has left, stretches the wait
        to ``prediction_trust`` of it (at most ``prediction_max_wait``): a job predicted to
        wait in a queue for ten more minutes is not asked about every 30 s meanwhile.
        After a stretched wait the job is near its predicted end: its schedule goes on
        from the length of that wait, capped at ``near_end_factor`` of ``max_interval``
        (a job that old would be polled at the cap; a little more often buys quicker
        detection with some of the polls saved, and a young job is not pushed to the cap).

        A job at the cap is not rewritten at each poll (100,000 jobs at 30 s would be 3,300
        row updates a second, a quarter of the daemon's CPU): the store keeps its interval,
        and the due time of the last change, which a crash then finds overdue and a
        restart polls within the resume spread (at most ``max_interval``). A clean stop
        stores every due time (``run``), the API shows the live one (``next_poll_at``).
        """
        backoff = self.backoff  # a reload replaces it
        trust = backoff.policy.prediction_trust
        cap = backoff.near_end_cap() if tracked.near_end and trust else None
        if tracked.early and tracked.interval is not None:
            tracked.early = False
        else:
            tracked.interval = backoff.next(tracked.interval, cap)
        interval = wait = tracked.interval
        if eta is not None and trust:
            stretched = min(trust * eta, backoff.policy.prediction_max_wait)
            if stretched > interval:
                wait = stretched
                tracked.near_end, cap = True, backoff.near_end_cap()
                tracked.interval = interval = backoff.at_most(stretched, cap)
        self._push(asyncio.get_running_loop().time() + wait, tracked)
        tracked.next_at = _wall(wait)
        step = backoff.step_of(interval, cap)
        # the store must never hold a later poll than the real one (a crash would resume
        # the job late): a stretched wait cut short by an early poll is written again
        if raw_changed is not None or step != tracked.saved_step \
                or (tracked.saved_at is not None and tracked.saved_at > tracked.next_at):
            self._pending_schedule.append((tracked.job_id, raw_changed, interval,
                                           tracked.next_at))
            tracked.saved_step, tracked.saved_at = step, tracked.next_at

    def next_poll_at(self, job_id: str) -> float | None:
        """Wall time of the job's next poll, if this engine tracks it."""
        tracked = self._jobs.get(job_id)
        return None if tracked is None else tracked.next_at

    def _flush_soon(self) -> None:
        """Store the pending schedule in the background, one write at a time."""
        if self._pending_schedule and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.create_task(self._flush_schedule())

    async def _flush_schedule(self) -> None:
        if not self._pending_schedule:
            return
        rows, self._pending_schedule = self._pending_schedule, []
        try:
            await self.store.reschedule(rows)
        except StoreError as exc:
            # only the stored schedule is stale: a restart would poll these a little early;
            # their next poll writes it again
            self._log.warning("could not store poll schedule", error=str(exc), jobs=len(rows))
            for job_id, *_ in rows:
                tracked = self._jobs.get(job_id)
                if tracked is not None:
                    tracked.saved_step = None

    # -- plumbing --------------------------------------------------------------------

    async def _pace(self) -> None:
        """A backend's request after the first of one call: budgeted and counted too."""
        await self.budget.acquire(_PRIORITY.get())
        self.requests += 1

    async def _request(self, fn: Callable[..., Awaitable[R]], *args: Any,
                       _priority: Priority = Priority.TRACK, **kw: Any) -> R:
        """Send one call to the backend, drawing from its budget.

        Creates wait behind tracking requests (polls, results, cancels, lookups): work
        already running remotely is followed up before more is started.
        """
        await self.budget.acquire(_priority)
        self.requests += 1
        token = _PRIORITY.set(_priority)
        try:
            return await fn(*args, **kw)
        except RateLimited as exc:
            pause = exc.retry_after if exc.retry_after is not None else self.backoff.first()
            self.budget.pause(pause)
            self._note_error(exc)
            self._log.warning("rate limited; pausing backend", seconds=pause)
            raise
        except BackendError as exc:
            self._note_error(exc)
            raise
        finally:
            _PRIORITY.reset(token)

    def _note_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _move(self, tracked: Tracked, target: JobState, **changes: Any) -> None:
        batch_state = await self.store.transition(tracked.job_id, target, **changes)
        tracked.state = target
        if "remote_id" in changes and changes["remote_id"] is not None:
            tracked.remote_id = str(changes["remote_id"])
        if target == JobState.QUEUED:
            tracked.remote_id = None
            tracked.interval = tracked.next_at = tracked.saved_step = tracked.saved_at = None
            tracked.near_end = tracked.early = False
        self._log.debug("job state", state=str(target), batch_state=str(batch_state))
        if target.terminal:
            self._jobs.pop(tracked.job_id, None)
        elif tracked.pending_end is not None and target != JobState.SUBMITTING:
            reason, why = tracked.pending_end
            tracked.pending_end = None
            self._spawn(self.cancel([tracked.job_id], reason=reason, why=why))
        self._on_batch_change(tracked.batch_id)

    async def _batch(self, batch_id: str) -> Batch:
        """A batch's settings (shots, name, options never change), read once per batch."""
        batch = self._batches.get(batch_id)
        if batch is None:
            batch = await self.store.get_batch(batch_id, with_jobs=False)
            if len(self._batches) >= 1024:
                self._batches.pop(next(iter(self._batches)))
            self._batches[batch_id] = batch
        return batch

    async def _resync(self, tracked: Tracked) -> None:
        """Take the store's word for a job whose in-memory state went stale."""
        job = await self.store.get_job(tracked.job_id)
        tracked.state, tracked.remote_id = job.state, job.remote_id
        if job.state.terminal:
            self._jobs.pop(job.id, None)
        elif job.state == JobState.QUEUED:
            self._submit_queue.put_nowait(job.id)
        elif job.remote_id is not None:
            self._later(tracked, None)

    def _retry_later(self, tracked: Tracked) -> None:
        """After a store failure mid-submission, try again once the store may be back."""

        async def retry() -> None:
            await asyncio.sleep(self.config.polling.max_interval)
            if tracked.state == JobState.QUEUED:
                self._submit_queue.put_nowait(tracked.job_id)
            elif not tracked.state.terminal:
                # the remote job may exist: settle it the way a restart would
                await self._recover(tracked)

        self._spawn(retry())

    def _spawn(self, coro: Coroutine[Any, Any, None], *, slot: bool = False) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if slot:
                self._slots.release()
            if not t.cancelled() and t.exception() is not None:
                self._log.error("engine task failed", error=repr(t.exception()))

        task.add_done_callback(done)


def _wall_offset(loop: asyncio.AbstractEventLoop) -> float:
    """Wall-clock time minus loop time: converts stored due times to loop times."""
    return time.time() - loop.time()


def _wall(delay: float) -> float:
    return time.time() + delay


def _rounded(value: float) -> float | None:
    return None if value != value else round(value, 4)  # NaN (no polls yet): null
