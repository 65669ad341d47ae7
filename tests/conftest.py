from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from qjobd.backends.local import LocalBackend
from qjobd.daemon.api.peer import Peer
from qjobd.daemon.config import parse_config
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.daemon.process.wiring import wire
from qjobd.store.factory import open_store
from qjobd.store.store import Store
from qjobd.testing.postgres import PostgresNotFound, PostgresServer, find_bindir
from qjobd.testing.scripted import ScriptedBackend

BELL2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""
BELL3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
"""
#: three qubits measured into two registers (1 bit and 2 bits)
GHZ2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[3];
creg a[1];
creg b[2];
h q[0];
cx q[0],q[1];
cx q[1],q[2];
measure q[0] -> a[0];
measure q[1] -> b[0];
measure q[2] -> b[1];
"""
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FAST_POLLING = {"initial_interval": 0.01, "backoff_factor": 1.5, "max_interval": 0.05,
                "jitter": 0.1}


async def eventually(check: Callable[[], Any], limit: float = 10) -> None:
    """Wait until ``check()`` (sync or async) is true, polling it, for at most ``limit`` s."""
    import anyio

    with anyio.fail_after(limit):
        while True:
            done = check()
            if asyncio.iscoroutine(done):
                done = await done
            if done:
                return
            await asyncio.sleep(0.01)


def short_tmpdir() -> Path:
    """A directory short enough for AF_UNIX paths (108 bytes), unlike pytest's tmp_path."""
    return Path(tempfile.mkdtemp(prefix="qjobd-", dir="/tmp"))


def count_rows(db: Path | str) -> dict[str, int]:
    """Rows per table, read through a fresh connection (what is really committed)."""
    return {t: committed(db, f"SELECT count(*) FROM {t}")[0][0]
            for t in ("batches", "jobs", "circuits", "results", "events")}


@dataclass
class Daemon:
    """The daemon's parts, wired in-process, with an httpx client on its ASGI app."""

    store: Store
    scheduler: Scheduler
    backends: dict[str, Any]
    client: httpx.AsyncClient
    #: the store's SQLite file, or its PostgreSQL URL (QJOBD_TEST_STORE=postgresql)
    db: Path | str
    set_peer: Callable[[Peer | None], None]


class _PeerInjector:
    """Puts a chosen peer into scope["state"], as the socket server does for real peers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.peer: Peer | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.peer is not None:
            scope = {**scope, "state": {**scope.get("state", {}), "peer": self.peer}}
        await self.app(scope, receive, send)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file of the test's own (not created yet)."""
    return tmp_path / "qjobd.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    """A real store on ``db_path``, closed after the test."""
    s = await Store.open(db_path)
    yield s
    await s.close()


#: ``QJOBD_TEST_STORE=postgresql`` puts the in-process daemon's store (the ``daemon``
#: fixture's) in a PostgreSQL database of the test's own: the engine and API tests then
#: run on PostgreSQL (the store's own tests run on both anyway)
TEST_STORE = os.environ.get("QJOBD_TEST_STORE", "sqlite")


@pytest.fixture
async def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Daemon]:
    """The daemon in-process with scripted backends `fake` and `held`, and with the real
    `local` simulator for tests marked ``@pytest.mark.local`` (its workers take ~0.4 s)."""
    with_local = request.node.get_closest_marker("local") is not None
    database = (str(request.getfixturevalue("postgres_url")) if TEST_STORE == "postgresql"
                else str(tmp_path / "q.sqlite3"))
    async with in_process_daemon(tmp_path, database, with_local=with_local) as d:
        yield d


@contextlib.asynccontextmanager
async def in_process_daemon(tmp_path: Path, database: str, *,
                            with_local: bool = False) -> AsyncIterator[Daemon]:
    """What the ``daemon`` fixture gives, on the store ``database`` names."""
    config = parse_config({
        "daemon": {"socket": str(tmp_path / "s.sock"), "database": database,
                   "max_request_bytes": 200_000},
        "polling": FAST_POLLING,
        "backends": {"fake": {"type": "scripted"}, "held": {"type": "scripted"},
                     "local": {"type": "local", "workers": 1}},
    })
    store = await open_store(config.daemon.database)
    backends: dict[str, Any] = {
        "fake": ScriptedBackend("fake", {}),
        "held": ScriptedBackend("held", {"hold": True}),
    }
    if with_local:
        backends["local"] = LocalBackend("local", {"workers": 1})
    for backend in backends.values():
        await backend.start()
    wired = wire(config, store, backends)
    scheduler = wired.scheduler
    # a task, not a task group: pytest-asyncio tears fixtures down in another task
    task = asyncio.create_task(scheduler.run())
    app = _PeerInjector(wired.app)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://qjobd")

    def set_peer(peer: Peer | None) -> None:
        app.peer = peer

    try:
        yield Daemon(store, scheduler, backends, client, config.daemon.database, set_peer)
    finally:
        await client.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for backend in backends.values():
            await backend.aclose()
        await store.close()


# -- PostgreSQL ---------------------------------------------------------------------------

def _no_postgres(why: str) -> None:
    """Skip, saying why; under CI (env CI set), fail: there the PostgreSQL tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the PostgreSQL tests must not skip)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session (qjobd/testing/postgres.py)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        _no_postgres(f"psycopg is not installed ({exc.name}): install qjobd's extra "
                     "'postgresql'")
    try:
        bindir = find_bindir()
    except PostgresNotFound as exc:
        _no_postgres(str(exc))
    with PostgresServer(bindir=bindir) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of the test's own on the session's server; its URL."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """Where a test's store lives, once each: an SQLite file's path, a PostgreSQL URL."""
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("postgres_url"))


def committed(database: Path | str, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A query (``?`` placeholders) on an independent connection: only what was committed."""
    if isinstance(database, Path):
        conn = sqlite3.connect(database)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(database) as pg:
        return [tuple(r) for r in pg.execute(sql.replace("?", "%s"), args or None).fetchall()]
