"""The dict-level client qjobctl uses: the API's JSON answers as they are.

    with Client() as qjobd:
        batch = qjobd.submit({"bell": source}, backend="local", shots=1000)
        batch = qjobd.wait(batch["id"], timeout=60)
        counts = qjobd.results(batch["id"])["results"]["bell"]["counts"]

Scripts would rather use :mod:`qjobd.client` (typed answers, ``wait()`` raising
BatchFailed/BatchTimeout and riding out a daemon restart). Both are built on the same
request/response layer (``protocol``, ``transport``); this module also keeps the names
qjobctl imports from it (the errors, ``resolve_socket_path``, ``TERMINAL_STATES``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from qjobd.daemon.client import protocol
from qjobd.daemon.client.errors import (
    START_HINT,
    ApiError,
    ClientError,
    DaemonTimeout,
    DaemonUnreachable,
    SocketConfigError,
    format_error_details,
)
from qjobd.daemon.client.models import TERMINAL_STATES
from qjobd.daemon.client.protocol import resolve_socket_path
from qjobd.daemon.client.transport import SyncSession

__all__ = [
    "START_HINT",
    "TERMINAL_STATES",
    "ApiError",
    "Client",
    "ClientError",
    "DaemonTimeout",
    "DaemonUnreachable",
    "RawClient",
    "SocketConfigError",
    "format_error_details",
    "resolve_socket_path",
]

#: the longest one /wait request may ask for (the daemon answers 400 beyond it);
#: longer waits are made of several requests
MAX_LONG_POLL = protocol.MAX_LONG_POLL


class RawClient:
    """Synchronous qjobd client answering the API's dicts; close it (or use ``with``)."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None,
                 timeout: float = 30.0) -> None:
        self._session = SyncSession(socket_path, timeout)
        self.socket_path = self._session.socket_path
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def submit(self, circuits: Mapping[str, str], backend: str, shots: int | None = None,
               name: str | None = None, tags: Mapping[str, str] | None = None,
               timeout: float | None = None, options: Mapping[str, Any] | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a batch (``POST /v1/batches``); returns the stored batch.

        With ``idempotency_key``, resubmitting the same body returns the existing batch;
        another body under the same key raises ApiError 409.
        """
        return self._session.send(protocol.submit_request(
            circuits, backend, shots=shots, name=name, tags=tags, timeout=timeout,
            options=options, idempotency_key=idempotency_key))

    def list(self, state: str | None = None, backend: str | None = None,
             limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first: ``{"batches": [...], "next_cursor": ...}``."""
        return self._session.send(protocol.list_request(state, backend, limit, cursor))

    def get(self, batch_id: str) -> dict[str, Any]:
        """The batch with its jobs."""
        return self._session.send(protocol.get_request(batch_id))

    def results(self, batch_id: str) -> dict[str, Any]:
        """``{"id", "state", "results": {label: {"counts", "shots", "job_id"}}}``.

        Raises ApiError 409 while the batch is not terminal.
        """
        return self._session.send(protocol.results_request(batch_id))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the daemon to cancel the batch; idempotent. Returns the batch."""
        return self._session.send(protocol.cancel_request(batch_id))

    def wait(self, batch_id: str, timeout: float) -> dict[str, Any]:
        """Long-poll: the batch once it is terminal, or as it is after ``timeout`` seconds.

        A lost connection raises at once (qjobctl's wait rides out restarts itself).
        """
        return self._session.run(protocol.wait_plan(
            batch_id, timeout, base_timeout=self.timeout, reconnect_for=0.0,
            max_long_poll=MAX_LONG_POLL, to_deadline=False))

    def health(self) -> dict[str, Any]:
        """Version, uptime, counts by state, per-backend health."""
        return self._session.send(protocol.health_request())

    def events(self, since: int | None = None, follow: bool = False) -> Iterator[dict[str, Any]]:
        """State changes after sequence number ``since``, oldest first.

        Without ``follow`` the daemon ends the stream after the backlog; with it the
        stream stays open and this iterator blocks for new events.
        """
        yield from self._session.stream(protocol.events_request(since, follow, self.timeout))


#: qjobctl's name for it
Client = RawClient
