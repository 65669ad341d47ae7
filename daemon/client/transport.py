"""httpx over qjobd's Unix socket: the blocking and the asyncio session.

Both send :class:`~qjobd.daemon.client.protocol.Request` objects and answer dicts; both
run plans (:func:`~qjobd.daemon.client.protocol.wait_plan`): the only difference between
them is how they wait for I/O.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx

from qjobd.daemon.client import protocol
from qjobd.daemon.client.errors import ApiError, DaemonUnreachable
from qjobd.daemon.client.protocol import Plan, Request, Sleep

__all__ = ["AsyncSession", "SyncSession"]

_HEADERS = {"User-Agent": protocol.USER_AGENT, "Accept": "application/json"}


class SyncSession:
    """One blocking connection pool to the daemon's socket."""

    def __init__(self, socket_path: str | os.PathLike[str] | None, timeout: float) -> None:
        self.socket_path = protocol.resolve_socket_path(socket_path)
        self.timeout = timeout
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)),
                                  base_url=protocol.BASE_URL, timeout=timeout,
                                  headers=_HEADERS)

    def close(self) -> None:
        self._http.close()

    def send(self, request: Request) -> dict[str, Any]:
        with protocol.translating(self.socket_path):
            response = self._http.request(request.method, request.path,
                                          **request.send_kwargs(self.timeout))
        return protocol.decode(request, response)

    def stream(self, request: Request) -> Iterator[dict[str, Any]]:
        """The objects of a newline-delimited JSON answer, as they arrive."""
        with protocol.translating(self.socket_path), self._http.stream(
                request.method, request.path, **request.send_kwargs(self.timeout)) as response:
            if response.is_error:
                response.read()
                raise protocol.api_error(response)
            for line in response.iter_lines():
                if (item := protocol.decode_event_line(line)) is not None:
                    yield item

    def run(self, plan: Plan) -> dict[str, Any]:
        """Carry a plan out: send its requests, sleep its pauses, return its result."""
        answer: Any = None
        error: BaseException | None = None
        with contextlib.closing(plan):
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(answer)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                answer, error = None, None
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    continue
                try:
                    answer = self.send(step)
                except (ApiError, DaemonUnreachable) as exc:
                    error = exc


class AsyncSession:
    """One asyncio (anyio) connection pool to the daemon's socket."""

    def __init__(self, socket_path: str | os.PathLike[str] | None, timeout: float) -> None:
        self.socket_path = protocol.resolve_socket_path(socket_path)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path)),
            base_url=protocol.BASE_URL, timeout=timeout, headers=_HEADERS)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, request: Request) -> dict[str, Any]:
        async with protocol.translating(self.socket_path):
            response = await self._http.request(request.method, request.path,
                                                **request.send_kwargs(self.timeout))
        return protocol.decode(request, response)

    async def stream(self, request: Request) -> AsyncIterator[dict[str, Any]]:
        """The objects of a newline-delimited JSON answer, as they arrive."""
        async with protocol.translating(self.socket_path), self._http.stream(
                request.method, request.path, **request.send_kwargs(self.timeout)) as response:
            if response.is_error:
                await response.aread()
                raise protocol.api_error(response)
            async for line in response.aiter_lines():
                if (item := protocol.decode_event_line(line)) is not None:
                    yield item

    async def run(self, plan: Plan) -> dict[str, Any]:
        """Carry a plan out: send its requests, sleep its pauses, return its result."""
        answer: Any = None
        error: BaseException | None = None
        with contextlib.closing(plan):
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(answer)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                answer, error = None, None
                if isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                    continue
                try:
                    answer = await self.send(step)
                except (ApiError, DaemonUnreachable) as exc:
                    error = exc
