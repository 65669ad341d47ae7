"""The daemon's parts served by the real uvicorn server on a Unix socket, in a thread.

For what an ASGI transport cannot show: what uvicorn does with a connection after an
answer (kept or dropped), requests it cannot parse. The thread has its own event loop;
the store, the scheduler (with scripted backends ``fake`` and ``held``) and the server
all live on it. :func:`raw_exchange` speaks HTTP/1.1 on one socket, so a test knows the
second request went over the same connection as the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qjobd.daemon.api.server import bind_socket, make_server
from qjobd.daemon.config import parse_config
from qjobd.daemon.process.wiring import Wired, wire
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import FAST_POLLING, short_tmpdir


@dataclass
class Served:
    socket: Path
    db: Path
    wired: Wired
    #: connections uvicorn accepted so far
    connections: list[int] = field(default_factory=list)

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)),
                            base_url="http://qjobd", timeout=timeout)

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(self.socket))
        return sock


@contextlib.contextmanager
def served(daemon: dict[str, Any] | None = None,
           prepare: Callable[[Wired], None] | None = None) -> Iterator[Served]:
    """Serve a daemon configured with ``[daemon]`` keys ``daemon``; ``prepare`` may patch
    its parts before the socket opens."""
    root = short_tmpdir()
    config = parse_config({
        "daemon": {"socket": str(root / "s.sock"), "database": str(root / "q.sqlite3"),
                   **(daemon or {})},
        "polling": FAST_POLLING,
        "backends": {"fake": {"type": "scripted"}, "held": {"type": "scripted"}},
    })
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        store = await Store.open(config.daemon.database)
        backends: dict[str, Any] = {"fake": ScriptedBackend("fake", {}),
                                    "held": ScriptedBackend("held", {"hold": True})}
        for backend in backends.values():
            await backend.start()
        wired = wire(config, store, backends)
        if prepare is not None:
            prepare(wired)
        server = make_server(wired.app)
        accepted: list[int] = []
        protocol = server.config.http

        class Counting(protocol):  # type: ignore[misc, valid-type]
            def connection_made(self, transport: asyncio.Transport) -> None:
                accepted.append(1)
                super().connection_made(transport)

        server.config.http = Counting
        sock = bind_socket(config.daemon.socket, 0o600)
        scheduler = asyncio.create_task(wired.scheduler.run())
        box.update(server=server, loop=asyncio.get_running_loop(),
                   served=Served(config.daemon.socket, config.daemon.database, wired, accepted))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        await server.ready.wait()
        ready.set()
        try:
            await serving
        finally:
            wired.changes.close()
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
            for backend in backends.values():
                await backend.aclose()
            await store.close()
            sock.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # raised again to the test that waits
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="served-daemon", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box:
        raise box["error"]
    try:
        yield box["served"]
    finally:
        box["loop"].call_soon_threadsafe(setattr, box["server"], "should_exit", True)
        thread.join(30)


def raw_exchange(sock: socket.socket, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request and its answer on ``sock`` (kept open)."""
    head = [f"{method} {path} HTTP/1.1", "Host: qjobd", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer's head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of an answer's body")
        rest += chunk
    return status, headers, rest[:length]


def error_of(body: bytes) -> dict[str, Any]:
    """The error object of an error answer (asserting the API's error shape)."""
    answer = json.loads(body)
    assert set(answer) == {"error"}, answer
    assert set(answer["error"]) == {"code", "message", "details"}, answer
    return answer["error"]
