"""``qjobd.client.AsyncClient``: the asyncio client; :class:`~qjobd.client.Client`'s
methods as coroutines, with the same answers and errors.

    from qjobd.client import AsyncClient

    async with AsyncClient() as qjobd:
        batch = await qjobd.submit({"bell": source}, backend="local", shots=1000)
        batch = await qjobd.wait(batch)
        print((await qjobd.results(batch))["bell"].counts)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

from qjobd.daemon.client import protocol
from qjobd.daemon.client.models import Batch, BatchPage, Event, Health, Results
from qjobd.daemon.client.sync import BatchRef, batch_id_of
from qjobd.daemon.client.transport import AsyncSession

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio client of qjobd's socket API; close it (``await aclose()``, or
    ``async with``). Arguments as :class:`~qjobd.client.Client`'s."""

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float = 30.0,
                 reconnect_for: float = protocol.RECONNECT_FOR) -> None:
        self._session = AsyncSession(socket, timeout)
        self.socket_path = self._session.socket_path
        self.timeout = timeout
        self.reconnect_for = reconnect_for

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.aclose()

    async def submit(self, circuits: Mapping[str, str], backend: str = "local", *,
                     shots: int | None = None, name: str | None = None,
                     tags: Mapping[str, str] | None = None,
                     timeout: float | None = None,  # noqa: ASYNC109 - the batch's own limit
                     options: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None,
                     metadata: Mapping[str, Any] | None = None) -> Batch:
        """See :meth:`qjobd.client.Client.submit`."""
        return Batch.from_dict(await self._session.send(protocol.submit_request(
            circuits, backend, shots=shots, name=name, tags=tags, timeout=timeout,
            options=options, idempotency_key=idempotency_key, metadata=metadata)))

    async def get(self, batch: BatchRef) -> Batch:
        """See :meth:`qjobd.client.Client.get`."""
        return Batch.from_dict(await self._session.send(
            protocol.get_request(batch_id_of(batch))))

    async def list(self, state: str | None = None, backend: str | None = None,
                   limit: int | None = None, cursor: str | None = None) -> BatchPage:
        """See :meth:`qjobd.client.Client.list`."""
        return BatchPage.from_dict(await self._session.send(
            protocol.list_request(state, backend, limit, cursor)))

    async def wait(self, batch: BatchRef,
                   timeout: float | None = None,  # noqa: ASYNC109 - Client.wait's, a deadline
                   *, raise_on_failure: bool = True, reconnect_for: float | None = None) -> Batch:
        """See :meth:`qjobd.client.Client.wait`."""
        answer = await self._session.run(protocol.wait_plan(
            batch_id_of(batch), timeout, base_timeout=self.timeout,
            reconnect_for=self.reconnect_for if reconnect_for is None else reconnect_for))
        return protocol.wait_outcome(answer, timeout, raise_on_failure=raise_on_failure)

    async def results(self, batch: BatchRef) -> Results:
        """See :meth:`qjobd.client.Client.results`."""
        return Results.from_dict(await self._session.send(
            protocol.results_request(batch_id_of(batch))))

    async def run(self, circuits: Mapping[str, str], backend: str = "local", *,
                  wait_timeout: float | None = None, **submit: Any) -> Results:
        """See :meth:`qjobd.client.Client.run`."""
        batch = await self.wait(await self.submit(circuits, backend, **submit), wait_timeout)
        return await self.results(batch)

    async def cancel(self, batch: BatchRef) -> Batch:
        """See :meth:`qjobd.client.Client.cancel`."""
        return Batch.from_dict(await self._session.send(
            protocol.cancel_request(batch_id_of(batch))))

    async def health(self) -> Health:
        """See :meth:`qjobd.client.Client.health`."""
        return Health.from_dict(await self._session.send(protocol.health_request()))

    async def events(self, since: int | None = None, follow: bool = False
                     ) -> AsyncIterator[Event]:
        """See :meth:`qjobd.client.Client.events`."""
        async for item in self._session.stream(
                protocol.events_request(since, follow, self.timeout)):
            yield Event.from_dict(item)
