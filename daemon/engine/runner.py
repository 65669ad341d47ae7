"""One backend's engine: submits its queued jobs, polls its remote jobs, stores results.

The runner holds the I/O loops: a pool of submitters and one poll loop. What they decide
comes from three pure pieces: when each job is polled next (``schedule.py``: its backoff,
stored with the job so a restart continues it), which polls are due (``calendar.py``:
polls that fall due together are merged into one request where the provider can answer
for many jobs at once), and what to do when something fails (``policy.py``). Every
request draws from the backend's budget; a 429 pauses this backend only.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import structlog

from qjobd.backends import qasm
from qjobd.backends.base import Backend, Circuit, RemoteState, RemoteStatus, SubmitRequest
from qjobd.backends.errors import BackendError
from qjobd.daemon.config import BackendConfig, PollingConfig
from qjobd.daemon.engine.calendar import PollCalendar
from qjobd.daemon.engine.circuitcache import CircuitCache
from qjobd.daemon.engine.histogram import Histogram
from qjobd.daemon.engine.policy import LOOKUP_CLOCK_SKEW, Action, Decision, RetryPolicy, Step
from qjobd.daemon.engine.ratelimit import Priority, RequestBudget
from qjobd.daemon.engine.schedule import PollSchedule
from qjobd.store.errors import LeaseLost
from qjobd.store.models import Batch, CircuitRecord, Job
from qjobd.store.states import JobState, can_move
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
#: at most this many requests to one backend in flight at once
MAX_IN_FLIGHT = 16
#: concurrent submissions per backend (each waits on the budget like any request)
SUBMITTERS = 16

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
    #: a cancel (or timeout) that arrived while a submitter held the job
    pending_end: tuple[JobState, str] | None = None
    #: a submitter holds the job: from before its intent is stored until the create ends
    claimed: bool = False
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
    #: taken from the calendar for a poll not yet answered (until it is filed again)
    taken: bool = False
    #: the key its create carries, when the engine was handed the job (else read)
    submission_key: str | None = None
    #: its lease's epoch, which every store write for it names (several daemons on one
    #: PostgreSQL store, store/cluster.py); None alone on a store
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class RunnerStats:
    """One backend's engine at one moment: for health, metrics, the watchdog and STATUS."""

    name: str
    type: str
    #: jobs it drives now (not yet terminal)
    in_flight: int = 0
    #: queued jobs waiting for a submitter
    submit_backlog: int = 0
    #: requests sent, and those that failed, since the daemon started
    requests: int = 0
    errors: int = 0
    last_error: str | None = None
    #: the request budget (0: unlimited)
    requests_per_second: float = 0.0
    #: seconds left of a pause (429 Retry-After, refused credentials); 0 if none
    paused_for: float = 0.0
    #: requests the budget let go so far (the watchdog's sign of progress)
    granted: int = 0
    #: requests waiting for the budget now
    budget_waiters: int = 0
    #: the schedule the jobs are polled on
    polling: PollingConfig = field(default_factory=PollingConfig)
    #: seconds from a poll's due time to its request being sent, per job polled
    poll_lag: Histogram = field(default_factory=Histogram)
    #: jobs whose circuits the engine holds in memory (daemon/engine/circuitcache.py)
    circuits_cached: int = 0


