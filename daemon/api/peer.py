"""Who is on the other end of the Unix socket (SO_PEERCRED), as the API's owner identity."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @property
    def admin(self) -> bool:
        """Root and the daemon's own user see and act on every batch."""
        return self.uid in (0, os.geteuid())

    @classmethod
    def me(cls) -> Peer:
        return cls(os.getpid(), os.geteuid(), os.getegid())


def peer_of(sock: socket.socket) -> Peer | None:
    """The credentials the kernel captured when the peer connected."""
    if sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


class PeerCredProtocol(H11Protocol):
    """uvicorn's h11 protocol, with the peer's credentials in every request's ``scope["state"]``.

    ASGI's ``scope["client"]`` is None on a Unix socket, so the peer is read here, once
    per connection, and handed to the app as ``scope["state"]["peer"]``.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock: Any = transport.get_extra_info("socket")
        peer = peer_of(sock) if sock is not None else None
        # a copy per connection: the shared app_state dict must not carry one peer to another
        self.app_state = {**self.app_state, "peer": peer}

    def send_400_response(self, msg: str) -> None:
        """A request uvicorn cannot parse, answered in the API's error shape (uvicorn's own
        answer is plain text); the connection closes, as the stream is beyond repair."""
        body = json.dumps({"error": {"code": "bad_http", "message": msg,
                                     "details": None}}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
