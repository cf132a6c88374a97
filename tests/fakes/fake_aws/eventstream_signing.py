"""Event-stream request signing: an independent verifier of chained frame signatures (hashlib/hmac only).

InvokeModelWithBidirectionalStream sends a body of "outer" event-stream
messages, each with a ``:date`` (timestamp) and a ``:chunk-signature``
(32-byte array) header around an encoded "inner" message.  Each signature
is chained to the one before it, starting from the initial request's
SigV4 signature; an outer message with an empty payload ends the stream.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional

import eventstream  # tests/fakes/eventstream.py, next to this package: the tests' clients use it too

from .sigv4 import AMZ_DATE_FORMAT, MAX_CLOCK_SKEW_SECONDS

EVENT_SIGNING_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sigv4_signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """The SigV4 signing key: the HMAC chain over day, region, service and ``aws4_request``."""
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def amz_datetime(millis: int) -> str:
    """``YYYYMMDDTHHMMSSZ`` of an event-stream ``:date`` value (milliseconds)."""
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(millis // 1000))


def event_string_to_sign(date_millis: int, scope: str, prev_signature: str, payload: bytes) -> str:
    """String to sign of one event-stream frame, chained to ``prev_signature``.

    The fifth line hashes the ``:date`` header alone, encoded as on the wire
    (name length, name, type 8, i64 BE milliseconds); the last line hashes
    the frame's payload, i.e. the whole encoded inner message (or nothing,
    for the end frame).
    """
    date_header = eventstream.encode_headers([(":date", eventstream.Timestamp(date_millis))])
    return "\n".join(
        [
            EVENT_SIGNING_ALGORITHM,
            amz_datetime(date_millis),
            scope,
            prev_signature,
            _sha256_hex(date_header),
            _sha256_hex(payload),
        ]
    )


def new_frame_entry(index: int, prev_signature: str) -> dict:
    """The record of one input frame before any check has run."""
    return {
        "index": index,
        "ok": False,
        "check": None,  # "ok" or the failed check: framing, after_end, headers, date, signature, inner
        "error": None,
        "end": None,  # True for the empty end frame
        "date": None,  # the frame's :date as YYYYMMDDTHHMMSSZ
        "signature": None,
        "prev_signature": prev_signature,
        "payload_length": None,
        "text": None,  # the decoded input bytes (first 1 KiB), for data frames
    }


class EventStreamVerifier:
    """Checks the signature chain of one bidirectional stream's input frames.

    Frame n is signed over frame n-1's signature (the initial request's for
    frame 1), so a dropped, reordered, replayed or altered frame fails.  The
    chain only advances over frames that verified.
    """

    def __init__(self, *, secret: str, region: str, service: str, seed_signature: str) -> None:
        self.secret = secret
        self.region = region
        self.service = service
        self.chain = [seed_signature]  # the seed, then each verified frame's signature
        self.frames_received = 0
        self.end_received = False

    def verify(self, message: eventstream.Message, now: float) -> dict:
        """Check one outer frame; returns its record entry (``ok`` False: rejected)."""
        self.frames_received += 1
        entry = new_frame_entry(self.frames_received, self.chain[-1])
        entry.update(end=not message.payload, payload_length=len(message.payload))
        problem = self._first_problem(message, entry, now)
        if problem is not None:
            entry["check"], entry["error"] = problem
            return entry
        entry.update(ok=True, check="ok")
        self.chain.append(entry["signature"])
        self.end_received = entry["end"]
        return entry

    def framing_failure(self, error: str) -> dict:
        """The record entry of a frame that could not even be decoded."""
        entry = new_frame_entry(self.frames_received + 1, self.chain[-1])
        entry.update(check="framing", error=error)
        return entry

    def _first_problem(self, message: eventstream.Message, entry: dict, now: float) -> Optional[tuple]:
        """``(check, reason)`` of the first failed check, else None (fills date/signature)."""
        if self.end_received:
            return "after_end", "frame arrived after the empty end frame"
        names = sorted(message.headers)
        if names != [":chunk-signature", ":date"]:
            return "headers", f"frame headers must be exactly :date and :chunk-signature, got {names}"
        date, signature = message.headers[":date"], message.headers[":chunk-signature"]
        if not isinstance(date, eventstream.Timestamp):
            return "headers", f":date must be a timestamp header (type 8), got {type(date).__name__}"
        if not isinstance(signature, bytes) or len(signature) != 32:
            return "headers", ":chunk-signature must be a 32-byte byte-array header (type 6)"
        entry["signature"] = signature.hex()
        if abs(now - date.millis / 1000.0) > MAX_CLOCK_SKEW_SECONDS:
            return "date", f":date {date.millis} ms is more than 5 min from now ({now * 1000:.0f} ms)"
        # Each frame's scope is built from its own :date (as in aws-sigv4 and
        # the Transcribe streaming docs), so a stream may cross UTC midnight.
        entry["date"] = amz_datetime(date.millis)
        return self._check_signature(date.millis, message.payload, entry["signature"])

    def _signature(self, millis: int, payload: bytes, prev_signature: str) -> str:
        day = amz_datetime(millis)[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        key = sigv4_signing_key(self.secret, day, self.region, self.service)
        string_to_sign = event_string_to_sign(millis, scope, prev_signature, payload)
        return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()

    def _check_signature(self, millis: int, payload: bytes, provided: str) -> Optional[tuple]:
        expected = self._signature(millis, payload, self.chain[-1])
        if hmac.compare_digest(expected, provided):
            return None
        return "signature", f"signature mismatch: {self._mismatch_hint(millis, payload, provided)}"

    def _mismatch_hint(self, millis: int, payload: bytes, provided: str) -> str:
        """Tell a broken chain (intact frame, wrong predecessor) from a bad key or altered frame."""
        for i, prev in enumerate(self.chain[:-1]):
            if hmac.compare_digest(self._signature(millis, payload, prev), provided):
                return (
                    f"chain broken: signed as if it followed {self._link_name(i)}, "
                    f"but it follows {self._link_name(len(self.chain) - 1)}"
                )
        return "wrong key, altered frame, or a previous signature that is not in this stream's chain"

    @staticmethod
    def _link_name(chain_index: int) -> str:
        return "the initial request" if chain_index == 0 else f"frame {chain_index}"