class BackendRunner:
    """Drives every job of one backend to a terminal state."""

    def __init__(self, backend: Backend, config: BackendConfig, store: Store,
                 on_batch_change: Callable[[str], None]) -> None:
        self.backend = backend
        self.name = backend.name
        self._config = config
        self._store = store
        self._budget = RequestBudget(config.requests_per_second)
        # a call that sends several requests draws from the budget for each after the first
        backend.pace = self._pace
        self._schedule = PollSchedule(config.polling)
        self._policy = RetryPolicy(self.name, config.polling)
        self._calendar = PollCalendar(asyncio.get_running_loop().time)
        self._on_batch_change = on_batch_change
        self._log = log.bind(backend=self.name)
        self._jobs: dict[str, Tracked] = {}
        self._wake = asyncio.Event()
        self._submit_queue: asyncio.Queue[str] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_schedule: list[tuple[str, str | None, float, float]] = []
        #: the schedule write in progress: the poll loop does not wait for its commit
        self._flushing: asyncio.Task[None] | None = None
        self._batches: dict[str, Batch] = {}
        #: the circuits of jobs in flight, for their create and their results
        self._circuits = CircuitCache()
        self._requests = 0
        self._errors = 0
        self._last_error: str | None = None
        self._poll_lag = Histogram()
        #: several daemons on one store: whether this node's leases are still good (it
        #: sends no create once they may have passed to another node), and who hears of a
        #: pause the provider ordered (every other node pauses too)
        self.leases_valid: Callable[[], bool] | None = None
        self.on_pause: Callable[[float], None] | None = None
        #: the node's share of the backend's budget (1 alone; 1/N of N live nodes)
        self._share = 1.0

    # -- public ----------------------------------------------------------------------

    def stats(self) -> RunnerStats:
        """A snapshot of this engine's figures."""
        budget = self._budget
        return RunnerStats(
            name=self.name, type=self._config.type, in_flight=len(self._jobs),
            submit_backlog=self._submit_queue.qsize(), requests=self._requests,
            errors=self._errors, last_error=self._last_error,
            requests_per_second=budget.rate, paused_for=budget.paused_for,
            granted=budget.granted, budget_waiters=budget.waiting,
            polling=self._config.polling, poll_lag=self._poll_lag.copy(),
            circuits_cached=len(self._circuits))

    async def reconfigure(self, config: BackendConfig) -> None:
        """Take new settings in place (SIGHUP); no job stops.

        The backend re-reads its own settings first (its API key): if it refuses them
        (raises), nothing changes. Then requests waiting on the old budget are woken, and
        each job's next interval follows the new schedule.
        """
        await self.backend.reconfigure(config.options)
        rate_changed = config.requests_per_second != self._config.requests_per_second
        if config.polling != self._config.polling:
            self._schedule = PollSchedule(config.polling)
            self._policy = RetryPolicy(self.name, config.polling)
        self._config = config
        if rate_changed:
            self._apply_rate()

    def next_poll_at(self, job_id: str) -> float | None:
        """Wall time of the job's next poll, if this engine tracks it."""
        tracked = self._jobs.get(job_id)
        return None if tracked is None else tracked.next_at

    async def resume(self, jobs: Iterable[Job], *, epochs: Mapping[str, int] | None = None,
                     settle_after: Mapping[str, float] | None = None) -> None:
        """Take over non-terminal jobs found in the store: at start, or leased from a node
        that died (``epochs``: each job's lease; ``settle_after``: seconds to wait before
        settling an interrupted submission, so that a create its last holder sent before
        its lease ran out has landed by then)."""
        now, wall = self._calendar.now(), time.time()
        durable = self.backend.capabilities.durable
        overdue: list[Tracked] = []
        for job in jobs:
            if job.id in self._jobs:  # claimed again (its lease had run out): a new epoch
                if epochs is not None and job.id in epochs:
                    self._jobs[job.id].epoch = epochs[job.id]
                continue
            tracked = Tracked(job.id, job.batch_id, job.state, job.remote_id,
                              job.poll_interval, job.remote_status, next_at=job.next_poll_at,
                              saved_at=job.next_poll_at, submission_key=job.submission_key,
                              epoch=None if epochs is None else epochs.get(job.id))
            if job.poll_interval is not None:
                tracked.saved_step = self._schedule.step_of(job.poll_interval)
            self._jobs[job.id] = tracked
            if job.state == JobState.QUEUED:
                self._submit_queue.put_nowait(job.id)
            elif job.state == JobState.SUBMITTING or not durable:
                delay = (settle_after or {}).get(job.id, 0.0)
                self._spawn(self._recover_after(tracked, delay) if delay > 0
                            else self._recover(tracked))
            else:
                wait = (job.next_poll_at - wall) if job.next_poll_at else 0.0
                if wait <= 0:
                    overdue.append(tracked)
                else:
                    self._push(tracked, now + wait)
        caps = self.backend.capabilities
        window = self._schedule.resume_spread(
            len(overdue), per_request=caps.max_status_batch if caps.batch_status else 1,
            rate=self._config.requests_per_second)
        for tracked in overdue:
            self._push(tracked, now + random.uniform(0, window))
        if self._jobs:
            self._log.info("resumed jobs", jobs=len(self._jobs))

    def enqueue(self, jobs: Iterable[Job], batch: Batch | None = None, *,
                circuits: Sequence[CircuitRecord] = (), epoch: int | None = None) -> None:
        """Accept newly stored (queued) jobs; ``batch``, the one just stored, and
        ``circuits``, its circuits as stored, save the submitter reading them back;
        ``epoch``: their leases' (several daemons)."""
        if batch is not None:
            self._remember(dataclasses.replace(batch, jobs=()))
        by_label = {c.label: c for c in circuits}
        for job in jobs:
            if job.id in self._jobs:
                # resumed from the store already: a batch stored while the daemon was
                # starting can be read by its resume before the API hands it over. Two
                # entries would be two submitters, and the one whose job the other
                # replaced would drive a job a cancel no longer finds
                continue
            self._jobs[job.id] = Tracked(job.id, job.batch_id, job.state, None, None, None,
                                         submission_key=job.submission_key, epoch=epoch)
            if by_label and job.labels and all(label in by_label for label in job.labels):
                self._circuits.put(job.id, [by_label[label] for label in job.labels])
            self._submit_queue.put_nowait(job.id)

    def held(self) -> dict[str, int | None]:
        """The jobs this engine drives, with their leases' epochs."""
        return {job_id: t.epoch for job_id, t in self._jobs.items()}

    def release(self, job_ids: Iterable[str], why: str) -> int:
        """Let go of jobs whose lease passed to another node: nothing more is sent or
        written for them here (a request in flight finds them gone, or is fenced)."""
        released = 0
        for job_id in job_ids:
            tracked = self._jobs.pop(job_id, None)
            self._circuits.drop(job_id)
            if tracked is not None:
                tracked.pending_end = None
                released += 1
        if released:
            self._log.info("released jobs", jobs=released, reason=why)
        return released

    def set_share(self, share: float) -> None:
        """This node's share of the backend's budget: ``requests_per_second`` is the
        budget of every node together (several daemons on one store)."""
        self._share = share
        self._apply_rate()

    def _apply_rate(self) -> None:
        rate = self._config.requests_per_second  # 0: no budget, whatever the share
        self._budget.set_rate(rate * self._share)

    def pause(self, seconds: float) -> None:
        """Another node was told to pause this backend: pause here too."""
        self._budget.pause(seconds)

    async def cancel(self, job_ids: Sequence[str], *, reason: JobState = JobState.CANCELED,
                     why: str = "canceled by user") -> None:
        """End these jobs as ``reason``, canceling their remote jobs first."""
        error = why if reason != JobState.CANCELED else None
        remote: list[Tracked] = []
        for job_id in job_ids:
            tracked = self._jobs.get(job_id)
            if tracked is None:
                continue
            if tracked.state == JobState.SUBMITTING or tracked.claimed:
                # the create may be in flight (or about to be): end the job once its
                # remote id is known, so the remote job is canceled too instead of
                # running orphaned; or before the create, so it never starts
                tracked.pending_end = (reason, why)
            elif tracked.remote_id is None:
                await self._end(tracked, reason, error, why)
            else:
                remote.append(tracked)
        chunk = max(1, self.backend.capabilities.max_status_batch)
        for start in range(0, len(remote), chunk):
            group = remote[start:start + chunk]
            ids = [t.remote_id for t in group]
            try:
                await self._request(self.backend.cancel, ids)
            except Exception as exc:
                self._decide(Step.CANCEL, exc, jobs=len(group))
            # a job may have finished before the cancel reached it (a provider may still
            # answer "canceled"): ask, and keep what it finished
            try:
                statuses = await self._request(self.backend.status, ids)
            except Exception as exc:
                self._decide(Step.CONFIRM, exc, jobs=len(group))
                statuses = {}
            for tracked in group:
                if tracked.job_id not in self._jobs:
                    continue
                status = statuses.get(tracked.remote_id or "")
                if status is not None and status.state in (RemoteState.COMPLETED,
                                                           RemoteState.FAILED):
                    await self._handle_safely(tracked, status)
                else:
                    await self._end(tracked, reason, error, why)

    async def _end(self, tracked: Tracked, reason: JobState, error: str | None,
                   why: str) -> None:
        """A cancel's or a timeout's move (a job whose lease passed on: its holder's)."""
        try:
            await self._move(tracked, reason, error=error, detail={"reason": why})
        except Exception as exc:
            if not self._policy.released(exc):
                raise

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
                except Exception as exc:
                    await self._obey(tracked, self._decide(Step.SUBMIT, exc))

    async def _submit(self, tracked: Tracked) -> None:
        tracked.claimed = True
        try:
            await self._create(tracked)
        finally:
            tracked.claimed = False
            if tracked.pending_end is not None and tracked.state == JobState.QUEUED:
                # ended before its intent was stored (or put back): nothing remote exists
                reason, why = tracked.pending_end
                tracked.pending_end = None
                self._spawn(self.cancel([tracked.job_id], reason=reason, why=why))

    async def _create(self, tracked: Tracked) -> None:
        try:
            request = await self._build_request(tracked)
        except Exception as exc:
            await self._obey(tracked, self._decide(Step.PREPARE, exc))
            return
        if tracked.pending_end is not None:
            return  # canceled while its request was built: never started (see _submit)
        # the intent is stored before the request: a crash from here on is reconciled
        await self._move(tracked, JobState.SUBMITTING)
        if tracked.pending_end is not None:
            # canceled while the intent was stored: no create was sent, so nothing runs
            reason, why = tracked.pending_end
            tracked.pending_end = None
            error = why if reason != JobState.CANCELED else None
            await self._move(tracked, reason, error=error, detail={"reason": why})
            return

        async def created(remote_id: str) -> None:
            # a multi-request create: keep the id before the upload, to settle a crash
            await self._store.record_remote_id(tracked.job_id, remote_id, epoch=tracked.epoch)
            tracked.remote_id = remote_id

        async def submit(request: SubmitRequest, **kw: Any) -> str:
            # after the budget's wait, just before the request: a node whose leases may
            # have run out sends nothing (another node may be settling the job already)
            if self.leases_valid is not None and not self.leases_valid():
                raise LeaseLost(f"job {tracked.job_id}: this node's leases may have "
                                "expired; it sends no create")
            return await self.backend.submit(request, **kw)

        try:
            remote_id = await self._request(submit, request, created=created,
                                            _priority=Priority.CREATE)
        except Exception as exc:
            await self._obey(tracked, self._decide(Step.CREATE, exc))
            return
        self._log.info("submitted", remote_id=remote_id)
        await self._submitted(tracked, remote_id)

    async def _build_request(self, tracked: Tracked) -> SubmitRequest:
        batch = await self._batch(tracked.batch_id)
        key = tracked.submission_key
        if key is None:  # resumed or put back: the store has it
            key = tracked.submission_key = (await self._store.get_job(tracked.job_id)
                                            ).submission_key
        records = await self._records(tracked.job_id)
        versions = self.backend.capabilities.qasm_versions
        if all(r.qasm_version in versions for r in records):
            # checked at submission and stored with its version: sent as it is
            circuits = [Circuit(r.label, r.source, r.qasm_version, r.num_clbits)
                        for r in records]
        else:
            # converting is CPU work (about 1 ms per OpenQASM 3 circuit): off the loop
            circuits = await anyio.to_thread.run_sync(
                lambda: [self._wire_circuit(r.label, r.source) for r in records])
        return SubmitRequest(submission_key=key, circuits=circuits,
                             shots=batch.shots, name=batch.name or None, options=batch.options)

    def _wire_circuit(self, label: str, source: str) -> Circuit:
        parsed = qasm.parse_circuit(label, source)
        versions = self.backend.capabilities.qasm_versions
        wire = qasm.convert(parsed, versions)
        version = parsed.qasm_version if parsed.qasm_version in versions else min(versions)
        return Circuit(label=label, source=wire, qasm_version=version,
                       num_clbits=parsed.num_clbits)

    async def _submitted(self, tracked: Tracked, remote_id: str, *, found: bool = False) -> None:
        first = self._schedule.first()
        detail = {"reason": "interrupted submission settled: the job exists remotely"} \
            if found else None
        await self._move(tracked, JobState.SUBMITTED, remote_id=remote_id,
                         poll_interval=first.interval, next_poll_at=first.at, detail=detail)
        tracked.interval, tracked.next_at, tracked.saved_at = first.interval, first.at, first.at
        tracked.saved_step = first.step
        self._push(tracked, self._calendar.now() + first.wait)
        self._poll_when_terminal(tracked, remote_id)

    def _poll_when_terminal(self, tracked: Tracked, remote_id: str) -> None:
        """Poll the job the moment its backend says it ended (``Backend.when_terminal``,
        e.g. the local simulator) rather than at its next scheduled poll: its waiters
        wake at once. The poll still decides what happened.

        The job is filed due now; its later entry is skipped when it comes out (the job
        has ended by then). One poll of a job at a time: while one is taken or in
        flight (it usually finds the end itself), the job is looked at again after it.
        """
        ended = self.backend.when_terminal(remote_id)
        if ended is None:
            return
        loop = asyncio.get_running_loop()

        def poll_now(_: object = None, delay: float = COALESCE_WINDOW) -> None:
            if self._jobs.get(tracked.job_id) is not tracked or tracked.remote_id != remote_id:
                return  # it ended, or was submitted again, meanwhile
            if tracked.taken:  # a poll held back by the budget may take a while: back off
                loop.call_later(delay, poll_now, None, min(2 * delay, 1.0))
            else:
                self._push(tracked, self._calendar.now())

        ended.add_done_callback(poll_now)

    async def _recover_after(self, tracked: Tracked, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._jobs.get(tracked.job_id) is tracked:
            await self._recover(tracked)

    async def _recover(self, tracked: Tracked) -> None:
        """Settle a job whose submission or remote job may have been lost with a crash.

        Whatever path it takes, the event log says which: found remotely, upload resumed,
        partial job canceled and submitted again, or proven absent and submitted again.
        """
        with structlog.contextvars.bound_contextvars(
                job_id=tracked.job_id, batch_id=tracked.batch_id, backend=self.name):
            job = await self._store.get_job(tracked.job_id)
            decision = self._policy.decide(
                Step.RECOVER, caps=self.backend.capabilities,
                uploading=job.remote_id is not None and job.state == JobState.SUBMITTING)
            if decision.action is Action.RESUME_UPLOAD:
                await self._resume_upload(tracked, job)
            elif decision.action is Action.LOOKUP:
                await self._lookup(tracked, job)
            else:
                await self._obey(tracked, decision)

    async def _lookup(self, tracked: Tracked, job: Job) -> None:
        remote_id = await self._keep_trying(
            "lookup", self.backend.lookup, job.submission_key,
            # the intent was stored after the job row: nothing older can match
            created_after=job.created_at - LOOKUP_CLOCK_SKEW)
        if remote_id is None:
            await self._requeue(tracked, "interrupted submission: the provider has no such "
                                         "job; submitting again")
        else:
            self._log.info("interrupted submission found remotely", remote_id=remote_id)
            await self._submitted(tracked, remote_id, found=True)

    async def _resume_upload(self, tracked: Tracked, job: Job) -> None:
        partial_id = job.remote_id
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
        """Send a settling request until the policy stops retrying it."""
        delay: float | None = None
        while True:
            try:
                return await self._request(fn, *args, **kw)
            except Exception as exc:
                decision = self._decide(Step.SETTLE, exc, previous=delay, request=what)
                if decision.action is not Action.RETRY:
                    raise  # nothing else is safe: until it answers, nothing is known
                delay = decision.delay
                await asyncio.sleep(delay)

    async def _requeue(self, tracked: Tracked, reason: str) -> None:
        await self._move(tracked, JobState.QUEUED, detail={"reason": reason})
        self._submit_queue.put_nowait(tracked.job_id)

    # -- polling ---------------------------------------------------------------------

    def _push(self, tracked: Tracked, due: float) -> None:
        tracked.due, tracked.taken = due, False
        if self._calendar.add(tracked.job_id, due):
            self._wake.set()

    async def _poll_loop(self) -> None:
        calendar = self._calendar
        while True:
            self._wake.clear()
            wait = calendar.wait()
            if wait is None or wait > 0:
                self._flush_soon()
                await self._sleep(wait)
                continue
            jobs = self._jobs
            due = [t for t in map(jobs.get, calendar.take_due(COALESCE_WINDOW))
                   if t is not None and _pollable(t)]
            caps = self.backend.capabilities
            size = caps.max_status_batch if caps.batch_status else 1
            if size > 1 and due:
                self._fill(due, size)
            for start in range(0, len(due), size):
                await self._slots.acquire()
                self._spawn(self._poll(due[start:start + size]), slot=True)

    async def _sleep(self, seconds: float | None) -> None:
        """Until ``seconds`` pass (None: forever), or an earlier poll is filed."""
        if seconds is None:
            await self._wake.wait()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _fill(self, due: list[Tracked], size: int) -> None:
        """Top the last request up with the jobs due next: polled early at no extra cost.

        Without this, 1,000 jobs at a 30 s interval fall due ~30 ms apart and each request
        would carry one or two ids; filled, each request carries ``size``.
        """
        room = -len(due) % size
        while room and (job_id := self._calendar.take_next()) is not None:
            tracked = self._jobs.get(job_id)
            if tracked is not None and _pollable(tracked):
                tracked.early = True
                due.append(tracked)
                room -= 1

    async def _poll(self, group: list[Tracked]) -> None:
        try:
            statuses = await self._request(self._status, group)
        except Exception as exc:
            decision = self._decide(Step.POLL, exc, jobs=len(group))
            for tracked in group:
                await self._obey(tracked, decision)
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
        now = self._calendar.now()
        for tracked in group:
            if not tracked.early:  # a job polled early to fill the request was not due
                self._poll_lag.observe(now - tracked.due)
        return await self.backend.status([t.remote_id for t in group])

    async def _handle_safely(self, tracked: Tracked, status: RemoteStatus | None) -> None:
        with structlog.contextvars.bound_contextvars(
                job_id=tracked.job_id, batch_id=tracked.batch_id, backend=self.name):
            try:
                await self._handle(tracked, status)
            except Exception as exc:
                await self._obey(tracked, self._decide(Step.RECORD, exc))

    async def _handle(self, tracked: Tracked, status: RemoteStatus | None) -> None:
        if status is None:
            decision = self._policy.decide(Step.UNKNOWN_JOB, caps=self.backend.capabilities)
            self._heed(decision, remote_id=tracked.remote_id)
            await self._obey(tracked, decision)
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
        records = await self._records(tracked.job_id)
        circuits = [Circuit(r.label, r.source, r.qasm_version, r.num_clbits) for r in records]
        try:
            counts = await self._request(self.backend.results, tracked.remote_id, circuits)
        except Exception as exc:
            await self._obey(tracked, self._decide(Step.RESULTS, exc),
                             remote_status=status.raw)
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
        """Schedule the job's next poll (``PollSchedule.after``); the store learns it in the
        next flush if it is news: a new raw status, or what ``NextPoll.is_news`` says.

        A clean stop stores every due time (``run``); the API shows the live one
        (``next_poll_at``).
        """
        nxt = self._schedule.after(tracked.interval, early=tracked.early,
                                   near_end=tracked.near_end, eta=eta)
        tracked.interval, tracked.near_end, tracked.early = nxt.interval, nxt.near_end, False
        self._push(tracked, self._calendar.now() + nxt.wait)
        tracked.next_at = nxt.at
        if raw_changed is not None or nxt.is_news(tracked.saved_step, tracked.saved_at):
            self._pending_schedule.append((tracked.job_id, raw_changed, nxt.interval, nxt.at))
            tracked.saved_step, tracked.saved_at = nxt.step, nxt.at

    def _flush_soon(self) -> None:
        """Store the pending schedule in the background, one write at a time."""
        if self._pending_schedule and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.create_task(self._flush_schedule())

    async def _flush_schedule(self) -> None:
        if not self._pending_schedule:
            return
        rows, self._pending_schedule = self._pending_schedule, []
        try:
            await self._store.reschedule(rows)
        except Exception as exc:
            self._decide(Step.SCHEDULE, exc, jobs=len(rows))  # REWRITE: with the next poll
            for job_id, *_ in rows:
                tracked = self._jobs.get(job_id)
                if tracked is not None:
                    tracked.saved_step = None

    # -- the policy's decisions ----------------------------------------------------------

    def _decide(self, step: Step, error: Exception, *, previous: float | None = None,
                **log_fields: Any) -> Decision:
        """Ask the policy what ``error``, raised during ``step``, calls for; pause the
        backend and log as it says, and raise the error again if it is not this step's to
        handle."""
        decision = self._policy.decide(step, error, previous=previous)
        self._heed(decision, error=str(error), **log_fields)
        if decision.action is Action.RAISE:
            raise error
        return decision

    def _heed(self, decision: Decision, **log_fields: Any) -> None:
        """The backend-wide part of a decision: its pause, and its log line."""
        if decision.pause:
            self._budget.pause(decision.pause)
            log_fields["pause"] = decision.pause
            if self.on_pause is not None:
                self.on_pause(decision.pause)
        if decision.delay:
            log_fields["delay"] = round(decision.delay, 3)
        if decision.say is not None:
            getattr(self._log, decision.level)(decision.say, **log_fields)

    async def _obey(self, tracked: Tracked, decision: Decision, **changes: Any) -> None:
        """Do for one job what the policy decided (``changes``: stored with a FAIL)."""
        match decision.action:
            case Action.POLL_AGAIN:
                self._later(tracked, None)
            case Action.FAIL:
                await self._move(tracked, JobState.FAILED, error=decision.error, **changes)
            case Action.REQUEUE:
                await self._requeue(tracked, decision.error or "")
            case Action.RESYNC:
                await self._resync(tracked)
            case Action.RECOVER:
                await self._recover(tracked)
            case Action.RECONCILE:
                await asyncio.sleep(decision.delay)
                self._spawn(self._recover(tracked))
            case Action.RETRY_LATER:
                self._retry_later(tracked, decision.delay)
            case Action.CARRY_ON:
                pass
            case Action.RELEASE:
                self.release([tracked.job_id], "its lease passed to another node")
            case _:
                raise ValueError(f"{decision.action} is not an action on one job")

    # -- plumbing --------------------------------------------------------------------

    async def _pace(self) -> None:
        """A backend's request after the first of one call: budgeted and counted too."""
        await self._budget.acquire(_PRIORITY.get())
        self._requests += 1

    async def _request(self, fn: Callable[..., Awaitable[R]], *args: Any,
                       _priority: Priority = Priority.TRACK, **kw: Any) -> R:
        """Send one call to the backend, drawing from its budget.

        Creates wait behind tracking requests (polls, results, cancels, lookups): work
        already running remotely is followed up before more is started.
        """
        await self._budget.acquire(_priority)
        self._requests += 1
        token = _PRIORITY.set(_priority)
        try:
            return await fn(*args, **kw)
        except BackendError as exc:  # counted here; what it calls for is the caller's
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            _PRIORITY.reset(token)

    async def _move(self, tracked: Tracked, target: JobState, **changes: Any) -> None:
        try:
            batch_state = await self._store.transition(tracked.job_id, target,
                                                       epoch=tracked.epoch, **changes)
        except Exception as exc:
            if self._policy.released(exc):  # nothing more is done for it here
                self.release([tracked.job_id], "its lease passed to another node")
            raise
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
            self._circuits.drop(tracked.job_id)
        elif tracked.pending_end is not None and target != JobState.SUBMITTING:
            reason, why = tracked.pending_end
            tracked.pending_end = None
            self._spawn(self.cancel([tracked.job_id], reason=reason, why=why))
        self._on_batch_change(tracked.batch_id)

    async def _records(self, job_id: str) -> Sequence[CircuitRecord]:
        """A job's circuits: as the API handed them over, else from the store (then kept
        until the job ends, for its results, if the cache has room)."""
        records = self._circuits.get(job_id)
        if records is None:
            records = await self._store.circuits(job_id)
            if job_id in self._jobs:
                self._circuits.put(job_id, records)
        return records

    async def _batch(self, batch_id: str) -> Batch:
        """A batch's settings (shots, name, options never change), read once per batch."""
        batch = self._batches.get(batch_id)
        if batch is None:
            batch = await self._store.get_batch(batch_id, with_jobs=False)
            self._remember(batch)
        return batch

    def _remember(self, batch: Batch) -> None:
        if len(self._batches) >= 1024:
            self._batches.pop(next(iter(self._batches)))
        self._batches[batch.id] = batch

    async def _resync(self, tracked: Tracked) -> None:
        """Take the store's word for a job whose in-memory state went stale."""
        job = await self._store.get_job(tracked.job_id)
        tracked.state, tracked.remote_id = job.state, job.remote_id
        if job.state.terminal:
            self._jobs.pop(job.id, None)
            self._circuits.drop(job.id)
        elif job.state == JobState.QUEUED:
            self._submit_queue.put_nowait(job.id)
        elif job.remote_id is not None:
            self._later(tracked, None)

    def _retry_later(self, tracked: Tracked, delay: float) -> None:
        """After a failure mid-submission, try again once the store may be back."""

        async def retry() -> None:
            await asyncio.sleep(delay)
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
                error = t.exception()
                if self._policy.released(error):  # e.g. a settling taken by another node
                    self._log.info("lease lost: another node has the job", error=str(error))
                    return
                self._log.error("engine task failed", error=repr(error))

        task.add_done_callback(done)


def _pollable(tracked: Tracked) -> bool:
    """Whether a job taken from the calendar is still one to poll; if so it is marked
    taken (a second entry of it, taken before its poll is answered, is not)."""
    if tracked.remote_id is None or tracked.state.terminal or tracked.taken:
        return False
    tracked.taken = True
    return True
