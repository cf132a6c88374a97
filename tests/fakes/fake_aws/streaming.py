"""Sending a streamed reply chunk by chunk, as the ``x-fake-*`` headers ask: delays, lockstep, aborts."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Optional

from aiohttp import web

from .bedrock_records import finalize_record
from .common import header_int, json_bytes, new_request_id
from .state import FakeState, StreamState
from .stream_plans import StreamPlan

log = logging.getLogger(__name__)

DEFAULT_LOCKSTEP_TIMEOUT_SECONDS = 30.0
DEFAULT_STREAM_CHUNKS = 5


@dataclass
class StreamControls:
    """Per-request streaming controls taken from ``x-fake-*`` headers."""

    chunks: int
    delay_s: float
    lockstep_id: Optional[str]
    lockstep_timeout_s: float
    abort_after: Optional[int]
    pad: int
    stream_id: Optional[str]

    @classmethod
    def from_request(cls, request: web.Request) -> "StreamControls":
        lockstep = request.headers.get("x-fake-lockstep") or None
        timeout_ms = header_int(request, "x-fake-lockstep-timeout-ms", None)
        return cls(
            chunks=max(0, header_int(request, "x-fake-chunks", DEFAULT_STREAM_CHUNKS) or 0),
            delay_s=(header_int(request, "x-fake-chunk-delay-ms", 0) or 0) / 1000.0,
            lockstep_id=lockstep,
            lockstep_timeout_s=DEFAULT_LOCKSTEP_TIMEOUT_SECONDS if timeout_ms is None else timeout_ms / 1000.0,
            abort_after=header_int(request, "x-fake-abort-after", None),
            pad=max(0, header_int(request, "x-fake-chunk-pad", 0) or 0),
            stream_id=lockstep or request.headers.get("x-fake-stream-id") or None,
        )


async def send_stream(
    state: FakeState, request: web.Request, record: dict, route: str, model_id: str,
    plan: StreamPlan, ctl: StreamControls,
) -> web.StreamResponse:
    """Write ``plan`` chunk by chunk, honouring delay / lockstep / abort controls.

    Chunk 1 is sent together with the preamble; the trailer goes out with the
    last chunk.  Before chunk k+1 the writer sleeps ``delay`` and, in lockstep
    mode, waits for one ``/_control/stream/release``.  Client disconnects
    (write errors or handler cancellation) are recorded on the stream.
    """
    stream = state.new_stream(ctl.stream_id)
    stream.route, stream.model_id, stream.request_seq = route, model_id, record["seq"]
    stream.lockstep, stream.total_chunks = ctl.lockstep_id is not None, len(plan.pieces)
    record["stream_id"] = stream.stream_id
    resp = web.StreamResponse(status=200, headers={"Content-Type": plan.content_type, "x-amzn-RequestId": new_request_id(), **plan.headers})
    resp.enable_chunked_encoding()
    if state.bedrock.compress:
        resp.enable_compression()
    try:
        await resp.prepare(request)
        finalize_record(record, resp)
        if not plan.pieces:
            await resp.write(plan.preamble + plan.trailer)
        for index, piece in enumerate(plan.pieces):
            if index > 0 and not await _pace(stream, ctl):
                return _abort(request, stream, resp, gave_up=True)
            if ctl.abort_after is not None and index >= ctl.abort_after:
                return _abort(request, stream, resp, gave_up=False)
            data = (plan.preamble if index == 0 else b"") + piece
            if index == len(plan.pieces) - 1:
                data += plan.trailer
            # aiohttp's write yields only to wait for the transport to drain,
            # so the control API sees this only while the reader is behind.
            stream.blocked_on_write = True
            try:
                await resp.write(data)
            finally:
                stream.blocked_on_write = False
            stream.chunks_sent += 1
        await resp.write_eof()
        stream.finished = True
    except ConnectionError:
        _note_disconnect(stream)
    except asyncio.CancelledError:  # handler_cancellation: the connection was lost
        _note_disconnect(stream)
        raise
    return resp


def _note_disconnect(stream: StreamState) -> None:
    stream.client_disconnected = True
    log.info("stream %s: client disconnected after %d chunk(s)", stream.stream_id, stream.chunks_sent)


async def _pace(stream: StreamState, ctl: StreamControls) -> bool:
    """Delay and/or lockstep wait before the next chunk; False = give up."""
    if ctl.delay_s > 0:
        await asyncio.sleep(ctl.delay_s)  # simulated model latency
    if ctl.lockstep_id is None:
        return True
    return await stream.wait_release(ctl.lockstep_timeout_s)


def _abort(request: web.Request, stream: StreamState, resp: web.StreamResponse, *, gave_up: bool) -> web.StreamResponse:
    """Kill the connection mid-stream (lockstep timeout or ``x-fake-abort-after``)."""
    stream.gave_up = gave_up
    stream.aborted = not gave_up
    log.info("stream %s: %s after %d chunk(s)", stream.stream_id, "gave up" if gave_up else "aborting", stream.chunks_sent)
    if request.transport is not None:
        request.transport.abort()
    return resp


async def send_broken_off(request: web.Request, payload: dict, headers: dict) -> web.StreamResponse:
    """A JSON answer whose connection breaks halfway (``x-fake-break-body``):
    its headers and ``Content-Length`` as usual, then half its bytes, then
    the connection is dropped."""
    body = json_bytes(payload)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", **headers})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    log.info("answer broken off after %d of %d bytes", len(body) // 2, len(body))
    if request.transport is not None:
        request.transport.abort()
    return resp
