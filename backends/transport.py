"""The HTTP transport every provider's client uses: httpx's own, with cheaper pool checks.

Before each request, and again as each response is closed, httpcore's pool asks every
pooled connection whether it has expired, and each idle one answers by asking its stream
for ``is_readable``. On anyio's streams that lookup rebuilds the socket's whole attribute
table (a ``getpeername`` call and half a dozen closures) to find the raw socket, then
polls it: 7.0 us a check on the lab's 2-CPU machine, against 0.9 us for the poll alone,
and up to 40 checks a request with 20 connections kept. In issue 13's profile of the
daemon these checks fell from 9.1 % to 3.8 % of its event loop's samples. The streams
here keep the raw socket they were opened on, so a check is the poll alone. Everything
else (the connections, HTTP/1.1, TLS, timeouts, the exceptions httpx maps) is httpcore's.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore._backends.base import SOCKET_OPTION, AsyncNetworkStream
from httpcore._utils import is_socket_readable

__all__ = ["make_transport"]


class _Stream(AnyIOStream):
    """httpcore's anyio stream, holding its raw socket for the pool's checks."""

    def __init__(self, stream: anyio.abc.ByteStream, raw: socket.socket | None) -> None:
        super().__init__(stream)
        self._raw = raw

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_socket_readable(self._raw)
        if info == "socket":
            return self._raw
        return super().get_extra_info(info)

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
                        ) -> AsyncNetworkStream:
        tls = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(tls, AnyIOStream)
        return _Stream(tls._stream, self._raw)


def _held(stream: AsyncNetworkStream) -> _Stream:
    assert isinstance(stream, AnyIOStream)
    raw = stream._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    return _Stream(stream._stream, raw)


class _Backend(AnyIOBackend):
    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                          local_address: str | None = None,
                          socket_options: Iterable[SOCKET_OPTION] | None = None
                          ) -> AsyncNetworkStream:
        return _held(await super().connect_tcp(host, port, timeout, local_address,
                                               socket_options))

    async def connect_unix_socket(self, path: str,
                                  timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[SOCKET_OPTION] | None = None
                                  ) -> AsyncNetworkStream:
        return _held(await super().connect_unix_socket(path, timeout, socket_options))


def make_transport(limits: httpx.Limits, *, verify: ssl.SSLContext | bool = True
                   ) -> httpx.AsyncHTTPTransport:
    """httpx's transport with ``limits`` and no retries (a retried create could duplicate a
    job), its pool on streams whose checks cost one poll. ``verify`` as httpx's."""
    transport = httpx.AsyncHTTPTransport(retries=0, limits=limits, verify=verify)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=transport._pool._ssl_context,  # the one httpx built from ``verify``
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        retries=0, network_backend=_Backend())
    return transport
