"""qjobd.client's Client and AsyncClient against a real daemon on a real Unix socket.

The daemon runs in-process (store, scheduler, scripted backends, the uvicorn server on
its socket) in the test's event loop; the blocking Client runs in a worker thread, so
one set of behaviour tests covers both clients (``client`` is parametrised over them).
A daemon stopped and started again on the same store and the same scripted "provider"
is a restart; the kill -9 of a real subprocess is in tests/system/test_client_restart.py.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import qjobd.client as public
from qjobd.client import (
    ApiError,
    AsyncClient,
    Batch,
    BatchFailed,
    BatchPage,
    BatchTimeout,
    CircuitResult,
    Client,
    ClientError,
    DaemonUnreachable,
    Event,
    Health,
    Job,
    Results,
)
from qjobd.daemon.api.server import SocketServer, bind_socket, make_server
from qjobd.daemon.client import protocol
from qjobd.daemon.config import parse_config
from qjobd.daemon.process.wiring import Wired, wire
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import BELL2, FAST_POLLING, GHZ2, eventually, short_tmpdir

# -- a daemon on a socket, in-process ------------------------------------------------------


class SocketDaemon:
    """The daemon's parts serving the API on a Unix socket; stop() and start() again is a
    restart (same store; the scripted backends' "provider" outlives it)."""

    def __init__(self, root: Path) -> None:
        self.socket = root / "qjobd.sock"
        self.config = parse_config({
            "daemon": {"socket": str(self.socket), "database": str(root / "q.sqlite3")},
            "polling": FAST_POLLING,
            "backends": {"fake": {"type": "scripted"}, "held": {"type": "scripted"}},
        })
        self.backends: dict[str, ScriptedBackend] = {}
        self._running: tuple[Store, Wired, SocketServer, list[asyncio.Task[Any]]] | None = None

    async def start(self) -> None:
        store = await Store.open(self.config.daemon.database)
        old = self.backends
        self.backends = {"fake": ScriptedBackend("fake", {}),
                         "held": ScriptedBackend("held", {"hold": True})}
        for name, backend in self.backends.items():
            if name in old:
                backend.share_remote(old[name])
            await backend.start()
        wired = wire(self.config, store, self.backends)
        server = make_server(wired.app)
        sock = bind_socket(self.socket, 0o600)
        tasks = [asyncio.create_task(wired.scheduler.run()),
                 asyncio.create_task(server.serve(sockets=[sock]))]
        await asyncio.wait_for(server.ready.wait(), 10)
        self._running = (store, wired, server, tasks)

    async def stop(self) -> None:
        """A clean stop: long-polls end, the socket goes away."""
        assert self._running is not None
        store, wired, server, (scheduler, serving) = self._running
        self._running = None
        wired.changes.close()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
        self.socket.unlink(missing_ok=True)
        for backend in self.backends.values():
            await backend.aclose()
        await store.close()

    @property
    def running(self) -> bool:
        return self._running is not None

    def release(self, backend: str = "held") -> None:
        """Let every held job of ``backend`` finish at its next poll."""
        for job in self.backends[backend].jobs.values():
            job.hold = False


@pytest.fixture
async def qjobd() -> AsyncIterator[SocketDaemon]:
    daemon = SocketDaemon(short_tmpdir())
    await daemon.start()
    try:
        yield daemon
    finally:
        if daemon.running:
            await daemon.stop()


class ThreadedClient:
    """A blocking Client's methods as coroutines, each call run in a worker thread."""

    def __init__(self, client: Client) -> None:
        self.sync = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))

        return call

    async def take_events(self, count: int, **kwargs: Any) -> list[Event]:
        def take() -> list[Event]:
            got = []
            for event in self.sync.events(**kwargs):
                got.append(event)
                if len(got) == count:
                    break
            return got

        return await anyio.to_thread.run_sync(take)


