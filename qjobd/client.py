"""The Python client of qjobd's socket API: ``Client`` (blocking) and ``AsyncClient``.

    from qjobd.client import BatchFailed, Client

    with Client() as qjobd:              # the socket qjobctl would use
        batch = qjobd.submit({"bell": BELL}, backend="local", shots=1000)
        try:
            batch = qjobd.wait(batch, timeout=600)
        except BatchFailed as exc:
            print(exc.state, exc.errors)
        else:
            print(qjobd.results(batch)["bell"].counts)

``AsyncClient`` has the same methods as coroutines (``async with AsyncClient() as q``).
Answers are frozen dataclasses (``Batch``, ``Job``, ``Results``/``CircuitResult``,
``BatchPage``, ``Event``, ``Health``); each keeps the daemon's JSON as ``raw``.

``wait()`` follows ionq-core's ``wait_for_job``: it returns the batch once it completed,
raises :class:`BatchFailed` (``batch_id``, ``state``, ``errors``: job id -> error) if it
ended failed, canceled or timed_out, and :class:`BatchTimeout` (``batch_id``, ``timeout``,
``last_state``) if its ``timeout`` passed first. It is made of long-polls that the
daemon ends the moment the batch does, and rides out a daemon restart: while the daemon
cannot be reached it tries again, with backoff, for ``reconnect_for`` seconds (default
60), then raises :class:`DaemonUnreachable`.

Every error is a :class:`ClientError`, itself a ``qjobd.errors.QjobdError``.
"""

from __future__ import annotations

from qjobd.daemon.client.aio import AsyncClient
from qjobd.daemon.client.errors import (
    ApiError,
    BatchFailed,
    BatchTimeout,
    ClientError,
    DaemonTimeout,
    DaemonUnreachable,
    SocketConfigError,
)
from qjobd.daemon.client.models import (
    TERMINAL_STATES,
    Batch,
    BatchPage,
    CircuitResult,
    Event,
    Health,
    Job,
    Results,
)
from qjobd.daemon.client.protocol import RECONNECT_FOR, resolve_socket_path
from qjobd.daemon.client.sync import BatchRef, Client

__all__ = [
    "RECONNECT_FOR",
    "TERMINAL_STATES",
    "ApiError",
    "AsyncClient",
    "Batch",
    "BatchFailed",
    "BatchPage",
    "BatchRef",
    "BatchTimeout",
    "CircuitResult",
    "Client",
    "ClientError",
    "DaemonTimeout",
    "DaemonUnreachable",
    "Event",
    "Health",
    "Job",
    "Results",
    "SocketConfigError",
    "resolve_socket_path",
]
