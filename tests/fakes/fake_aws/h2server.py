"""A small HTTP/2 server (the h2 library on asyncio streams) for the ``--h2-port`` listener.

A server of our own rather than an ASGI server: a stream's response
may end (say, after an exception event) while the client is still sending,
and those late DATA frames must be acknowledged and ignored.  hypercorn
0.18 forgets a stream once its response ends, and a later DATA frame for it
then raises KeyError in its connection loop, dropping the whole connection
(and maybe the exception event the client has not read yet).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from typing import Any, Awaitable, Callable, Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from multidict import CIMultiDict

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_READ_SIZE = 64 * 1024
H2_MAX_CONCURRENT_STREAMS = 1000


class StreamGone(Exception):
    """The client reset the HTTP/2 stream, or the connection is gone."""


_BODY_END = object()  # queued when the client ends its side of the stream


class H2Stream:
    """One request on the HTTP/2 listener, as a handler sees it."""

    def __init__(self, conn: "H2ServerConnection", stream_id: int, headers: list) -> None:
        self._conn = conn
        self.stream_id = stream_id
        pseudo = {name: value for name, value in headers if name.startswith(":")}
        self.method = pseudo.get(":method", "")
        self.raw_path = pseudo.get(":path", "")
        self.scheme = pseudo.get(":scheme", "")
        self.headers = CIMultiDict((name, value) for name, value in headers if not name.startswith(":"))
        # HTTP/2 carries the host as :authority, while SigV4 signs it as `host`.
        if "host" not in self.headers and ":authority" in pseudo:
            self.headers["Host"] = pseudo[":authority"]
        self.peer_port = conn.peer_port
        self._body: asyncio.Queue = asyncio.Queue()

    def deliver(self, item: Any) -> None:
        """Queue a body chunk, ``_BODY_END`` or a ``StreamGone`` for ``receive``."""
        self._body.put_nowait(item)

    async def receive(self, timeout: float) -> Optional[bytes]:
        """The next request body chunk, or None once the client has ended its side.

        Raises ``StreamGone`` if the client reset the stream or disconnected,
        and ``asyncio.TimeoutError`` if nothing arrives within ``timeout``.
        """
        item = await asyncio.wait_for(self._body.get(), timeout)
        if isinstance(item, StreamGone):
            raise StreamGone(str(item))
        return None if item is _BODY_END else item

    async def send_headers(self, status: int, headers: list) -> None:
        await self._conn.send_headers(self.stream_id, [(":status", str(status)), *headers])

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        await self._conn.send_data(self.stream_id, data, end_stream)

    async def reset(self, code: h2.errors.ErrorCodes) -> None:
        """RST_STREAM with ``code`` (nothing if the stream or connection is already gone)."""
        await self._conn.reset_stream(self.stream_id, code)


class H2ServerConnection:
    """One HTTP/2 connection: a read loop feeding h2, one handler task per request.

    Responses can start and continue while request bodies are still arriving.
    Inbound data is acknowledged as soon as it is queued; outbound data waits
    for the peer's flow-control window.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Callable[[H2Stream], Awaitable[None]]) -> None:
        self.reader, self.writer, self.handler = reader, writer, handler
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        # More streams at once than h2's default 100: the sidecar carries
        # every request of a pod on one connection, and a test may hold
        # more answers open than that.
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: H2_MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.h2.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        peer = writer.get_extra_info("peername")
        self.peer_port = peer[1] if peer else None
        self.streams: dict[int, H2Stream] = {}
        self.tasks: set[asyncio.Task] = set()
        self._window_waiters: list[asyncio.Future] = []
        self.closed = False

    async def run(self, initial: bytes) -> None:
        """Serve until the peer goes away; ``initial`` is what was read while sniffing the preface."""
        self.h2.initiate_connection()
        await self._flush()
        data = initial
        try:
            while data and await self._receive(data):
                data = await self.reader.read(H2_READ_SIZE)
        except OSError:
            pass  # reset or TLS failure: the same as the peer going away
        finally:
            self._mark_closed()
            self.writer.close()

    def close(self) -> None:
        """Server shutdown: GOAWAY, then close (the read loop then ends)."""
        if not self.closed:
            self.h2.close_connection()
            self.writer.write(self.h2.data_to_send())
        self._mark_closed()
        self.writer.close()
        for task in self.tasks:
            task.cancel()

    async def _receive(self, data: bytes) -> bool:
        """Feed bytes to h2 and act on its events; False once the connection is over."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("h2 connection (port %s): protocol error: %s", self.peer_port, exc)
            await self._flush()  # h2 has queued a GOAWAY
            return False
        for event in events:
            self._on_event(event)
        await self._flush()
        return not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id, event.headers)
            task = asyncio.create_task(self._run_handler(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.DataReceived):
            # Acknowledge even for streams whose response has ended: the
            # client may still be sending, and the connection window must not leak.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._deliver(event.stream_id, event.data)
        elif isinstance(event, h2.events.StreamEnded):
            self._deliver(event.stream_id, _BODY_END)
        elif isinstance(event, h2.events.StreamReset):
            self._deliver(event.stream_id, StreamGone(f"stream reset by client (error code {event.error_code})"))
            self._wake_window_waiters()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake_window_waiters()

    def _deliver(self, stream_id: int, item: Any) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.deliver(item)

    async def _run_handler(self, stream: H2Stream) -> None:
        try:
            await self.handler(stream)
        except StreamGone:
            pass
        except Exception:  # a bug in the fake: make it loud, and do not leave the client hanging
            log.exception("h2 handler failed on stream %d", stream.stream_id)
            if not self.closed:
                self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                await self._flush()
        finally:
            self.streams.pop(stream.stream_id, None)

    async def send_headers(self, stream_id: int, headers: list) -> None:
        self._check_open()
        try:
            self.h2.send_headers(stream_id, headers)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(str(exc)) from None
        await self._flush()

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send ``data`` in frames the peer's flow-control windows allow."""
        while True:
            self._check_open()
            try:
                window = self.h2.local_flow_control_window(stream_id)
                size = min(len(data), window, self.h2.max_outbound_frame_size)
                if data and size <= 0:
                    await self._window_opened()
                    continue
                chunk, data = data[:size], data[size:]
                self.h2.send_data(stream_id, chunk, end_stream=end_stream and not data)
            except h2.exceptions.ProtocolError as exc:
                raise StreamGone(str(exc)) from None
            await self._flush()
            if not data:
                return

    async def reset_stream(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            return  # already closed or reset
        await self._flush()

    def _check_open(self) -> None:
        if self.closed:
            raise StreamGone("connection closed")

    async def _window_opened(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._window_waiters.append(waiter)
        await waiter

    def _wake_window_waiters(self) -> None:
        for waiter in self._window_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._window_waiters.clear()

    async def _flush(self) -> None:
        data = self.h2.data_to_send()
        if not data or self.closed:
            return
        self.writer.write(data)
        try:
            await self.writer.drain()
        except OSError:
            self._mark_closed()

    def _mark_closed(self) -> None:
        """Connection over: every open stream's handler sees ``StreamGone``."""
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream.deliver(StreamGone("connection closed"))
        self._wake_window_waiters()


class H2Listener:
    """The HTTP/2 port: TLS with ALPN h2 (offered with http/1.1), or cleartext h2c with prior knowledge.

    A connection that does not start with the HTTP/2 preface (an HTTP/1.1
    client, with or without TLS) gets a 505 JSON error and is closed.
    """

    def __init__(self, handler: Callable[[H2Stream], Awaitable[None]]) -> None:
        self.handler = handler
        self.connections: set[H2ServerConnection] = set()
        self.connection_tasks: set[asyncio.Task] = set()
        self.server: Optional[asyncio.Server] = None

    async def start(self, sock: socket.socket, ssl_ctx: Optional[ssl.SSLContext]) -> None:
        self.server = await asyncio.start_server(self._on_connection, sock=sock, ssl=ssl_ctx, backlog=1024)

    async def close(self) -> None:
        """Stop accepting, GOAWAY every connection, and let their tasks finish."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        # Connection tasks left for asyncio.run to cancel make asyncio log
        # their CancelledError, so wait for them (closing ends their reads).
        if self.connection_tasks:
            await asyncio.wait(self.connection_tasks, timeout=1.0)
        if self.server is not None:
            await self.server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connection_tasks.add(task)
        task.add_done_callback(self.connection_tasks.discard)
        try:
            initial = await read_h2_preface(reader)
        except OSError:
            writer.close()
            return
        if not initial.startswith(H2_PREFACE):
            refuse_non_h2(writer, initial)
            return
        conn = H2ServerConnection(reader, writer, self.handler)
        self.connections.add(conn)
        try:
            await conn.run(initial)
        finally:
            self.connections.discard(conn)


async def read_h2_preface(reader: asyncio.StreamReader) -> bytes:
    """The connection's first bytes: enough to tell the HTTP/2 preface from anything else."""
    data = b""
    while len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
        chunk = await reader.read(H2_READ_SIZE)
        if not chunk:
            break
        data += chunk
    return data


def refuse_non_h2(writer: asyncio.StreamWriter, initial: bytes) -> None:
    """Answer a non-HTTP/2 client (for example HTTP/1.1 after ALPN) with a 505 and close."""
    if initial:
        log.info("h2 listener: refusing a non-HTTP/2 connection (%r...)", initial[:16])
        body = json.dumps({"message": "fake: this port speaks HTTP/2 only (ALPN h2, or h2c with prior knowledge)"}).encode()
        writer.write(
            b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: application/json\r\n"
            b"x-amzn-errortype: HttpVersionNotSupported\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode() + body
        )
    writer.close()
