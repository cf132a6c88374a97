"""eventstream.py, checked against botocore's own event-stream decoder."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Callable

import pytest
from botocore.eventstream import EventStreamBuffer

import eventstream
from harness import decode_events


def test_eventstream_decodes_with_botocore():
    messages = [
        eventstream.event("messageStart", b'{"role":"assistant"}'),
        eventstream.event("contentBlockDelta", json.dumps({"delta": {"text": "h\u00e9llo \u2603"}}).encode()),
        eventstream.event("empty", b""),
        eventstream.exception("throttlingException", b'{"message":"slow down"}'),
    ]
    data = b"".join(messages)
    buf = EventStreamBuffer()
    for i in range(0, len(data), 7):  # feed in awkward splits
        buf.add_data(data[i:i + 7])
    decoded = list(buf)
    assert [m.headers for m in decoded] == [
        {":message-type": "event", ":event-type": "messageStart", ":content-type": "application/json"},
        {":message-type": "event", ":event-type": "contentBlockDelta", ":content-type": "application/json"},
        {":message-type": "event", ":event-type": "empty", ":content-type": "application/json"},
        {":message-type": "exception", ":exception-type": "throttlingException", ":content-type": "application/json"},
    ]
    assert decoded[1].payload.decode() == json.dumps({"delta": {"text": "h\u00e9llo \u2603"}})
    assert decoded[2].payload == b""
    assert all(m.prelude.total_length == len(raw) for m, raw in zip(decoded, messages))


def test_eventstream_crc_is_checked():
    raw = bytearray(eventstream.event("x", b"{}"))
    raw[-1] ^= 0xFF
    buf = EventStreamBuffer()
    buf.add_data(bytes(raw))
    with pytest.raises(Exception):
        list(buf)


def test_eventstream_typed_headers_decode_with_botocore():
    signature = hashlib.sha256(b"sig").digest()
    raw = eventstream.encode_message(
        [(":date", eventstream.Timestamp(1_700_000_000_000)), (":chunk-signature", signature)], b"inner"
    )
    (headers, payload), = decode_events(raw)
    assert headers == {":date": 1_700_000_000_000, ":chunk-signature": signature}  # botocore: int64 ms, bytes
    assert payload == b"inner"


def test_eventstream_decoder_matches_botocore():
    messages = [
        eventstream.event("chunk", b'{"bytes":"aGk="}'),
        eventstream.encode_message([(":date", eventstream.Timestamp(5000)), (":chunk-signature", b"\x01" * 32)], b""),
        eventstream.exception("validationException", b'{"message":"no"}'),
    ]
    data = b"".join(messages)
    decoder = eventstream.MessageDecoder()
    ours = []
    for i in range(0, len(data), 5):  # awkward splits: messages complete across feeds
        decoder.feed(data[i:i + 5])
        ours.extend(decoder)
    assert decoder.buffered == 0
    theirs = decode_events(data)
    assert len(ours) == len(theirs) == 3
    assert [m.payload for m in ours] == [p for _, p in theirs]
    assert ours[0].headers == theirs[0][0]
    assert ours[1].headers == {":date": eventstream.Timestamp(5000), ":chunk-signature": b"\x01" * 32}
    assert theirs[1][0] == {":date": 5000, ":chunk-signature": b"\x01" * 32}


@pytest.mark.parametrize("corrupt, error", [
    (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "message CRC mismatch"),
    (lambda raw: raw[:8] + bytes([raw[8] ^ 1]) + raw[9:], "prelude CRC mismatch"),
])
def test_eventstream_decoder_rejects_bad_crcs(corrupt: Callable, error: str):
    decoder = eventstream.MessageDecoder()
    decoder.feed(eventstream.event("ok", b"{}") + corrupt(eventstream.event("bad", b"{}")))
    messages = iter(decoder)
    assert next(messages).headers[":event-type"] == "ok"  # valid messages before the bad one still come out
    with pytest.raises(eventstream.DecodeError, match=error):
        next(messages)


def test_eventstream_decode_message_needs_exactly_one():
    raw = eventstream.event("x", b"{}")
    assert eventstream.decode_message(raw).headers[":event-type"] == "x"
    for bad in (raw[:-3], raw + b"\x00", b""):
        with pytest.raises(eventstream.DecodeError):
            eventstream.decode_message(bad)


def test_event_payload_base64_roundtrip():
    """The invoke-stream chunk framing is exactly {"bytes": base64(json)}."""
    inner = {"type": "content_block_delta", "delta": {"text": "x"}}
    raw = eventstream.event("chunk", json.dumps({"bytes": base64.b64encode(json.dumps(inner).encode()).decode()}).encode())
    (headers, payload), = decode_events(raw)
    assert headers[":event-type"] == "chunk"
    assert json.loads(base64.b64decode(json.loads(payload)["bytes"])) == inner
