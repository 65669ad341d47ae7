"""``qjobd.client.Client``: the blocking client, with typed answers.

    from qjobd.client import Client

    with Client() as qjobd:                      # the socket qjobctl would use
        batch = qjobd.submit({"bell": source}, backend="local", shots=1000)
        batch = qjobd.wait(batch)                # BatchFailed / BatchTimeout if not completed
        print(qjobd.results(batch)["bell"].counts)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from qjobd.daemon.client import protocol
from qjobd.daemon.client.models import Batch, BatchPage, Event, Health, Results
from qjobd.daemon.client.transport import SyncSession

__all__ = ["BatchRef", "Client"]

#: a batch, or its id
BatchRef = str | Batch


def batch_id_of(batch: BatchRef) -> str:
    return batch.id if isinstance(batch, Batch) else str(batch)


class Client:
    """A blocking client of qjobd's socket API; one connection pool: close it (or ``with``).

    ``socket``: the daemon's socket; by default found as ``qjobctl`` finds it
    (``$QJOBD_SOCKET``, else the daemon's config file, else the default path).
    ``timeout``: seconds per request (a long-poll gets its own wait on top).
    ``reconnect_for``: how long ``wait()`` keeps trying to reach a daemon that went away
    (restarted) before it raises DaemonUnreachable; 0 raises at once.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float = 30.0,
                 reconnect_for: float = protocol.RECONNECT_FOR) -> None:
        self._session = SyncSession(socket, timeout)
        self.socket_path = self._session.socket_path
        self.timeout = timeout
        self.reconnect_for = reconnect_for

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def submit(self, circuits: Mapping[str, str], backend: str = "local", *,
               shots: int | None = None, name: str | None = None,
               tags: Mapping[str, str] | None = None, timeout: float | None = None,
               options: Mapping[str, Any] | None = None,
               idempotency_key: str | None = None,
               metadata: Mapping[str, Any] | None = None) -> Batch:
        """Submit a batch of OpenQASM circuits (label -> source); the stored batch.

        ``shots`` defaults per backend; ``timeout`` is the batch's own limit (it ends
        ``timed_out``); ``options`` are the backend's. With ``idempotency_key`` the same
        body again returns the existing batch; another body under the key: ApiError 409.
        ``metadata``: a JSON object of yours stored with the batch and returned as
        ``Batch.metadata`` (at most [daemon] max_metadata_bytes, 64 KiB by default).
        """
        return Batch.from_dict(self._session.send(protocol.submit_request(
            circuits, backend, shots=shots, name=name, tags=tags, timeout=timeout,
            options=options, idempotency_key=idempotency_key, metadata=metadata)))

    def get(self, batch: BatchRef) -> Batch:
        """The batch with its jobs, as it is now."""
        return Batch.from_dict(self._session.send(protocol.get_request(batch_id_of(batch))))

    def list(self, state: str | None = None, backend: str | None = None,
             limit: int | None = None, cursor: str | None = None) -> BatchPage:
        """One page of your batches, newest first (``page.next_cursor`` for the next)."""
        return BatchPage.from_dict(self._session.send(
            protocol.list_request(state, backend, limit, cursor)))

    def wait(self, batch: BatchRef, timeout: float | None = None, *,
             raise_on_failure: bool = True, reconnect_for: float | None = None) -> Batch:
        """Block until the batch ends; the completed batch.

        Raises BatchFailed if it ended failed, canceled or timed_out (with
        ``raise_on_failure=False`` that batch is returned instead), BatchTimeout if
        ``timeout`` seconds pass first (None: no limit). Made of long-polls (the daemon
        wakes them the moment the batch ends); a daemon restart during the wait is
        ridden out for ``reconnect_for`` seconds (default: the client's).
        """
        answer = self._session.run(protocol.wait_plan(
            batch_id_of(batch), timeout, base_timeout=self.timeout,
            reconnect_for=self.reconnect_for if reconnect_for is None else reconnect_for))
        return protocol.wait_outcome(answer, timeout, raise_on_failure=raise_on_failure)

    def results(self, batch: BatchRef) -> Results:
        """A terminal batch's counts by label (ApiError 409 while it is not terminal)."""
        return Results.from_dict(self._session.send(
            protocol.results_request(batch_id_of(batch))))

    def run(self, circuits: Mapping[str, str], backend: str = "local", *,
            wait_timeout: float | None = None, **submit: Any) -> Results:
        """``submit``, ``wait`` and ``results`` in one call (``submit``'s keywords)."""
        batch = self.wait(self.submit(circuits, backend, **submit), wait_timeout)
        return self.results(batch)

    def cancel(self, batch: BatchRef) -> Batch:
        """Ask the daemon to cancel the batch (idempotent); the batch as it is then."""
        return Batch.from_dict(self._session.send(
            protocol.cancel_request(batch_id_of(batch))))

    def health(self) -> Health:
        """The daemon's version, uptime, counts by state and backends."""
        return Health.from_dict(self._session.send(protocol.health_request()))

    def events(self, since: int | None = None, follow: bool = False) -> Iterator[Event]:
        """State changes after sequence number ``since``, oldest first; with ``follow``
        the stream stays open and the iterator blocks for new ones."""
        for item in self._session.stream(protocol.events_request(since, follow, self.timeout)):
            yield Event.from_dict(item)
