"""Every operation but bidirectional streams on the HTTP/2 listener, served by the HTTP/1.1 app.

Bedrock's endpoints negotiate HTTP/2, so the sidecar's ordinary requests
travel over it too.  Rather than a second implementation of every route,
the HTTP/2 listener hands such a stream to the fake's own Bedrock port over
HTTP/1.1, as a load balancer in front of a service would: method, raw path,
headers (``:authority`` as ``Host``) and body unchanged, so the signature is
verified there by botocore on exactly what the sidecar sent.  The answer
comes back frame by frame as it is produced (nothing is buffered beyond one
read), and a break on either side is passed on: an answer broken off
upstream resets the HTTP/2 stream (INTERNAL_ERROR), a stream the client
resets closes the HTTP/1.1 connection, which the route sees as a client
that went away.

The record is made by the HTTP/1.1 app; a marker header carrying a secret
of this process (``RELAY_MARKER``) makes it record HTTP/2 and the client's
own port, so tests read one record per request whatever the listener.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import Optional

import aiohttp
from aiohttp import web
import h2.errors
from yarl import URL

from .h2server import H2Stream, StreamGone

log = logging.getLogger(__name__)

RELAY_MARKER = "x-fake-h2-relay"
# Read from the HTTP/1.1 answer at a time; also the most held per stream.
RELAY_READ_SIZE = 64 * 1024
# The HTTP/1.1 hop's receive buffer. Left to the kernel's autotuning, an
# answer its HTTP/2 client does not read piled up there (about 9 MB a
# stream): 200 unread streams had the fake write 1.8 GB, and its
# control API stalled for tens of seconds under that load.
RELAY_SOCKET_BUFFER = 64 * 1024
# HTTP/1.1 hop-by-hop headers an HTTP/2 answer must not carry (RFC 9113 8.2.2).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
# Headers the client library would add on its own; the relay sends only what came.
SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class H2Relay:
    """The HTTP/1.1 client the HTTP/2 listener forwards ordinary operations with."""

    def __init__(self, bedrock_url: str) -> None:
        self.bedrock_url = bedrock_url
        self.secret = secrets.token_hex(16)
        self._session: Optional[aiohttp.ClientSession] = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # The fake's own certificate: trust is what the HTTP/2 side checked.
            connector = aiohttp.TCPConnector(ssl=False, limit=0, force_close=False, socket_factory=_relay_socket)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def marker(self, peer_port: Optional[int]) -> str:
        return f"{self.secret}:{peer_port if peer_port is not None else ''}"

    def read_marker(self, value: Optional[str]) -> tuple[bool, Optional[int]]:
        """``(relayed, client port)`` from a request's marker header."""
        if value is None:
            return False, None
        secret, _, port = value.partition(":")
        if not secrets.compare_digest(secret, self.secret):
            return False, None
        return True, int(port) if port.isdigit() else None

    async def forward(self, stream: H2Stream) -> None:
        """Serve ``stream`` through the HTTP/1.1 app until one side ends."""
        body = bytearray()
        while (chunk := await stream.receive(timeout=60.0)) is not None:
            body += chunk
        answer = asyncio.create_task(self._answer(stream, bytes(body)))
        # The client may reset the stream while the answer is pending or
        # being written: stop the answer so the HTTP/1.1 side sees it.
        watch = asyncio.create_task(_until_reset(stream))
        try:
            await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, watch):
                task.cancel()
            await asyncio.gather(answer, watch, return_exceptions=True)
        if answer.done() and not answer.cancelled() and answer.exception() is not None:
            raise answer.exception()  # type: ignore[misc]

    async def _answer(self, stream: H2Stream, body: bytes) -> None:
        # A marker the client sent is not ours: only the relay's goes on.
        headers = [(name, value) for name, value in stream.headers.items() if name.lower() != RELAY_MARKER]
        headers.append((RELAY_MARKER, self.marker(stream.peer_port)))
        url = URL(self.bedrock_url + stream.raw_path, encoded=True)
        resp = await self.session().request(
            stream.method, url, headers=headers, data=body, skip_auto_headers=SKIP_AUTO, allow_redirects=False,
        )
        try:
            out = [(name.lower(), value) for name, value in resp.headers.items() if name.lower() not in HOP_BY_HOP]
            await stream.send_headers(resp.status, out)
            try:
                while chunk := await resp.content.read(RELAY_READ_SIZE):
                    await stream.send_data(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
                log.info("h2 relay: answer broken off upstream (%s): resetting stream %d", exc, stream.stream_id)
                await stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
                return
            await stream.send_data(b"", end_stream=True)
        finally:
            # Closed, not released: an answer cut short must end its
            # HTTP/1.1 connection, which is how the route learns of it.
            resp.close()


def _relay_socket(addr_info) -> socket.socket:
    """The HTTP/1.1 hop's socket, its receive buffer set before it connects
    (so the window it offers is scaled to it): what Bedrock would hold
    for a stream is what HTTP/2's flow control lets through, not what a
    loopback connection can take."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_SOCKET_BUFFER)
    return sock


def hold_little(request: web.Request) -> None:
    """The HTTP/1.1 app's side of a relayed request: its send buffer
    capped too (autotuned, it took about 4 MB of an unread answer)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RELAY_SOCKET_BUFFER)


async def _until_reset(stream: H2Stream) -> None:
    """Return once the client resets the stream or the connection goes."""
    while True:
        try:
            await stream.receive(timeout=3600.0)
        except (StreamGone, asyncio.TimeoutError):
            return
