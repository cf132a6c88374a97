"""Streamed Bedrock replies on the wire: real flushing, lockstep releases, client disconnects and aborts."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp
import pytest
from botocore.eventstream import EventStreamBuffer

from harness import MODEL, Fake, control, converse_body


async def _open_stream(session: aiohttp.ClientSession, fake: Fake, headers: dict) -> aiohttp.ClientResponse:
    """Start a converse-stream request authenticated with a bearer token."""
    resp = await session.post(
        f"{fake.bedrock}/model/{MODEL}/converse-stream",
        data=converse_body("stream me"),
        headers={"Authorization": "Bearer ABSK-stream", "Content-Type": "application/json", **headers},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/vnd.amazon.eventstream"
    return resp


async def _read_events(resp: aiohttp.ClientResponse, buf: EventStreamBuffer, want: int, timeout: float = 10.0) -> list:
    """Read until ``want`` more complete events are decoded."""
    got: list = []
    async with asyncio.timeout(timeout):
        while len(got) < want:
            data = await resp.content.readany()
            if not data:
                break
            buf.add_data(data)
            got.extend(buf)
    return got


def _event_types(events: list) -> list:
    return [m.headers[":event-type"] for m in events]


async def _poll_stream(fake: Fake, stream_id: str, pred: Callable[[dict], bool], timeout: float = 10.0) -> dict:
    """Poll the stream status endpoint (without blocking the event loop)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(f"{fake.control}/stream/{stream_id}") as r:
                if r.status == 200:
                    status = await r.json()
                    if pred(status):
                        return status
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {stream_id} never satisfied predicate; last {status if r.status == 200 else r.status}")
            await asyncio.sleep(0.02)


async def _release(fake: Fake, stream_id: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{fake.control}/stream/release", json={"stream_id": stream_id}) as r:
            assert r.status == 200


def test_stream_delay_chunks_are_flushed(fake: Fake):
    async def run() -> list:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-chunks": "3", "x-fake-chunk-delay-ms": "300"})
            buf, arrivals = EventStreamBuffer(), []
            while True:
                data = await resp.content.readany()
                if not data:
                    break
                buf.add_data(data)
                for m in buf:
                    arrivals.append((m.headers[":event-type"], time.monotonic()))
            return arrivals

    arrivals = asyncio.run(run())
    deltas = [t for kind, t in arrivals if kind == "contentBlockDelta"]
    assert len(deltas) == 3
    assert deltas[1] - deltas[0] >= 0.25 and deltas[2] - deltas[1] >= 0.25, "each chunk must arrive separately"


def test_lockstep_holds_each_chunk_until_released(fake: Fake):
    sid = "ls-basic"

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-lockstep": sid, "x-fake-chunks": "3"})
            buf = EventStreamBuffer()
            assert _event_types(await _read_events(resp, buf, 2)) == ["messageStart", "contentBlockDelta"]
            st = await _poll_stream(fake, sid, lambda s: s["waiting_for_release"])
            assert st["chunks_sent"] == 1 and not st["finished"]
            await _release(fake, sid)
            second = await _read_events(resp, buf, 1)
            assert b"<chunk 2/3>" in second[0].payload
            await _poll_stream(fake, sid, lambda s: s["waiting_for_release"] and s["chunks_sent"] == 2)
            await _release(fake, sid)
            rest = await _read_events(resp, buf, 4)
            assert _event_types(rest) == ["contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
            await _poll_stream(fake, sid, lambda s: s["finished"] and s["chunks_sent"] == 3)

    asyncio.run(run())


def test_lockstep_release_before_wait_is_not_lost(fake: Fake):
    sid = "ls-prerelease"
    control(fake, "POST", "/stream/release", {"stream_id": sid, "count": 2})

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-lockstep": sid, "x-fake-chunks": "3"})
            events = await _read_events(resp, EventStreamBuffer(), 7)
            assert _event_types(events)[-1] == "metadata"

    asyncio.run(run())
    assert control(fake, "GET", f"/stream/{sid}")["finished"]


def test_client_disconnect_while_held_is_recorded(fake: Fake):
    sid = "ls-disconnect"

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-lockstep": sid, "x-fake-chunks": "3"})
            await _read_events(resp, EventStreamBuffer(), 2)
            await _poll_stream(fake, sid, lambda s: s["waiting_for_release"])
            resp.close()  # drops the connection
        st = await _poll_stream(fake, sid, lambda s: s["client_disconnected"])
        assert st["chunks_sent"] == 1 and not st["finished"]

    asyncio.run(run())


def test_client_disconnect_during_delay_is_recorded(fake: Fake):
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-stream-id": "slow-1", "x-fake-chunks": "5",
                                                      "x-fake-chunk-delay-ms": "5000"})
            await _read_events(resp, EventStreamBuffer(), 2)
            resp.close()
        await _poll_stream(fake, "slow-1", lambda s: s["client_disconnected"] and s["chunks_sent"] == 1)

    asyncio.run(run())


def test_lockstep_gives_up_after_timeout(fake: Fake):
    sid = "ls-timeout"

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-lockstep": sid, "x-fake-chunks": "3",
                                                      "x-fake-lockstep-timeout-ms": "200"})
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        st = await _poll_stream(fake, sid, lambda s: s["gave_up"])
        assert st["chunks_sent"] == 1 and not st["finished"]

    asyncio.run(run())


def test_abort_after_k_chunks(fake: Fake):
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            resp = await _open_stream(session, fake, {"x-fake-stream-id": "abort-1", "x-fake-chunks": "4",
                                                      "x-fake-abort-after": "2"})
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        st = await _poll_stream(fake, "abort-1", lambda s: s["aborted"])
        assert st["chunks_sent"] == 2 and not st["finished"]

    asyncio.run(run())


def test_a_write_waiting_for_a_reader_that_reads_nothing_shows(fake: Fake):
    async def run() -> tuple[dict, dict]:
        async with aiohttp.ClientSession() as session:
            headers = {"x-fake-stream-id": "unread", "x-fake-chunks": "400", "x-fake-chunk-pad": "32768"}
            resp = await _open_stream(session, fake, headers)
            # Nothing read: the fake's writes wait once the buffers fill.
            blocked = await _poll_stream(fake, "unread", lambda s: s["blocked_on_write"], timeout=20)
            await resp.content.read()
            done = await _poll_stream(fake, "unread", lambda s: s["finished"])
            return blocked, done

    blocked, done = asyncio.run(run())
    assert 0 < blocked["chunks_sent"] < 400, blocked
    assert not done["blocked_on_write"] and done["chunks_sent"] == 400, done
