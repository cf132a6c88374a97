"""Encoder for the AWS event-stream binary format.

This is the framing used by ``application/vnd.amazon.eventstream`` responses
(Bedrock ``converse-stream`` and ``invoke-with-response-stream``).

A message is::

    prelude:  total_length u32 BE | headers_length u32 BE | prelude_crc u32 BE
    headers:  repeated (name_len u8 | name | type u8 | value)
    payload:  raw bytes
    trailer:  message_crc u32 BE   (CRC32 of everything before it)

Only header value type 7 (string: u16 BE length + UTF-8 bytes) is produced,
which is all Bedrock uses.  ``tests/fakes/test_fakes.py`` checks the output
against botocore's own decoder (``botocore.eventstream.EventStreamBuffer``).
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, Mapping, Union

HEADER_TYPE_STRING = 7
PRELUDE_LENGTH = 12  # total_length + headers_length + prelude_crc
TRAILER_LENGTH = 4  # message_crc

Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]


def _crc32(data: bytes, crc: int = 0) -> int:
    """CRC32 (IEEE, as zlib computes it) masked to an unsigned 32-bit int."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def encode_headers(headers: Headers) -> bytes:
    """Encode ``headers`` (a mapping or (name, value) pairs) as string headers."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = bytearray()
    for name, value in items:
        name_bytes = name.encode("utf-8")
        value_bytes = value.encode("utf-8")
        if not 0 < len(name_bytes) < 256:
            raise ValueError(f"header name length out of range: {name!r}")
        if len(value_bytes) > 0xFFFF:
            raise ValueError(f"header value too long for {name!r}")
        out += struct.pack(">B", len(name_bytes)) + name_bytes
        out += struct.pack(">BH", HEADER_TYPE_STRING, len(value_bytes)) + value_bytes
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
