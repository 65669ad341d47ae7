"""One real HTTP backend inside the daemon's engine, pointed at a fake provider (needs pytest).

The daemon's parts run in-process (store on a real file, scheduler, API through ASGI);
the backend is the production one, its ``base_url`` the fake's, so a test drives the
whole path from ``POST /v1/batches`` to the provider's wire and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import httpx
import pytest

from qjobd.backends.http import HttpBackend
from qjobd.daemon.config import parse_config
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.daemon.process import logs
from qjobd.daemon.process.wiring import wire
from qjobd.store import states
from qjobd.store.store import Store

__all__ = ["QUICK_POLLING", "TERMINAL", "Harness", "backend_daemon"]

#: the terminal batch and job states, as the API spells them
TERMINAL = frozenset(str(state) for state in states.TERMINAL)
#: polling quick enough for a fake's jobs of tenths of a second
QUICK_POLLING = {"initial_interval": 0.05, "max_interval": 0.2, "jitter": 0.1}

B = TypeVar("B", bound=HttpBackend)


@dataclass
class Harness(Generic[B]):
    """The running engine, its backend, and an httpx client on its API."""

    store: Store
    scheduler: Scheduler
    backend: B
    client: httpx.AsyncClient
    db: Path
    #: the body fields submit() sends unless told otherwise (backend, shots)
    defaults: Mapping[str, Any]
    #: wait()'s default limit, in seconds
    wait_limit: float
    #: seconds of each of wait()'s long-polls
    wait_poll: float

    async def submit(self, circuits: dict[str, str], **fields: Any) -> dict:
        r = await self.client.post("/v1/batches",
                                   json={**self.defaults, "circuits": circuits, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    async def wait(self, batch_id: str, limit: float | None = None) -> dict:
        """The batch once terminal; fails the test after ``limit`` seconds."""
        with anyio.fail_after(self.wait_limit if limit is None else limit):
            while True:
                r = await self.client.get(f"/v1/batches/{batch_id}/wait",
                                          params={"timeout": self.wait_poll})
                if r.json()["state"] in TERMINAL:
                    return r.json()

    async def job(self, batch_id: str) -> Any:
        """The batch's first job, as stored."""
        return (await self.store.get_batch(batch_id)).jobs[0]

    async def results(self, batch_id: str) -> dict:
        r = await self.client.get(f"/v1/batches/{batch_id}/results")
        assert r.status_code == 200, r.text
        return r.json()["results"]

    async def reasons(self, batch_id: str) -> list[str]:
        """The batch's events' details, as JSON text to search."""
        return [json.dumps(e.detail) for e in await self.store.events(batch_id=batch_id)]


@contextlib.asynccontextmanager
async def backend_daemon(backend_type: type[B], name: str, base_url: str, key: str,
                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, shots: int,
                         wait_limit: float, wait_poll: float, db: Path | None = None,
                         polling: dict | None = None, rps: float = 0.0,
                         **settings: Any) -> AsyncIterator[Harness[B]]:
    """The engine with one backend ``name`` (of type ``name``) at ``base_url``, keyed ``key``.

    ``db`` reopens an earlier run's database; leaving the block stops the engine wherever
    it is, requests in flight included, as a crash would.
    """
    monkeypatch.setenv(backend_type.key_env, key)
    config = parse_config({
        "polling": polling or QUICK_POLLING,
        "backends": {name: {"type": name, "base_url": base_url,
                            "requests_per_second": rps, **settings}}})
    db = db or tmp_path / "q.sqlite3"
    store = await Store.open(db)
    backend = backend_type(name, config.backends[name].options)
    logs.add_secrets(backend.secrets())
    await backend.start()
    daemon = wire(config, store, {name: backend})
    task = asyncio.create_task(daemon.scheduler.run())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=daemon.app),
                               base_url="http://q")
    try:
        yield Harness(store, daemon.scheduler, backend, client, db,
                      defaults={"backend": name, "shots": shots},
                      wait_limit=wait_limit, wait_poll=wait_poll)
    finally:
        await client.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.aclose()
        await store.close()
