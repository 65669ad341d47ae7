"""The daemon's life: open the store, start backends, serve the socket, stop cleanly.

SIGTERM and SIGINT stop it: no new connections, in-flight requests finish, store
writes finish, remote jobs are left running for the next start to resume. SIGHUP
re-reads the configuration and applies backend budgets, polling and keys in place.

Under systemd (``Type=notify``) it says ``READY=1`` once the store is open and the
socket accepts, keeps ``STATUS=`` current, pings the watchdog while it makes progress
(daemon/watchdog.py), brackets a reload with ``RELOADING=1``/``READY=1``, and says
``STOPPING=1`` on SIGTERM. A socket passed by systemd (qjobd.socket) is served as it
is: its owner, group and mode are the socket unit's, and it is not removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from qjobd.backends import qasm
from qjobd.backends.base import Backend
from qjobd.backends.registry import create_backend
from qjobd.daemon.api.app import Context
from qjobd.daemon.api.parsing import ParsePool
from qjobd.daemon.api.server import SocketInUse, SocketServer, bind_socket, make_server
from qjobd.daemon.config import Config, ConfigError, load_config
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.daemon.process import logs, systemd
from qjobd.daemon.process.watchdog import Progress, Supervisor, status_line, supervising
from qjobd.daemon.process.wiring import wire
from qjobd.errors import QjobdError
from qjobd.store import retention
from qjobd.store.factory import is_url, mask_url, open_store, url_password

if TYPE_CHECKING:
    from qjobd.store.cluster import Cluster
    from qjobd.store.factory import AnyStore

log = structlog.get_logger("qjobd")

class CoreTaskFailed(QjobdError):
    """The scheduler or the server ended on its own; the daemon stopped."""


#: settings that only a restart changes (the socket and the store are open by then)
RESTART_ONLY = ("socket", "database", "socket_mode")


@contextlib.contextmanager
def exclusive(database: Path | str) -> Iterator[None]:
    """Hold a lock beside the database: two daemons on one store would submit jobs twice.

    A PostgreSQL database has no file to lock beside: the store takes a lock in the
    database itself (store/postgres.py).
    """
    if isinstance(database, str):
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SocketInUse(f"another qjobd is already serving on database {database}") \
                from None
        yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def started_backends(config: Config) -> AsyncIterator[dict[str, Backend]]:
    backends: dict[str, Backend] = {}
    try:
        for name, bc in config.backends.items():
            backend = create_backend(name, bc.type, bc.options)
            logs.add_secrets(backend.secrets())
            await backend.start()
            backends[name] = backend
        yield backends
    finally:
        for name, backend in backends.items():
            try:
                await backend.aclose()
            except Exception as exc:
                log.warning("backend did not close cleanly", backend=name, error=repr(exc))


async def run(config: Config, *, config_path: str | os.PathLike[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT. ``config_path`` is re-read on SIGHUP."""
    # first of all: before any worker process is started, so none inherits the sockets
    inherited = systemd.listen_sockets()
    try:
        with exclusive(config.daemon.database):
            await _Service(config, config_path, inherited).serve()
    finally:
        for sock in inherited:
            sock.close()


