"""The providers' HTTP transport (backends/transport.py) on real loopback sockets.

Its streams answer the pool's "has this idle connection been closed by the server?"
from the raw socket they hold. If that answer were wrong, a request after a server's
quiet close would be sent on the dead connection and fail; these tests close each
connection behind the client's back, over plain TCP and over TLS, and expect the next
request to be sent on a new connection and answered.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from qjobd.backends.transport import make_transport
from tests.conftest import eventually

ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n"
          b"\r\n{\"ok\": 1}\r\n")


@dataclass
class QuietCloser:
    """Answers one request per connection with keep-alive, then closes it without a word."""

    connections: int = 0
    closed: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
            await asyncio.sleep(0.05)  # after the client has put the connection back
        finally:
            # the socket closed at once, with no TLS goodbye: the client's end reads EOF
            writer.transport.abort()
            await writer.wait_closed()
            self.closed += 1


async def start(server: QuietCloser, tls: ssl.SSLContext | None
                ) -> tuple[asyncio.Server, int]:
    srv = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
    return srv, srv.sockets[0].getsockname()[1]


@pytest.fixture
def closer() -> QuietCloser:
    return QuietCloser()


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def requests_after_quiet_closes(closer: QuietCloser, scheme: str,
                                      server_tls: ssl.SSLContext | None,
                                      verify: ssl.SSLContext | bool) -> None:
    srv, port = await start(closer, server_tls)
    transport = make_transport(httpx.Limits(max_connections=8, max_keepalive_connections=8),
                               verify=verify)
    async with srv, httpx.AsyncClient(transport=transport,
                                      base_url=f"{scheme}://127.0.0.1:{port}") as client:
        for n in range(1, 4):
            r = await client.get("/jobs")
            assert r.status_code == 200 and r.json() == {"ok": 1}
            # the pooled connection is now closed by the server, and the client was not told
            await eventually(lambda n=n: closer.closed == n)
        assert closer.connections == 3


async def test_a_connection_the_server_closed_is_not_reused(closer: QuietCloser) -> None:
    await requests_after_quiet_closes(closer, "http", None, True)


async def test_over_tls_too(closer: QuietCloser, tmp_path: Path) -> None:
    server, client = self_signed(tmp_path)
    await requests_after_quiet_closes(closer, "https", server, client)


async def test_the_pool_check_reads_the_socket_the_stream_holds(closer: QuietCloser) -> None:
    """The check costs a poll: it never asks anyio's stream for its attribute table."""
    srv = await asyncio.start_server(
        lambda r, w: _keep_open(r, w, closer), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    transport = make_transport(httpx.Limits(max_connections=2, max_keepalive_connections=2))
    async with srv, httpx.AsyncClient(transport=transport,
                                      base_url=f"http://127.0.0.1:{port}") as client:
        await client.get("/a")
        [connection] = transport._pool.connections
        stream = connection._connection._network_stream
        asked: list[object] = []
        inner = stream._stream
        original = inner.extra

        def extra(attribute: object, default: object = None) -> object:
            asked.append(attribute)
            return original(attribute, default)

        inner.extra = extra  # type: ignore[method-assign]
        assert stream.get_extra_info("is_readable") is False
        assert connection.has_expired() is False
        await client.get("/b")
        assert asked == []
        assert closer.connections == 1


async def _keep_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     closer: QuietCloser) -> None:
    closer.connections += 1
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