class AwaitedClient:
    """An AsyncClient as it is, plus the test helper ThreadedClient has."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def take_events(self, count: int, **kwargs: Any) -> list[Event]:
        got = []
        async for event in self.client.events(**kwargs):
            got.append(event)
            if len(got) == count:
                break
        return got


@pytest.fixture(params=["Client", "AsyncClient"])
async def client(request: pytest.FixtureRequest, qjobd: SocketDaemon) -> AsyncIterator[Any]:
    """Either client on the daemon's socket, with the same (awaitable) methods."""
    if request.param == "Client":
        sync = Client(qjobd.socket, reconnect_for=30)
        try:
            yield ThreadedClient(sync)
        finally:
            sync.close()
    else:
        async with AsyncClient(qjobd.socket, reconnect_for=30) as aio:
            yield AwaitedClient(aio)


# -- behaviour, for both clients -----------------------------------------------------------


async def test_submit_wait_and_results_answer_typed_objects(client: Any) -> None:
    batch = await client.submit({"bell": BELL2, "ghz": GHZ2}, backend="fake", shots=50,
                                name="typed", tags={"run": "1"})
    assert isinstance(batch, Batch)
    assert (batch.backend, batch.shots, batch.name, batch.tags) == ("fake", 50, "typed",
                                                                    {"run": "1"})
    assert isinstance(batch.created_at, datetime) and batch.created_at.tzinfo is not None
    assert batch.state in ("queued", "submitting", "submitted") and not batch.terminal
    assert batch.raw["id"] == batch.id  # the daemon's JSON, as it is

    done = await client.wait(batch.id, timeout=30)
    assert isinstance(done, Batch) and done.completed and done.terminal
    assert done.finished_at is not None and done.errors == {}
    assert all(isinstance(job, Job) and job.state == "completed" for job in done.jobs)
    assert sorted(label for job in done.jobs for label in job.labels) == ["bell", "ghz"]

    results = await client.results(done)  # a Batch works wherever an id does
    assert isinstance(results, Results) and results.state == "completed"
    assert set(results) == {"bell", "ghz"} and "bell" in results and len(results) == 2
    bell = results["bell"]
    assert isinstance(bell, CircuitResult)
    assert (bell.label, bell.counts, bell.shots) == ("bell", {"00": 50}, 50)
    assert results["ghz"].counts == {"000": 50}
    assert bell.job_id in {job.id for job in done.jobs}
    assert results.counts == {"bell": {"00": 50}, "ghz": {"000": 50}}
    assert bell.probabilities() == {"00": 1.0}
    assert results.raw["results"]["bell"]["counts"] == {"00": 50}


async def test_run_is_submit_wait_results(client: Any) -> None:
    results = await client.run({"bell": BELL2}, backend="fake", shots=7, wait_timeout=30)
    assert results["bell"].counts == {"00": 7}