class _Service:
    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None,
                 inherited: list[socket.socket]) -> None:
        self.config = config
        self.config_path = config_path
        self.inherited = inherited
        self.supervisor = Supervisor(interval=systemd.watchdog_interval())
        self.stop = asyncio.Event()
        self.reload_wanted = asyncio.Event()
        self.retention_stats = retention.RetentionStats()

    def _on_stop(self) -> None:
        if not self.stop.is_set():
            # at once, from the handler: systemd then knows the stop is ours, not a crash
            systemd.notify("STOPPING=1")
            self.stop.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        handled = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        # installed before anything slow: SIGHUP's default action would kill the daemon
        loop.add_signal_handler(signal.SIGHUP, self.reload_wanted.set)
        handled += _install_test_hooks(loop)
        try:
            async with supervising(self.supervisor):
                await self._serve()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        config, sup = self.config, self.supervisor
        sup.say("opening the store")
        database = config.daemon.database
        if is_url(database):
            assert isinstance(database, str)
            logs.add_secrets([url_password(database) or ""])
        # several daemons may share a PostgreSQL store: each joins as a node (a name only
        # one live daemon may have) and drives the jobs it holds the leases of
        store = await open_store(database)
        cluster: Cluster | None = None
        if is_url(database):
            from qjobd.store.cluster import Cluster
            from qjobd.store.postgres import PostgresStore
            assert isinstance(store, PostgresStore)
            cluster = Cluster(store, config.daemon.node_name(), config.daemon.lease_seconds)
            try:
                await cluster.join()
            except BaseException:
                await store.close()
                raise
        log.info("store open", database=mask_url(database) if isinstance(database, str)
                 else str(database), node=None if cluster is None else cluster.node)
        # the parse workers start now, in the background: they import Qiskit while the
        # backends start; a submission that comes before they are ready waits for them
        parser = ParsePool(config.daemon.parse_workers or None,
                           memory=config.daemon.parse_worker_memory or None)
        parser.start()
        # no parse in this process, even on a cache miss: the worker runs qasm.offloaded
        qasm.set_offload(parser.offload)
        try:
            sup.say("starting backends")
            async with started_backends(config) as backends:
                await self._run(store, backends, parser, cluster)
        finally:
            qasm.set_offload(None)
            await parser.aclose()
            await store.close()
            log.info("stopped")

    async def _run(self, store: AnyStore, backends: dict[str, Backend], parser: ParsePool,
                   cluster: Cluster | None = None) -> None:
        config, sup = self.config, self.supervisor
        daemon = wire(config, store, backends, parser, cluster)
        scheduler = daemon.scheduler
        if self.inherited:
            sockets, where, owned = self.inherited, _names(self.inherited), None
        else:
            sockets = [bind_socket(config.daemon.socket, config.daemon.socket_mode)]
            where, owned = str(config.daemon.socket), config.daemon.socket
        server = make_server(daemon.app)
        sup.progress = Progress(store, scheduler)
        #: why a core task (the server, the scheduler) ended before a stop was asked for
        ended: list[str] = []
        try:
            # Two groups: the server's is never cancelled (uvicorn would orphan requests in
            # flight): it is told to exit once the side tasks are cancelled and done.
            async with anyio.create_task_group() as serving:
                try:
                    async with anyio.create_task_group() as side:
                        side.start_soon(self._core, "scheduler", scheduler.run, ended)
                        ready = await serving.start(self._serve_http, server, sockets, ended)
                        if ready and not self.stop.is_set():
                            log.info("ready", socket=where, backends=sorted(backends),
                                     activated=bool(self.inherited))
                            sup.status = lambda: status_line(scheduler, where)
                            sup.notify("READY=1")
                            sup.say(status_line(scheduler, where))
                            sup.paused_status = False
                            side.start_soon(self._side, "reloads", self._reloads, daemon.context,
                                            scheduler)
                            side.start_soon(self._side, "resume announcement", _announce_resume,
                                            sup, scheduler, where)
                            # now and every interval; settings re-read each time (a reload
                            # applies)
                            side.start_soon(self._side, "retention", retention.run_periodically,
                                            store, lambda: (self.config.daemon.retention_days,
                                                            self.config.daemon.retention_interval),
                                            self.retention_stats)
                        elif not self.stop.is_set() and not ended:
                            ended.append("the server did not start")
                        if ended:
                            self._on_stop()
                        await self.stop.wait()
                        sup.paused_status = True
                        sup.say("stopping: finishing store writes; remote jobs keep running")
                        log.info("stopping")
                        side.cancel_scope.cancel()
                finally:
                    daemon.changes.close()  # end long-polls and event streams now
                    # submissions being checked are answered 503 now, nothing stored
                    parser.close()
                    server.should_exit = True
        finally:
            if owned is not None:
                sockets[0].close()
                owned.unlink(missing_ok=True)
            # an inherited socket is left in place: systemd keeps its own copy open and
            # queues connections on it until the next start
        if ended:
            # a non-zero exit, so that Restart=on-failure restarts the daemon
            raise CoreTaskFailed(ended[0])

    async def _serve_http(self, server: SocketServer, sockets: list[socket.socket],
                          ended: list[str], *,
                          task_status: anyio.abc.TaskStatus[bool] = anyio.TASK_STATUS_IGNORED
                          ) -> None:
        """Serve the API; ``start()`` returns True once the socket accepts, False if the
        server ended before it did."""
        finished = anyio.Event()

        async def serve() -> None:
            try:
                await self._core("server", functools.partial(server.serve, sockets=sockets),
                                 ended)
            finally:
                finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            async with anyio.create_task_group() as first:
                async def until(event: anyio.Event | asyncio.Event) -> None:
                    await event.wait()
                    first.cancel_scope.cancel()

                first.start_soon(until, server.ready)
                first.start_soon(until, finished)
            task_status.started(server.ready.is_set())

    async def _core(self, name: str, run: Callable[[], Awaitable[None]],
                    ended: list[str]) -> None:
        """Run a task the daemon cannot do without: if it ends before a stop was asked
        for, say why, and stop the daemon (which then exits non-zero)."""
        try:
            await run()
            why = f"the {name} stopped by itself"
        except Exception as exc:
            why = f"the {name} failed: {exc!r}"
        if not self.stop.is_set():
            ended.append(why)
            log.error("a core task ended; stopping", problem=why)
            self._on_stop()

    async def _side(self, name: str, run: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a task the daemon can do without: a failure is logged, serving goes on."""
        try:
            await run(*args)
        except Exception:
            log.exception("a side task failed; the daemon goes on without it", task=name)

    async def _reloads(self, ctx: Context, scheduler: Scheduler) -> None:
        while True:
            await self.reload_wanted.wait()
            self.reload_wanted.clear()
            await self._reload(ctx, scheduler)

    async def _reload(self, ctx: Context, scheduler: Scheduler) -> None:
        """Re-read the configuration; apply what can change without dropping a job."""
        sup = self.supervisor
        sup.paused_status = True
        sup.notify(systemd.reloading_message())
        sup.say("reloading the configuration")
        log.info("reloading the configuration", source=self.config_path or self.config.source)
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error("reload failed; the running configuration stays", error=str(exc))
                return
            problems = await scheduler.reload(new.backends)
            for backend in ctx.backends.values():
                logs.add_secrets(backend.secrets())  # a rotated key is a new secret
            old = self.config.daemon
            for key in RESTART_ONLY:
                if getattr(new.daemon, key) != getattr(old, key):
                    problems.append(f"[daemon] {key} changes with the next restart")
            daemon = dataclasses.replace(new.daemon, **{k: getattr(old, k) for k in RESTART_ONLY})
            self.config = dataclasses.replace(new, daemon=daemon)
            ctx.config = self.config
            logs.set_level(daemon.log_level)
            for problem in problems:
                log.warning("not applied by the reload", problem=problem)
            log.info("configuration reloaded", backends=sorted(scheduler.runners),
                     budgets={n: s.requests_per_second
                              for n, s in scheduler.stats().items()})
        except Exception:
            log.exception("reload failed; the running configuration stays")
        finally:
            sup.notify("READY=1")
            sup.paused_status = False


async def _announce_resume(sup: Supervisor, scheduler: Scheduler, where: str) -> None:
    """Say in STATUS= the moment every stored job is scheduled again (it may follow READY=1:
    the socket accepts while a large store is still being read). The next status line,
    a second later, is the usual one."""
    await scheduler.resumed.wait()
    if not sup.paused_status:
        sup.say(f"resumed {scheduler.resumed_jobs} jobs in {scheduler.resume_seconds or 0:.2f} s; "
                + status_line(scheduler, where))


def _names(sockets: list[socket.socket]) -> str:
    names = []
    for sock in sockets:
        name = sock.getsockname()
        names.append(name if isinstance(name, str) and name else repr(name))
    return ", ".join(names)


def _install_test_hooks(loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
    """Test-only hooks, on with ``QJOBD_TEST_HOOKS=1`` and never by default.

    SIGUSR2 blocks the event loop for ``$QJOBD_TEST_BLOCK_SECONDS`` (1 s): how the tests
    show that a wedged loop stops the watchdog pings.
    """
    if os.environ.get("QJOBD_TEST_HOOKS") != "1":
        return []
    seconds = float(os.environ.get("QJOBD_TEST_BLOCK_SECONDS", "1.0"))
    log.warning("test hooks are on (QJOBD_TEST_HOOKS=1): SIGUSR2 blocks the event loop")
    loop.add_signal_handler(signal.SIGUSR2, time.sleep, seconds)
    return [signal.SIGUSR2]
