"""A minimal full-duplex HTTP/2 client (the ``h2`` library), one request at
a time: enough to drive InvokeModelWithBidirectionalStream in lockstep
against the fake (tests/fakes) and through the sidecar (tests/e2e).

httpx is no use here: it sends the whole request body before reading the
response, so "send a frame, await its answer, send the next" cannot be
written with it.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from typing import Optional

import h2.config
import h2.connection
import h2.events
from botocore.eventstream import EventStreamBuffer

EVENTSTREAM = "application/vnd.amazon.eventstream"


class H2Client:
    """One connection; h2c prior knowledge for http://, ALPN h2 for https://."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: asyncio.Queue = asyncio.Queue()
        self.reader_task: Optional[asyncio.Task] = None

    @classmethod
    async def connect(cls, base_url: str, ca: Optional[str] = None) -> "H2Client":
        parts = urllib.parse.urlsplit(base_url)
        ssl_ctx = None
        if parts.scheme == "https":
            ssl_ctx = ssl.create_default_context(cafile=ca)
            ssl_ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=ssl_ctx)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        await client.flush()
        client.reader_task = asyncio.create_task(client._read_loop())
        return client

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    self.events.put_nowait(event)
                await self.flush()
        finally:
            self.events.put_nowait(None)  # connection closed

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def start(self, headers: list, end_stream: bool = False) -> "BidiCall":
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        await self.flush()
        return BidiCall(self, stream_id)

    async def close(self) -> None:
        self.writer.close()
        if self.reader_task:
            self.reader_task.cancel()


class BidiCall:
    """One request stream: send body frames, read the response as it arrives."""

    def __init__(self, client: H2Client, stream_id: int) -> None:
        self.client, self.stream_id = client, stream_id
        self.status: Optional[int] = None
        self.headers: dict = {}
        self.raw = b""
        self.ended = False
        self.reset_code = None  # set when the peer reset the stream (RST_STREAM)
        self.buffer = EventStreamBuffer()  # botocore's decoder: independent of eventstream.py
        self.pending: list = []

    async def send(self, data: bytes, end_stream: bool = False, timeout: float = 10.0) -> None:
        """Send ``data`` in frames the server's flow-control windows allow."""
        conn = self.client.conn
        while True:
            size = min(len(data), conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size)
            if data and size <= 0:
                await self._pump(timeout)  # the reader applies WINDOW_UPDATEs; responses are kept
                continue
            conn.send_data(self.stream_id, data[:size], end_stream=end_stream and size == len(data))
            await self.client.flush()
            data = data[size:]
            if not data:
                return

    async def _pump(self, timeout: float) -> None:
        """Handle one connection event; other streams' events are dropped."""
        event = await asyncio.wait_for(self.client.events.get(), timeout)
        if event is None or isinstance(event, h2.events.ConnectionTerminated):
            self.ended = True
        elif getattr(event, "stream_id", None) != self.stream_id:
            return
        elif isinstance(event, h2.events.StreamReset):
            self.ended = True
            self.reset_code = event.error_code
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = True
        elif isinstance(event, h2.events.ResponseReceived):
            self.headers = dict(event.headers)
            self.status = int(self.headers[":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.raw += event.data
            if self.headers.get("content-type") == EVENTSTREAM:  # error bodies are JSON
                self.buffer.add_data(event.data)
                self.pending.extend(self.buffer)

    async def response_status(self, timeout: float = 10.0) -> int:
        while self.status is None and not self.ended:
            await self._pump(timeout)
        assert self.status is not None, "stream ended without response headers"
        return self.status

    async def next_message(self, timeout: float = 10.0):
        """The next decoded response event, or None once the response has ended."""
        while not self.pending and not self.ended:
            await self._pump(timeout)
        return self.pending.pop(0) if self.pending else None

    async def body(self, timeout: float = 10.0) -> bytes:
        while not self.ended:
            await self._pump(timeout)
        return self.raw
