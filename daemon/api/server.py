"""The API's Unix socket and the uvicorn server on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from qjobd.daemon.api.peer import PeerCredProtocol
from qjobd.errors import QjobdError


class SocketInUse(QjobdError):
    """Another qjobd is serving on the socket path or the database."""


class SocketServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT.

    (uvicorn re-raises a captured signal after ``serve()`` returns, which would kill the
    process before the store is closed.) Stop it with ``should_exit = True``.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        #: set once the socket accepts connections
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app: ASGIApp) -> SocketServer:
    # no proxy-header middleware: nothing proxies a Unix socket, and it ran on every request
    config = uvicorn.Config(app, http=PeerCredProtocol, lifespan="off", log_config=None,
                            access_log=False, server_header=False, date_header=False,
                            proxy_headers=False, timeout_graceful_shutdown=3)
    return SocketServer(config)


def bind_socket(path: Path, mode: int) -> socket.socket:
    """Bind and listen on a Unix socket at ``path`` with ``mode``, never wider for a moment.

    A stale socket file left by a crash is replaced; a live one is refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: its daemon is gone
        else:
            raise SocketInUse(f"another qjobd is already serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind under a umask that leaves only the owner's bits, then widen to the mode wanted
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(512)
    sock.setblocking(False)
    return sock