async def test_get_list_cancel_health_and_events(client: Any, qjobd: SocketDaemon) -> None:
    first = await client.submit({"a": BELL2}, backend="fake", shots=5)
    held = await client.submit({"b": BELL2}, backend="held", shots=5)

    got = await client.get(held.id)
    assert isinstance(got, Batch) and got.id == held.id and len(got.jobs) == 1

    page = await client.list(limit=1)
    assert isinstance(page, BatchPage) and [b.id for b in page] == [held.id]  # newest first
    assert page.next_cursor is not None
    rest = await client.list(limit=10, cursor=page.next_cursor)
    assert [b.id for b in rest] == [first.id] and rest.next_cursor is None
    assert [b.id for b in await client.list(backend="held")] == [held.id]

    canceled = await client.cancel(held)
    assert isinstance(canceled, Batch) and canceled.id == held.id
    assert (await client.wait(held, timeout=30, raise_on_failure=False)).state == "canceled"
    assert (await client.cancel(held.id)).state == "canceled"  # idempotent

    health = await client.health()
    assert isinstance(health, Health) and health.status == "ok"
    assert set(health.backends) == {"fake", "held"} and health.pid == os.getpid()

    events = await client.take_events(3, since=0)
    assert all(isinstance(e, Event) for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[0].kind == "batch_created" and events[0].batch_id == first.id
    later = await client.take_events(1, since=events[-1].seq)
    assert later[0].seq > events[-1].seq


async def test_followed_events_arrive_as_they_happen(client: Any) -> None:
    backlog = await client.take_events(1000, since=0)  # no follow: ends after the backlog
    since = backlog[-1].seq if backlog else 0
    follow = asyncio.create_task(client.take_events(1, since=since, follow=True))
    await asyncio.sleep(0.2)
    assert not follow.done()
    batch = await client.submit({"a": BELL2}, backend="fake", shots=5)
    [event] = await asyncio.wait_for(follow, 10)
    assert (event.batch_id, event.kind, event.state) == (batch.id, "batch_created", "queued")


async def test_wait_raises_batch_failed_with_the_jobs_errors(client: Any) -> None:
    batch = await client.submit({"a": BELL2, "b": BELL2}, backend="fake", shots=5,
                                options={"reject": True})
    with pytest.raises(BatchFailed) as caught:
        await client.wait(batch.id, timeout=30)
    exc = caught.value
    assert (exc.batch_id, exc.state) == (batch.id, "failed")
    # one job per circuit on this backend: each has its error
    assert set(exc.errors) == {job.id for job in exc.batch.jobs} and len(exc.errors) == 2
    assert all("reject" in error for error in exc.errors.values())
    assert str(exc).startswith(f"batch {batch.id} ended failed: ") and "reject" in str(exc)
    assert isinstance(exc, ClientError)
    # as ionq-core's raise_on_failure=False: the failed batch is returned instead
    failed = await client.wait(batch, timeout=30, raise_on_failure=False)
    assert failed.state == "failed" and failed.errors == exc.errors


async def test_wait_raises_batch_failed_for_a_canceled_batch(client: Any) -> None:
    batch = await client.submit({"a": BELL2}, backend="held", shots=5)
    await client.cancel(batch)
    with pytest.raises(BatchFailed) as caught:
        await client.wait(batch, timeout=30)
    assert (caught.value.batch_id, caught.value.state) == (batch.id, "canceled")
    assert caught.value.errors == {}


async def test_wait_raises_batch_failed_for_a_batch_past_its_own_timeout(client: Any) -> None:
    batch = await client.submit({"a": BELL2}, backend="held", shots=5, timeout=0.3)
    with pytest.raises(BatchFailed) as caught:
        await client.wait(batch, timeout=30)
    assert caught.value.state == "timed_out"
    assert "timeout of 0.3 s passed" in str(caught.value)


async def test_wait_raises_batch_timeout_with_the_last_state(client: Any) -> None:
    batch = await client.submit({"a": BELL2}, backend="held", shots=5)
    started = time.monotonic()
    with pytest.raises(BatchTimeout) as caught:
        await client.wait(batch.id, timeout=0.5)
    elapsed = time.monotonic() - started
    exc = caught.value
    assert 0.5 <= elapsed < 5
    assert (exc.batch_id, exc.timeout) == (batch.id, 0.5)
    assert exc.last_state in ("submitted", "running") and exc.batch.state == exc.last_state
    assert str(exc) == f"batch {batch.id} did not finish within 0.5 s " \
                       f"(last state: {exc.last_state})"
    # the batch goes on: a later wait sees it end
    (await client.get(batch)).jobs[0]  # still there
    with pytest.raises(BatchTimeout):
        await client.wait(batch, timeout=0)


async def test_wait_returns_the_moment_the_batch_ends(client: Any, qjobd: SocketDaemon) -> None:
    batch = await client.submit({"a": BELL2}, backend="held", shots=5)
    waiting = asyncio.create_task(client.wait(batch, timeout=60))
    await eventually(lambda: bool(qjobd.backends["held"].jobs))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    released = time.monotonic()
    qjobd.release()
    done = await asyncio.wait_for(waiting, 10)
    assert done.completed
    assert time.monotonic() - released < 2  # the daemon's polls are 10-50 ms here


async def test_a_long_wait_is_made_of_several_long_polls(client: Any, qjobd: SocketDaemon,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(protocol, "MAX_LONG_POLL", 0.2)
    sent: list[float] = []
    real = protocol.wait_request

    def counted(batch_id: str, seconds: float, base_timeout: float) -> protocol.Request:
        sent.append(seconds)
        return real(batch_id, seconds, base_timeout)

    monkeypatch.setattr(protocol, "wait_request", counted)
    batch = await client.submit({"a": BELL2}, backend="held", shots=5)
    waiting = asyncio.create_task(client.wait(batch, timeout=3600))
    await asyncio.sleep(0.9)
    qjobd.release()
    assert (await asyncio.wait_for(waiting, 10)).completed
    assert len(sent) >= 4 and set(sent) == {0.2}


async def test_wait_rides_out_a_daemon_restart(client: Any, qjobd: SocketDaemon) -> None:
    batch = await client.submit({"a": BELL2}, backend="held", shots=5)
    await eventually(lambda: bool(qjobd.backends["held"].jobs))
    waiting = asyncio.create_task(client.wait(batch, timeout=60))
    await asyncio.sleep(0.2)
    await qjobd.stop()  # the long-poll ends; the socket is gone: refused, then missing
    await asyncio.sleep(1.0)
    assert not waiting.done()
    await qjobd.start()
    qjobd.release()  # the restarted daemon resumes the job, which now finishes
    done = await asyncio.wait_for(waiting, 15)
    assert done.completed and done.id == batch.id
    assert (await client.results(done))["a"].counts == {"00": 5}


async def test_wait_gives_up_after_reconnect_for(client: Any, qjobd: SocketDaemon) -> None:
    batch = await client.submit({"a": BELL2}, backend="held", shots=5)
    await qjobd.stop()
    started = time.monotonic()
    with pytest.raises(DaemonUnreachable) as caught:
        await client.wait(batch, timeout=60, reconnect_for=0.8)
    assert 0.8 <= time.monotonic() - started < 4
    assert caught.value.socket_path == qjobd.socket
    # other calls are not retried: they fail at once
    started = time.monotonic()
    with pytest.raises(DaemonUnreachable, match="no such socket"):
        await client.get(batch)
    assert time.monotonic() - started < 1


async def test_api_errors_keep_the_daemons_code_and_status(client: Any) -> None:
    with pytest.raises(ApiError) as caught:
        await client.get("no-such-batch")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as caught:
        await client.wait("no-such-batch", timeout=5)  # not retried: the daemon said no
    assert caught.value.status == 404
    held = await client.submit({"a": BELL2}, backend="held", shots=5)
    with pytest.raises(ApiError) as caught:
        await client.results(held)
    assert caught.value.status == 409
    with pytest.raises(ApiError) as caught:
        await client.submit({"a": "OPENQASM 2.0;\nqreg q[1];\nfoo q[0];\n"}, backend="fake")
    assert caught.value.status == 422 and "line 3" in str(caught.value)


async def test_an_idempotency_key_returns_the_same_batch(client: Any) -> None:
    first = await client.submit({"a": BELL2}, backend="fake", shots=5, idempotency_key="k")
    again = await client.submit({"a": BELL2}, backend="fake", shots=5, idempotency_key="k")
    assert again.id == first.id
    with pytest.raises(ApiError) as caught:
        await client.submit({"a": BELL2}, backend="fake", shots=6, idempotency_key="k")
    assert caught.value.status == 409


# -- the two clients' surfaces ---------------------------------------------------------------


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(cls).items()
            if callable(fn) and not name.startswith("_")}


def test_async_client_has_the_sync_clients_methods_and_arguments() -> None:
    sync, aio = _public(Client), _public(AsyncClient)
    assert set(sync) - {"close"} == set(aio) - {"aclose"}
    for name in set(sync) - {"close"}:
        assert sync[name].parameters.keys() == aio[name].parameters.keys(), name
        for param in sync[name].parameters.values():
            assert aio[name].parameters[param.name].default == param.default, (name, param)
    assert inspect.signature(Client).parameters.keys() == \
        inspect.signature(AsyncClient).parameters.keys()
    for name in set(aio) - {"events"}:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    assert inspect.isasyncgenfunction(AsyncClient.events)


def test_the_public_module_exports_what_spec_names() -> None:
    assert {"Client", "AsyncClient", "BatchFailed", "BatchTimeout"} <= set(public.__all__)
    for name in public.__all__:
        assert getattr(public, name) is not None


async def test_the_socket_is_found_as_qjobctl_finds_it(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("QJOBD_SOCKET", str(tmp_path / "env.sock"))
    with Client() as sync:
        assert sync.socket_path == tmp_path / "env.sock"
    async with AsyncClient() as aio:
        assert aio.socket_path == tmp_path / "env.sock"
    async with AsyncClient(tmp_path / "arg.sock") as aio:
        assert aio.socket_path == tmp_path / "arg.sock"
