"""The daemon's life: open the store, start backends, serve the socket, stop cleanly.

SIGTERM and SIGINT stop it: no new connections, in-flight requests finish, store
writes finish, remote jobs are left running for the next start to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

from backends.base import Backend
from backends.registry import create_backend
from daemon import logs, systemd
from daemon.api import Context, create_app
from daemon.config import Config
from daemon.notify import BatchChanges
from daemon.scheduler import Scheduler
from daemon.server import SocketInUse, bind_socket, make_server
from store.store import Store

log = structlog.get_logger("qjobd")


@contextlib.contextmanager
def exclusive(database: Path) -> Iterator[None]:
    """Hold a lock beside the database: two daemons on one store would submit jobs twice."""
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


async def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT."""
    with exclusive(config.daemon.database):
        await _serve(config)


async def _serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await Store.open(config.daemon.database)
    log.info("store open", database=str(config.daemon.database))
    sock_path = config.daemon.socket
    try:
        async with started_backends(config) as backends:
            changes = BatchChanges()
            scheduler = Scheduler(store, backends, config.backends, changes)
            app = create_app(Context(config, store, backends, scheduler, changes))
            sock = bind_socket(sock_path, config.daemon.socket_mode)
            server = make_server(app)
            scheduler_task = asyncio.create_task(scheduler.run(), name="scheduler")
            server_task = asyncio.create_task(server.serve(sockets=[sock]), name="server")
            stop_task = asyncio.create_task(stop.wait())
            ready_task = asyncio.create_task(server.ready.wait())
            try:
                await asyncio.wait({ready_task, server_task, stop_task},
                                   return_when=asyncio.FIRST_COMPLETED)
                if server.ready.is_set():
                    log.info("ready", socket=str(sock_path), backends=sorted(backends))
                    systemd.notify("READY=1")
                done, _ = await asyncio.wait({stop_task, server_task, scheduler_task},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stop_task and task.exception() is not None:
                        log.error("a core task failed; stopping", task=task.get_name(),
                                  error=repr(task.exception()))
                log.info("stopping")
                systemd.notify("STOPPING=1")
            finally:
                changes.close()  # end long-polls and event streams now, not after a grace
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await server_task
                for task in (scheduler_task, stop_task, ready_task):
                    task.cancel()
                await asyncio.gather(scheduler_task, stop_task, ready_task,
                                     return_exceptions=True)
                sock.close()
                sock_path.unlink(missing_ok=True)
    finally:
        await store.close()
        log.info("stopped")
