"""Encoder and decoder for the AWS event-stream binary format.

This is the framing used by ``application/vnd.amazon.eventstream`` bodies:
Bedrock ``converse-stream`` and ``invoke-with-response-stream`` responses, and
both directions of ``invoke-with-bidirectional-stream`` (whose input frames
wrap a signed inner message, see ``fake_aws/eventstream_signing.py``).

A message is::

    prelude:  total_length u32 BE | headers_length u32 BE | prelude_crc u32 BE
    headers:  repeated (name_len u8 | name | type u8 | value)
    payload:  raw bytes
    trailer:  message_crc u32 BE   (CRC32 of everything before it)

The encoder writes header values of type 7 (string: u16 BE length + UTF-8),
type 6 (byte array: u16 BE length + bytes) and type 8 (timestamp: i64 BE
milliseconds since the epoch), chosen by the Python type of the value
(``str``, ``bytes``, ``Timestamp``).  The decoder reads every header type.
``tests/fakes/test_eventstream.py`` checks both against botocore's own decoder
(``botocore.eventstream.EventStreamBuffer``).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Union

HEADER_TYPE_BYTE_ARRAY = 6
HEADER_TYPE_STRING = 7
HEADER_TYPE_TIMESTAMP = 8
PRELUDE_LENGTH = 12  # total_length + headers_length + prelude_crc
TRAILER_LENGTH = 4  # message_crc
# AWS caps a message at 16 MiB of payload plus 128 KiB of headers; anything
# larger is a corrupt length field, not a message to wait for.
MAX_MESSAGE_LENGTH = PRELUDE_LENGTH + 128 * 1024 + 16 * 1024 * 1024 + TRAILER_LENGTH


@dataclass(frozen=True)
class Timestamp:
    """A header value of type 8: milliseconds since the Unix epoch."""

    millis: int


HeaderValue = Union[str, bytes, Timestamp]
Headers = Union[Mapping[str, HeaderValue], Iterable[tuple[str, HeaderValue]]]


def _crc32(data: bytes, crc: int = 0) -> int:
    """CRC32 (IEEE, as zlib computes it) masked to an unsigned 32-bit int."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def _encode_value(name: str, value: HeaderValue) -> bytes:
    """Type byte + encoded value; the header type follows the Python type."""
    if isinstance(value, Timestamp):
        return struct.pack(">Bq", HEADER_TYPE_TIMESTAMP, value.millis)
    if isinstance(value, str):
        header_type, raw = HEADER_TYPE_STRING, value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        header_type, raw = HEADER_TYPE_BYTE_ARRAY, bytes(value)
    else:
        raise TypeError(f"unsupported header value type for {name!r}: {type(value).__name__}")
    if len(raw) > 0xFFFF:
        raise ValueError(f"header value too long for {name!r}")
    return struct.pack(">BH", header_type, len(raw)) + raw


