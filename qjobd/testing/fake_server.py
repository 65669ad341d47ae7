"""Serving a fake provider's ASGI app over real HTTP on 127.0.0.1: the part every fake shares.

A fake subclasses :class:`FakeServer` and implements ``_asgi``; it then runs in a
background thread with its own event loop (``with Fake(...) as fake:``, or ``start()``
and ``stop()``), or on the main thread until SIGTERM/SIGINT (``serve_forever``, for a
fake in its own process). Each connection's transport is kept in ``_transports`` by
client address, so the fake can drop an answer by closing the connection; ``_recorder``
logs each request once, with the status it was answered with.
:class:`TokenBucket` is the server-side request budget a fake enforces with 429s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["FakeServer", "TokenBucket"]


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the owner stops it with should_exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class FakeServer:
    """An ASGI app (the subclass's ``_asgi``) served by uvicorn on ``host``:``port``.

    ``port`` 0 picks a free port; ``port`` holds the bound one once listening.
    """

    #: the fake, as thread names and errors say it ("fake IonQ")
    label: ClassVar[str] = "fake server"
    #: the listening socket's backlog
    backlog: ClassVar[int] = 2048
    #: seconds an idle keep-alive connection stays open
    keep_alive: ClassVar[int] = 5
    #: seconds stop() gives requests in flight
    graceful_shutdown: ClassVar[float] = 1

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.RLock()
        self._transports: dict[Any, asyncio.BaseTransport] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        #: bumped by the fake's reset(): requests in flight across a reset are not logged
        self._generation = 0

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise NotImplementedError

    def _recorder(self, log: Callable[[int], None], send: Any
                  ) -> tuple[Callable[[int], None], Callable[[Any], Awaitable[None]]]:
        """``record(status)`` for one request, and a ``send`` that records its answer's status.

        ``log(status)`` runs under the lock, for the first record only (an answer, 500 for
        a crash, 0 for a dropped connection), and not at all once a reset has begun since
        the request arrived. It runs before the response leaves, so a client never sees
        an answer whose request is not in the log yet.
        """
        generation = self._generation
        logged = False

        def record(status: int) -> None:
            nonlocal logged
            if not logged:
                logged = True
                with self._lock:
                    if generation == self._generation:
                        log(status)

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        return record, recording_send

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    def _make_server(self) -> uvicorn.Server:
        fake = self

        class _Protocol(H11Protocol):
            # remember each connection's transport, so an answer can be dropped by closing
            # the connection
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                fake._transports[self.client] = transport
                # uvicorn writes headers and body separately: without TCP_NODELAY every
                # response waits out the peer's 40 ms delayed ACK
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def connection_lost(self, exc: Exception | None) -> None:
                fake._transports.pop(self.client, None)
                super().connection_lost(exc)

        config = uvicorn.Config(
            self._asgi, http=_Protocol, ws="none", lifespan="off", log_config=None,
            log_level="warning", access_log=False, proxy_headers=False, server_header=False,
            interface="asgi3", backlog=self.backlog, timeout_keep_alive=self.keep_alive,
            timeout_graceful_shutdown=self.graceful_shutdown)
        return _Server(config)

    def start(self, timeout: float = 10.0) -> Self:
        """Serve from a background thread with its own event loop; returns self."""
        if self._thread is not None:
            raise RuntimeError("already started")
        sock = self._bind()
        server = self._server = self._make_server()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # surfaced by start()/stop()
                failure.append(exc)
            finally:
                sock.close()

        name = f"{self.label.lower().replace(' ', '-')}:{self.port}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if failure or not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(f"{self.label} failed to start: {failure!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.label} did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, port_file: str | None = None) -> None:
        """Process mode: serve on the main thread until SIGTERM/SIGINT.

        ``port_file`` gets the bound port (written atomically) once the socket listens.
        """
        sock = self._bind()
        if port_file:
            tmp = f"{port_file}.tmp"
            Path(tmp).write_text(f"{self.port}\n")
            os.replace(tmp, port_file)
        server = self._server = self._make_server()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, setattr, server, "should_exit", True)
            await server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        finally:
            sock.close()


class TokenBucket:
    """A server-side request budget: ``rate`` tokens a second, at most ``burst`` saved.

    Full at its first request, and again at the first after :meth:`reset`. Not
    thread-safe: its owner holds a lock around it.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._tokens = 0.0
        self._at = time.monotonic()
        self._primed = False

    def take(self, rate: float, burst: float) -> float:
        """0 if a token was taken, else the seconds until there is one."""
        now = time.monotonic()
        if not self._primed:
            self._tokens, self._at, self._primed = burst, now, True
        self._tokens = min(burst, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate
