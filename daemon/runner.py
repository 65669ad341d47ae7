"""One backend's engine: submits its queued jobs, polls its remote jobs, stores results.

Each job carries its own backoff (stored with the job, so a restart continues the
schedule). Due polls sit in one heap per backend rather than one sleeping task per job:
that keeps 100,000 in-flight jobs cheap and lets polls that fall due together be
merged into one request where the provider can answer for many jobs at once. Every
request draws from the backend's budget; a 429 pauses this backend only.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog

from backends import qasm
from backends.base import Backend, Circuit, RemoteState, RemoteStatus, SubmitRequest
from backends.errors import AuthError, BackendError, RateLimited, Rejected, Unavailable
from daemon.backoff import Backoff
from daemon.config import BackendConfig
from daemon.ratelimit import Priority, RequestBudget
from store.errors import StoreError
from store.models import Batch, Job
from store.states import IllegalTransition, JobState, can_move
from store.store import Store

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
#: at most this many requests to one backend in flight at once
MAX_IN_FLIGHT = 16
#: concurrent submissions per backend (each waits on the budget like any request)
SUBMITTERS = 16
#: how long a backend whose credentials were refused waits before trying again
AUTH_PAUSE = 60.0
#: how far the provider's clock may run behind ours, for lookups by creation time
LOOKUP_CLOCK_SKEW = 60.0

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
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._submit_queue: asyncio.Queue[str] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_schedule: list[tuple[str, str | None, float, float]] = []
        self._batches: dict[str, Batch] = {}
        #: counters for health and tests
        self.requests = 0
        self.errors = 0
        self.last_error: str | None = None

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
                              job.poll_interval, job.remote_status)
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
                    self._push(due, job.id)
        # polls that fell due while the daemon was down are spread over the time the
        # budget needs for them, not fired at once (the budget would hold a burst back
        # anyway, but a spread keeps the order fair and the first seconds responsive)
        window = self._spread_window(len(overdue))
        for job_id in overdue:
            self._push(now + random.uniform(0, window), job_id)
        if self._jobs:
            self._log.info("resumed jobs", jobs=len(self._jobs))

    def _spread_window(self, n: int) -> float:
        """Seconds over which ``n`` overdue polls are spread at resume."""
        caps = self.backend.capabilities
        per_request = caps.max_status_batch if caps.batch_status else 1
        rate = self.config.requests_per_second
        needed = n / per_request / rate if rate > 0 else 0.0
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
        await self._move(tracked, JobState.SUBMITTED, remote_id=remote_id,
                         poll_interval=interval, next_poll_at=_wall(interval), detail=detail)
        tracked.interval = interval
        self._push(asyncio.get_running_loop().time() + interval, tracked.job_id)

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

    def _push(self, due: float, job_id: str) -> None:
        first = not self._heap or due < self._heap[0][0]
        heapq.heappush(self._heap, (due, next(self._seq), job_id))
        if first:
            self._wake.set()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._heap:
                await self._flush_schedule()
                await self._wake.wait()
                continue
            delay = self._heap[0][0] - loop.time()
            if delay > 0:
                await self._flush_schedule()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            limit = loop.time() + COALESCE_WINDOW
            due: list[Tracked] = []
            while self._heap and self._heap[0][0] <= limit:
                _, _, job_id = heapq.heappop(self._heap)
                tracked = self._jobs.get(job_id)
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
        while room and self._heap:
            _, _, job_id = heapq.heappop(self._heap)
            tracked = self._jobs.get(job_id)
            if tracked is not None and tracked.remote_id is not None \
                    and not tracked.state.terminal:
                tracked.early = True
                due.append(tracked)
                room -= 1

    async def _poll(self, group: list[Tracked]) -> None:
        try:
            statuses = await self._request(self.backend.status, [t.remote_id for t in group])
        except BackendError as exc:
            for tracked in group:
                self._later(tracked, None)
            self._log.warning("status poll failed", error=str(exc), jobs=len(group))
            return
        # concurrently, so the store writes of one answer share a group commit
        await asyncio.gather(*(self._handle_safely(t, statuses.get(t.remote_id or ""))
                               for t in group))

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
        target = _REMOTE_TO_JOB.get(status.state)
        raw_changed = status.raw if status.raw != tracked.raw else None
        if target is None or target == tracked.state or not can_move(tracked.state, target):
            if status.state == RemoteState.UNKNOWN and raw_changed:
                self._log.warning("unrecognised remote status; still polling", raw=status.raw)
            tracked.raw = status.raw
            self._later(tracked, raw_changed)
            return
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
            self._later(tracked, None)

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

    def _later(self, tracked: Tracked, raw_changed: str | None) -> None:
        """Schedule the job's next poll with backoff; the store learns it in the next flush.

        A job polled early (to fill a request) keeps its interval: it was not due.
        """
        if tracked.early and tracked.interval is not None:
            tracked.early = False
        else:
            tracked.interval = self.backoff.next(tracked.interval)
        loop = asyncio.get_running_loop()
        self._push(loop.time() + tracked.interval, tracked.job_id)
        self._pending_schedule.append(
            (tracked.job_id, raw_changed, tracked.interval, _wall(tracked.interval)))

    async def _flush_schedule(self) -> None:
        if not self._pending_schedule:
            return
        rows, self._pending_schedule = self._pending_schedule, []
        try:
            await self.store.reschedule(rows)
        except StoreError as exc:
            # only the stored schedule is stale: a restart would poll these a little early
            self._log.warning("could not store poll schedule", error=str(exc), jobs=len(rows))

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
            tracked.interval = None
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