def encode_headers(headers: Headers) -> bytes:
    """Encode ``headers`` (a mapping or (name, value) pairs)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = bytearray()
    for name, value in items:
        name_bytes = name.encode("utf-8")
        if not 0 < len(name_bytes) < 256:
            raise ValueError(f"header name length out of range: {name!r}")
        out += struct.pack(">B", len(name_bytes)) + name_bytes + _encode_value(name, value)
    return bytes(out)


def encode_message(headers: Headers, payload: bytes) -> bytes:
    """Encode one complete event-stream message."""
    header_bytes = encode_headers(headers)
    total_length = PRELUDE_LENGTH + len(header_bytes) + len(payload) + TRAILER_LENGTH
    lengths = struct.pack(">II", total_length, len(header_bytes))
    prelude = lengths + struct.pack(">I", _crc32(lengths))
    body = prelude + header_bytes + payload
    return body + struct.pack(">I", _crc32(body))


def event(event_type: str, payload: bytes) -> bytes:
    """Encode an ``event`` message with a JSON payload, as Bedrock sends it."""
    return encode_message(
        [
            (":message-type", "event"),
            (":event-type", event_type),
            (":content-type", "application/json"),
        ],
        payload,
    )


def exception(exception_type: str, payload: bytes) -> bytes:
    """Encode a modeled ``exception`` message (e.g. ``throttlingException``)."""
    return encode_message(
        [
            (":message-type", "exception"),
            (":exception-type", exception_type),
            (":content-type", "application/json"),
        ],
        payload,
    )


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


class DecodeError(ValueError):
    """Bytes that are not a valid event-stream message (lengths, CRCs, headers)."""


@dataclass
class Message:
    """One decoded message.

    Header values are ``str`` (type 7), ``bytes`` (6), ``Timestamp`` (8),
    ``bool`` (0/1), ``int`` (2-5) or ``uuid.UUID`` (9).
    """

    headers: dict
    payload: bytes
    total_length: int


# Fixed-size header values: type -> (struct format, converter).
_FIXED_VALUES = {
    2: (">b", int),
    3: (">h", int),
    4: (">i", int),
    5: (">q", int),
    HEADER_TYPE_TIMESTAMP: (">q", Timestamp),
}


def decode_headers(data: bytes) -> dict:
    """Decode an encoded header block; duplicate names are an error."""
    headers: dict[str, Any] = {}
    pos = 0
    try:
        while pos < len(data):
            name_len = data[pos]
            name = data[pos + 1:pos + 1 + name_len].decode("utf-8")
            if name_len == 0 or len(name.encode("utf-8")) != name_len:
                raise DecodeError(f"truncated or empty header name at offset {pos}")
            pos += 1 + name_len
            value, pos = _decode_value(data, pos, name)
            if name in headers:
                raise DecodeError(f"duplicate header {name!r}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed header block: {exc}") from None
    return headers


def _decode_value(data: bytes, pos: int, name: str) -> tuple[Any, int]:
    """Decode the typed value starting at ``pos``; returns (value, next position)."""
    header_type = data[pos]
    pos += 1
    if header_type in (0, 1):
        return header_type == 0, pos
    if header_type in _FIXED_VALUES:
        fmt, convert = _FIXED_VALUES[header_type]
        (raw,) = struct.unpack_from(fmt, data, pos)
        return convert(raw), pos + struct.calcsize(fmt)
    if header_type in (HEADER_TYPE_BYTE_ARRAY, HEADER_TYPE_STRING):
        (length,) = struct.unpack_from(">H", data, pos)
        raw = data[pos + 2:pos + 2 + length]
        if len(raw) != length:
            raise DecodeError(f"header {name!r} value is truncated")
        return (raw.decode("utf-8") if header_type == HEADER_TYPE_STRING else bytes(raw)), pos + 2 + length
    if header_type == 9:
        raw = data[pos:pos + 16]
        if len(raw) != 16:
            raise DecodeError(f"header {name!r} uuid is truncated")
        return uuid.UUID(bytes=bytes(raw)), pos + 16
    raise DecodeError(f"header {name!r} has unknown type {header_type}")


def _check_prelude(prelude: bytes) -> tuple[int, int]:
    """(total_length, headers_length) of a prelude, after checking its CRC and bounds."""
    total_length, headers_length, prelude_crc = struct.unpack(">III", prelude)
    if _crc32(prelude[:8]) != prelude_crc:
        raise DecodeError("prelude CRC mismatch")
    if not PRELUDE_LENGTH + TRAILER_LENGTH <= total_length <= MAX_MESSAGE_LENGTH:
        raise DecodeError(f"message length {total_length} out of range")
    if headers_length > total_length - PRELUDE_LENGTH - TRAILER_LENGTH:
        raise DecodeError(f"headers length {headers_length} exceeds message length {total_length}")
    return total_length, headers_length


def _decode_complete(data: bytes, total_length: int, headers_length: int) -> Message:
    """Decode ``data`` (exactly one message whose prelude was checked)."""
    (message_crc,) = struct.unpack(">I", data[-TRAILER_LENGTH:])
    if _crc32(data[:-TRAILER_LENGTH]) != message_crc:
        raise DecodeError("message CRC mismatch")
    headers_end = PRELUDE_LENGTH + headers_length
    headers = decode_headers(data[PRELUDE_LENGTH:headers_end])
    return Message(headers=headers, payload=bytes(data[headers_end:-TRAILER_LENGTH]), total_length=total_length)


def decode_message(data: bytes) -> Message:
    """Decode ``data``, which must be exactly one message."""
    if len(data) < PRELUDE_LENGTH:
        raise DecodeError(f"{len(data)} bytes is too short for a message")
    total_length, headers_length = _check_prelude(bytes(data[:PRELUDE_LENGTH]))
    if len(data) != total_length:
        raise DecodeError(f"message length field says {total_length} bytes, got {len(data)}")
    return _decode_complete(bytes(data), total_length, headers_length)


class MessageDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, iterate complete messages.

    Iteration stops at the first incomplete message (its bytes stay buffered)
    and raises ``DecodeError`` at the first invalid one, after yielding every
    valid message before it.  A bad prelude is reported as soon as its 12
    bytes are in, rather than waiting for a length that will never arrive.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def __iter__(self) -> Iterator[Message]:
        while len(self._buffer) >= PRELUDE_LENGTH:
            total_length, headers_length = _check_prelude(bytes(self._buffer[:PRELUDE_LENGTH]))
            if len(self._buffer) < total_length:
                return
            raw = bytes(self._buffer[:total_length])
            del self._buffer[:total_length]
            yield _decode_complete(raw, total_length, headers_length)
