"""What systemd is told while the daemon runs: watchdog pings and one-line status.

The watchdog rule. ``WATCHDOG=1`` is sent every ``WATCHDOG_USEC / 2`` by a task on the
event loop, so a blocked loop misses its pings by itself. Before each ping the task
also checks that the daemon's two engines are getting somewhere, and withholds the ping
while either is stuck (systemd then restarts the daemon, which resumes every job):

- the store writer is stuck when writes are queued and no transaction has finished
  (committed or failed) for ``writer_stall_after`` seconds (60 by default). A failed
  commit (disk full) counts as progress: callers get an answer, a restart cures nothing.
- a backend's poller is stuck when it has unfinished jobs, is not paused (429
  Retry-After or refused credentials: waiting is right then), and has not been granted
  a single request for ``poller_stall_after`` seconds (120 by default) or, when the
  backend's own rhythm is slower, twice its longest poll interval or two budget
  intervals. Every job is polled at least once per ``max_interval``, so a working
  poller is granted requests at least that often; a silent one means its loop or all
  its request slots hang.

An idle daemon (nothing queued, no unfinished jobs) is always healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.daemon.process import systemd
from qjobd.store.store import Store

log = structlog.get_logger("qjobd.watchdog")

WRITER_STALL_AFTER = 60.0
POLLER_STALL_AFTER = 120.0
#: how often the status line is recomputed (it is only sent when it changed)
STATUS_EVERY = 1.0


@dataclass(slots=True)
class _Mark:
    """A progress counter and the loop time it last moved."""

    value: int
    since: float


class Progress:
    """Decides whether the store writer and the pollers are making progress."""

    def __init__(self, store: Store, scheduler: Scheduler, *,
                 writer_stall_after: float = WRITER_STALL_AFTER,
                 poller_stall_after: float = POLLER_STALL_AFTER,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.scheduler = scheduler
        self.writer_stall_after = writer_stall_after
        self.poller_stall_after = poller_stall_after
        self._clock = clock or asyncio.get_running_loop().time
        self._writer: _Mark | None = None
        self._pollers: dict[str, _Mark] = {}

    def problem(self) -> str | None:
        """None while things move; else what is stuck, in words for the log and STATUS."""
        now = self._clock()
        return self._writer_problem(now) or self._poller_problem(now)

    def _writer_problem(self, now: float) -> str | None:
        writer = self.store.writer
        finished = writer.stats.commits + writer.stats.failed_commits
        mark = self._writer
        if mark is None or mark.value != finished or writer.backlog == 0:
            # an empty queue is an idle writer, not a stuck one: restart the clock
            self._writer = _Mark(finished, now)
            return None
        stuck_for = now - mark.since
        if stuck_for >= self.writer_stall_after:
            return (f"store writer stalled: {writer.backlog} writes queued, none finished "
                    f"for {stuck_for:.0f} s")
        return None

    def _poller_problem(self, now: float) -> str | None:
        for name, stats in self.scheduler.stats().items():
            mark = self._pollers.get(name)
            if mark is None or mark.value != stats.granted or stats.in_flight == 0 \
                    or stats.paused_for > 0:
                self._pollers[name] = _Mark(stats.granted, now)
                continue
            polling, rate = stats.polling, stats.requests_per_second
            limit = max(self.poller_stall_after,
                        2 * polling.max_interval * (1 + polling.jitter),
                        2 / rate if rate > 0 else 0.0)
            stuck_for = now - mark.since
            if stuck_for >= limit:
                return (f"poller of backend {name!r} stalled: {stats.in_flight} jobs "
                        f"unfinished, no request sent for {stuck_for:.0f} s")
        return None


def status_line(scheduler: Scheduler, where: str) -> str:
    """What the daemon is doing, for ``systemctl status``: jobs in flight, paused backends."""
    stats = scheduler.stats()
    jobs = sum(s.in_flight for s in stats.values())
    text = f"serving on {where}; {jobs} job{'' if jobs == 1 else 's'} in flight"
    busy = [f"{name} {s.in_flight}" for name, s in sorted(stats.items()) if s.in_flight]
    if busy and len(stats) > 1:
        text += f" ({', '.join(busy)})"
    paused = sorted(name for name, s in stats.items() if s.paused_for > 0)
    if paused:
        text += f"; paused: {', '.join(paused)}"
    return text


class Supervisor:
    """The task that pings the watchdog and keeps systemd's status line current."""

    def __init__(self, *, interval: float | None,
                 notify: Callable[[str], bool] = systemd.notify) -> None:
        #: seconds between watchdog pings (None: systemd wants none)
        self.interval = interval
        self._notify = notify
        self.progress: Progress | None = None
        self.status: Callable[[], str] | None = None
        #: set while the status line is owned by the lifecycle (starting, reloading...)
        self.paused_status = False
        self._last_status: str | None = None
        self._problem: str | None = None
        #: pings sent (for tests)
        self.pings = 0

    def notify(self, message: str) -> None:
        self._notify(message)

    def say(self, text: str) -> None:
        """Send a STATUS= line now (lifecycle steps: starting, reloading, stopping)."""
        self._last_status = text
        self._notify(systemd.status_message(text))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        next_status = loop.time()
        while True:
            now = loop.time()
            if self.interval is not None and now >= next_ping:
                self._watchdog()
                # a fixed rhythm; after a blocked loop, start again from now, no burst
                next_ping += self.interval
                if next_ping <= now:
                    next_ping = now + self.interval
            if now >= next_status:
                self._report()
                next_status = now + STATUS_EVERY
            wake = next_status if self.interval is None else min(next_ping, next_status)
            await asyncio.sleep(max(0.0, wake - loop.time()))

    def _watchdog(self) -> None:
        try:
            problem = self.progress.problem() if self.progress is not None else None
        except Exception:
            # a bug in the check must not get a working daemon killed: the loop is alive
            log.exception("the watchdog's progress check failed; pinging anyway")
            problem = None
        if problem is None:
            if self._problem is not None:
                log.warning("progress again; watchdog pings resume", was=self._problem)
                self._problem = None
            self._notify("WATCHDOG=1")
            self.pings += 1
            return
        if problem.split(":")[0] != (self._problem or "").split(":")[0]:
            log.error("withholding watchdog pings: systemd will restart the daemon",
                      problem=problem)
        self._problem = problem

    def _report(self) -> None:
        if self.paused_status or self.status is None:
            return
        text = self.status()
        if self._problem is not None:
            text = f"{self._problem}; {text}"
        if text != self._last_status:
            self.say(text)


@contextlib.asynccontextmanager
async def supervising(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    task = asyncio.create_task(supervisor.run(), name="supervisor")
    try:
        yield supervisor
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
