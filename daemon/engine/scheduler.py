"""The scheduler: routes batches to their backend's engine, cancels, and enforces timeouts."""

from __future__ import annotations

import asyncio
import functools
import heapq
import time
from collections.abc import Mapping, Sequence

import anyio
import structlog

from qjobd.backends.base import Backend
from qjobd.daemon.config import BackendConfig
from qjobd.daemon.engine.leases import LeaseKeeper
from qjobd.daemon.engine.notify import BatchChanges
from qjobd.daemon.engine.runner import BackendRunner, RunnerStats
from qjobd.store.cluster import Claimed, Cluster
from qjobd.store.models import Batch, CircuitRecord, Job
from qjobd.store.states import JobState
from qjobd.store.store import Store

log = structlog.get_logger("qjobd.scheduler")


class Scheduler:
    """Owns one :class:`BackendRunner` per configured backend."""

    def __init__(self, store: Store, backends: Mapping[str, Backend],
                 configs: Mapping[str, BackendConfig], changes: BatchChanges,
                 cluster: Cluster | None = None) -> None:
        self.store = store
        self.changes = changes
        self.runners = {name: BackendRunner(backend, configs[name], store, changes.notify)
                        for name, backend in backends.items()}
        #: several daemons on one PostgreSQL store: this node's leases (None: alone)
        self.leases: LeaseKeeper | None = None
        if cluster is not None:
            self.leases = LeaseKeeper(cluster, self.runners, self._adopt)
            for name, runner in self.runners.items():
                runner.on_pause = functools.partial(self._publish_pause, name)
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        #: set once every stored unfinished job is scheduled again (after a start)
        self.resumed = asyncio.Event()
        self.resumed_jobs = 0
        self.resume_seconds: float | None = None

    async def run(self) -> None:
        """Resume stored work, then drive every backend until cancelled."""
        started = time.monotonic()
        if self.leases is not None:
            await self.leases.start()
        else:
            await self._resume()
        self.resume_seconds = time.monotonic() - started
        self.resumed_jobs = self.in_flight()
        self.resumed.set()
        log.info("every stored job scheduled", jobs=self.resumed_jobs,
                 seconds=round(self.resume_seconds, 3))
        tasks = [asyncio.create_task(r.run(), name=f"runner-{n}") for n, r in self.runners.items()]
        tasks.append(asyncio.create_task(self._deadline_loop(), name="deadlines"))
        if self.leases is not None:
            tasks.append(asyncio.create_task(self.leases.run(), name="leases"))
            tasks.append(asyncio.create_task(self.leases.cluster.listen(
                on_batch=self._other_node_moved, on_cancel=self._other_node_canceled,
                on_pause=self._other_node_paused), name="notifications"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *self._background]:
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
            if self.leases is not None:  # every engine stopped: nothing more is sent
                with anyio.CancelScope(shield=True):  # the service's stop cancels us
                    await self.leases.leave()

    def accepted(self, batch: Batch, circuits: Sequence[CircuitRecord] = ()) -> None:
        """A batch was just stored (``circuits``: its circuits as stored): start its jobs
        (leased to this node, first epoch)."""
        self.runners[batch.backend].enqueue(batch.jobs, batch, circuits=circuits,
                                            epoch=1 if self.leases is not None else None)
        self._watch_deadline(batch)

    # -- several daemons, one store ----------------------------------------------------

    async def _adopt(self, claimed: list[Claimed]) -> None:
        """Jobs this node just leased: to their engines, settled as after a restart;
        their batches' cancels and deadlines are this node's to carry out now."""
        by_backend: dict[str, list[Claimed]] = {}
        for c in claimed:
            if c.job.backend in self.runners:
                by_backend.setdefault(c.job.backend, []).append(c)
        assert self.leases is not None
        for name, items in by_backend.items():
            runner = self.runners[name]
            timeout = float(getattr(runner.backend, "timeout", 30.0))
            await runner.resume([c.job for c in items],
                                epochs={c.job.id: c.epoch for c in items},
                                settle_after={c.job.id: self.leases.settle_delay(c, timeout)
                                              for c in items})
        for batch_id in sorted({c.job.batch_id for c in claimed}):
            batch = await self.store.get_batch(batch_id, with_jobs=True)
            if batch.cancel_requested:
                self.cancel(batch)
            self._watch_deadline(batch)

    def _other_node_moved(self, payload: str) -> None:
        node, _, batch_id = payload.partition("|")
        if not batch_id:
            self.changes.notify_all()  # reconnected: anything may have changed
        elif node != (self.leases.node if self.leases else None):
            self.changes.notify(batch_id)

    async def _other_node_canceled(self, payload: str) -> None:
        node, _, batch_id = payload.partition("|")
        if batch_id and node != (self.leases.node if self.leases else None):
            self.cancel(await self.store.get_batch(batch_id))

    def _other_node_paused(self, backend: str, seconds: float) -> None:
        runner = self.runners.get(backend)
        if runner is not None:
            log.info("another node was told to pause the backend; pausing", backend=backend,
                     pause=seconds)
            runner.pause(seconds)

    def _publish_pause(self, backend: str, seconds: float) -> None:
        if self.leases is not None:
            self._spawn(self.leases.cluster.publish_pause(backend, seconds))

    def cancel(self, batch: Batch) -> None:
        """End a batch's unfinished jobs as canceled (in the background)."""
        pending = [j.id for j in batch.jobs if not j.state.terminal]
        if pending:
            self._spawn(self.runners[batch.backend].cancel(pending))

    def stats(self) -> dict[str, RunnerStats]:
        """Each backend's engine, as a snapshot (health, metrics, watchdog, STATUS)."""
        return {name: runner.stats() for name, runner in self.runners.items()}

    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.stats().values())

    def next_poll_at(self, job: Job) -> float | None:
        """Wall time of the job's next poll as its engine has it now (None: not tracked)."""
        runner = self.runners.get(job.backend)
        return None if runner is None else runner.next_poll_at(job.id)

    async def reload(self, configs: Mapping[str, BackendConfig]) -> list[str]:
        """Apply new backend settings to the running engines (SIGHUP); no job stops.

        Each backend re-reads its own settings (its API key), then its request budget and
        polling schedule change in place: requests waiting on the old budget are woken,
        and each job's next interval follows the new schedule. Returns what was not
        applied: backends added, removed or given another type (a restart does those),
        and backends that refused their new settings (they keep their old ones).
        """
        problems: list[str] = []
        for name, runner in self.runners.items():
            new = configs.get(name)
            if new is None:
                problems.append(f"backend {name!r} is no longer configured; it keeps "
                                "running until the next restart")
                continue
            if new.type != runner.stats().type:
                problems.append(f"backend {name!r} changed type; that needs a restart")
                continue
            try:
                # always: a key can change in its credential file with the config unchanged
                await runner.reconfigure(new)
            except Exception as exc:  # a plug-in's bad reload must not stop the daemon
                problems.append(f"backend {name!r} kept its settings: {exc}")
        problems += [f"backend {name!r} is new; it starts with the next restart"
                     for name in configs if name not in self.runners]
        return problems

    # -- internals -------------------------------------------------------------------

    async def _resume(self) -> None:
        jobs = await self.store.active_jobs()
        by_backend: dict[str, list] = {}
        orphans = 0
        for job in jobs:
            if job.backend in self.runners:
                by_backend.setdefault(job.backend, []).append(job)
            else:
                orphans += 1
        if orphans:
            # kept, not failed: configuring the backend again resumes them
            log.warning("jobs of backends no longer configured are left as they are",
                        jobs=orphans)
        for name, runner_jobs in by_backend.items():
            await self.runners[name].resume(runner_jobs)
        for batch in await self.store.active_batches():
            if batch.backend not in self.runners:
                continue
            if batch.cancel_requested:
                self.cancel(await self.store.get_batch(batch.id))
            self._watch_deadline(batch)

    def _watch_deadline(self, batch: Batch) -> None:
        if batch.deadline is None:
            return
        first = not self._deadlines or batch.deadline < self._deadlines[0][0]
        heapq.heappush(self._deadlines, (batch.deadline, batch.id))
        if first:
            self._deadline_wake.set()

    async def _deadline_loop(self) -> None:
        while True:
            self._deadline_wake.clear()
            if not self._deadlines:
                await self._deadline_wake.wait()
                continue
            delay = self._deadlines[0][0] - time.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._deadline_wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            _, batch_id = heapq.heappop(self._deadlines)
            batch = await self.store.get_batch(batch_id)
            pending = [j.id for j in batch.jobs if not j.state.terminal]
            if pending:
                log.info("batch timed out", batch_id=batch_id, backend=batch.backend,
                         jobs=len(pending), timeout=batch.timeout)
                self._spawn(self.runners[batch.backend].cancel(
                    pending, reason=JobState.TIMED_OUT,
                    why=f"the batch's timeout of {batch.timeout:g} s passed"))

    def _spawn(self, coro: object) -> None:
        task = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
