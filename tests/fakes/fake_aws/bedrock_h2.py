"""InvokeModelWithBidirectionalStream on the HTTP/2 listener (``--h2-port``), which relays the rest (``h2relay.py``).

Full duplex: the response headers go out before any input is read, each
input frame's chained signature is verified as it arrives
(``eventstream_signing.py``), and each data frame is answered at once with an
echo event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from typing import Optional
from urllib.parse import unquote

import eventstream  # tests/fakes/eventstream.py, next to this package: the tests' clients use it too

from .bedrock_auth import record_sigv4_check, region_refusal, sigv4_rejection
from .bedrock_errors import forced_status_error
from .bedrock_records import log_bedrock_record, store_bedrock_record
from .common import BadFakeHeader, header_int, json_bytes, new_request_id, parse_json_body
from .eventstream_signing import EventStreamVerifier
from .h2server import H2Stream, StreamGone
from .sigv4 import parse_sigv4_authorization, verify_sigv4
from .state import FakeState
from .stream_plans import invoke_chunk

log = logging.getLogger(__name__)

EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
BIDI_ROUTE = "invoke-with-bidirectional-stream"
BIDI_ROUTE_RE = re.compile(r"^/model/(?P<model>[^/]+)/invoke-with-bidirectional-stream$")

# A stalled client gets an exception event instead of holding the stream forever.
BIDI_IDLE_TIMEOUT_SECONDS = 30.0
# Recorded per frame: enough of the echoed text to assert on, bounded.
BIDI_TEXT_RECORD_LIMIT = 1024


def bidi_input_text(payload: bytes) -> str:
    """Text carried by one inner ``chunk`` event (a BidirectionalInputPayloadPart).

    Raises ValueError (``eventstream.DecodeError`` included) naming the problem.
    """
    inner = eventstream.decode_message(payload)
    kind = (inner.headers.get(":message-type"), inner.headers.get(":event-type"))
    if kind != ("event", "chunk"):
        raise ValueError(f"inner message must be :message-type event, :event-type chunk; got {kind}")
    body = parse_json_body(inner.payload)
    if body is None or not isinstance(body.get("bytes"), str):
        raise ValueError('inner payload must be JSON {"bytes": "<base64>"}')
    try:
        raw = base64.b64decode(body["bytes"], validate=True)
    except ValueError:
        raise ValueError('inner payload "bytes" is not valid base64') from None
    return raw.decode("utf-8", "replace")


class FrameRejected(Exception):
    """The bidirectional stream must stop; the message names the frame and why."""


def new_bidi_record(seed_signature: str) -> dict:
    """The ``bidi`` part of a Bedrock request record (updated as frames arrive)."""
    return {
        "seed_signature": seed_signature,
        "frames_received": 0,
        "frames_verified": 0,  # frames that passed every check (data frames and the end frame)
        "data_frames": 0,
        "events_sent": 0,
        "end_frame_received": False,
        "request_body_ended": False,
        "completed": False,
        "client_disconnected": False,
        "exception_type": None,
        "error": None,
        "frames": [],
        # ``x-fake-end-answers-after: N``: the response ends after N answers
        # while the input is still read (and verified) to its end.
        "answers_left": None,
        "response_ended": False,
        # ``x-fake-silent-answers``: input is read and verified, nothing is
        # answered (a model that has gone quiet).
        "silent": False,
    }


async def handle_h2_request(state: FakeState, stream: H2Stream) -> None:
    """Every request on the HTTP/2 listener: route, authenticate, then stream.

    Routing comes first here (unlike the HTTP/1.1 listener): other operations
    go to the HTTP/1.1 app (``h2relay``), whose record says HTTP/2.
    """
    if not (BIDI_ROUTE_RE.match(stream.raw_path.partition("?")[0]) and stream.method == "POST"):
        if state.h2_relay is not None:
            await state.h2_relay.forward(stream)
            return
    record = store_bedrock_record(
        state, method=stream.method, raw_path=stream.raw_path, headers=stream.headers,
        body=b"", peer_port=stream.peer_port, http_version="2",
    )
    match = BIDI_ROUTE_RE.match(record["raw_path"])
    if match is None or stream.method != "POST":
        message = "UnknownOperationException (fake: the HTTP/2 listener serves only POST /model/{id}/invoke-with-bidirectional-stream)"
        await h2_json_error(stream, record, 404, "UnknownOperationException", message)
        return
    record.update(route=BIDI_ROUTE, model_id=unquote(match.group("model")))
    check, error = authenticate_bidi(state, stream, record)
    if error is None:
        try:
            error = bidi_request_problem(stream)
        except BadFakeHeader as exc:
            error = (400, "ValidationException", f"fake: {exc}")
    if error is not None:
        await h2_json_error(stream, record, *error)
        return
    assert check is not None and check.credential is not None
    authz = parse_sigv4_authorization(stream.headers["Authorization"])
    verifier = EventStreamVerifier(
        secret=check.credential.secret_access_key,
        region=state.region,
        service=state.bedrock.signing_name,
        seed_signature=authz["Signature"],
    )
    record["bidi"] = new_bidi_record(authz["Signature"])
    record["bidi"]["answers_left"] = header_int(stream, "x-fake-end-answers-after", None)
    record["bidi"]["silent"] = bool(stream.headers.get("x-fake-silent-answers"))
    first: Optional[bytes] = None
    if stream.headers.get("x-fake-headers-after-input"):
        # Hold the response headers until input arrives, so a client can see
        # what a proxy answers when the stream breaks before Bedrock answered.
        try:
            first = await stream.receive(BIDI_IDLE_TIMEOUT_SECONDS)
        except (StreamGone, asyncio.TimeoutError):
            record["bidi"]["client_disconnected"] = True
            return
    # Otherwise response headers go out before any input frame is read: full duplex.
    await stream.send_headers(200, [("content-type", EVENTSTREAM_CONTENT_TYPE), ("x-amzn-requestid", new_request_id())])
    finish_h2_record(record, 200, None)
    await run_bidi_session(stream, record, verifier, first)


def authenticate_bidi(state: FakeState, stream: H2Stream, record: dict) -> tuple:
    """``(check, None)`` when the initial request's SigV4 verifies, else ``(None, (status, type, message))``."""
    authz = stream.headers.get("Authorization", "")
    scheme_word = authz.split(" ", 1)[0].lower() if authz else ""
    if scheme_word == "bearer":
        token = authz[len("bearer"):].strip()
        record.update(auth_kind="bearer", auth=f"bearer:{token}", bearer_token=token)
        record["rejection"] = "bidirectional streams need SigV4: their frames are signed"
        return None, (403, "AccessDeniedException", "fake: invoke-with-bidirectional-stream requires SigV4 (its frames are signed)")
    if scheme_word != "aws4-hmac-sha256":
        record["rejection"] = "no supported Authorization header"
        return None, (403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    check = verify_sigv4(
        state,
        method=stream.method,
        scheme=stream.scheme,
        raw_path=stream.raw_path,
        headers=stream.headers,
        body=b"",
        service=state.bedrock.signing_name,
        event_stream=True,
    )
    record_sigv4_check(record, check)
    if check.ok:
        refusal = region_refusal(state, record)
        return (None, (403, *refusal)) if refusal else (check, None)
    if check.kind == "payload_hash":
        return None, (400, "ValidationException", check.message)
    return None, (403, *sigv4_rejection(check))


def bidi_request_problem(stream: H2Stream) -> Optional[tuple]:
    """``(status, type, message)`` for an authenticated request the fake will not stream."""
    content_type = stream.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != EVENTSTREAM_CONTENT_TYPE:
        return 400, "ValidationException", f"content-type must be {EVENTSTREAM_CONTENT_TYPE}, got {content_type!r}"
    forced = header_int(stream, "x-fake-status", None)  # header_int only needs .headers
    if forced is not None and forced >= 400:
        return forced_status_error(forced)
    return None


async def run_bidi_session(stream: H2Stream, record: dict, verifier: EventStreamVerifier,
                           first: Optional[bytes] = None) -> None:
    """Verify each input frame as it arrives and answer each data frame at once.

    ``first`` is input already received (``x-fake-headers-after-input``)."""
    bidi = record["bidi"]
    decoder = eventstream.MessageDecoder()
    body_hash = hashlib.sha256()
    try:
        while True:
            if first is not None:
                chunk, first = first, None
            else:
                chunk = await stream.receive(BIDI_IDLE_TIMEOUT_SECONDS)
            if chunk is None:
                break
            body_hash.update(chunk)
            record["body_length"] += len(chunk)
            decoder.feed(chunk)
            await answer_frames(stream, bidi, verifier, decoder)
        bidi["request_body_ended"] = True
        check_stream_end(bidi, verifier, decoder)
        bidi["completed"] = True
        if not bidi["response_ended"]:
            await stream.send_data(b"", end_stream=True)
    except FrameRejected as exc:
        await send_bidi_exception(stream, bidi, str(exc))
    except asyncio.TimeoutError:
        idle = f"no input for {BIDI_IDLE_TIMEOUT_SECONDS:g} s after frame {verifier.frames_received}"
        await send_bidi_exception(stream, bidi, idle)
    except StreamGone:
        bidi["client_disconnected"] = True
    finally:
        record["body_sha256"] = body_hash.hexdigest()
        log.info(
            "bidi stream (record %d): %d/%d frame(s) verified, end frame %s, %s",
            record["seq"], bidi["frames_verified"], bidi["frames_received"],
            "received" if bidi["end_frame_received"] else "missing",
            "completed" if bidi["completed"] else f"error: {bidi['error'] or 'client disconnected'}",
        )


async def answer_frames(stream: H2Stream, bidi: dict, verifier: EventStreamVerifier, decoder: eventstream.MessageDecoder) -> None:
    """Verify every complete frame buffered so far; echo each data frame before reading on."""
    try:
        for message in decoder:
            entry, text = check_frame(verifier, message)
            bidi["frames"].append(entry)
            bidi["frames_received"] = verifier.frames_received
            if not entry["ok"]:
                raise FrameRejected(f"frame {entry['index']}: {entry['error']}")
            bidi["frames_verified"] += 1
            if entry["end"]:
                bidi["end_frame_received"] = True
                continue
            bidi["data_frames"] += 1
            if bidi["response_ended"] or bidi["silent"]:
                continue
            await stream.send_data(invoke_chunk({"seq": bidi["data_frames"], "echo": text}))
            bidi["events_sent"] += 1
            if bidi["answers_left"] is not None:
                bidi["answers_left"] -= 1
                if bidi["answers_left"] <= 0:
                    # Ended without a reset: the input may still come.
                    await stream.send_data(b"", end_stream=True)
                    bidi["response_ended"] = True
    except eventstream.DecodeError as exc:
        reject_framing(bidi, verifier, str(exc))


def check_frame(verifier: EventStreamVerifier, message: eventstream.Message) -> tuple:
    """``(record entry, input text or None)``: the signature chain, then a data frame's inner message."""
    entry = verifier.verify(message, time.time())
    if not entry["ok"] or entry["end"]:
        return entry, None
    try:
        text = bidi_input_text(message.payload)
    except ValueError as exc:
        entry.update(ok=False, check="inner", error=f"inner message: {exc}")
        return entry, None
    entry["text"] = text[:BIDI_TEXT_RECORD_LIMIT]
    return entry, text


def reject_framing(bidi: dict, verifier: EventStreamVerifier, error: str) -> None:
    """Record a frame that could not be decoded, then stop the stream."""
    entry = verifier.framing_failure(error)
    bidi["frames"].append(entry)
    bidi["frames_received"] = entry["index"]  # an undecodable frame was still received
    raise FrameRejected(f"frame {entry['index']}: {error}")


def check_stream_end(bidi: dict, verifier: EventStreamVerifier, decoder: eventstream.MessageDecoder) -> None:
    """The request body has ended: it must end on a frame boundary, after the end frame."""
    if decoder.buffered:
        reject_framing(bidi, verifier, f"request body ended inside a frame ({decoder.buffered} byte(s) left over)")
    if not verifier.end_received:
        raise FrameRejected(f"request body ended after frame {verifier.frames_received} without the empty end frame")


async def send_bidi_exception(stream: H2Stream, bidi: dict, message: str) -> None:
    """Send a modeled ``validationException`` event and end the response."""
    bidi.update(error=message, exception_type="validationException")
    # The SDKs match :exception-type against the output union's member
    # names, which are lowerCamelCase (validationException, not ValidationException).
    event = eventstream.exception("validationException", json_bytes({"message": message}))
    try:
        await stream.send_data(event, end_stream=True)
    except StreamGone:
        bidi["client_disconnected"] = True


async def h2_json_error(stream: H2Stream, record: dict, status: int, error_type: str, message: str) -> None:
    """An AWS REST-JSON error response on the HTTP/2 listener."""
    body = json.dumps({"message": message}).encode()
    headers = [
        ("content-type", "application/json"),
        ("x-amzn-errortype", error_type),
        ("x-amzn-requestid", new_request_id()),
        ("content-length", str(len(body))),
    ]
    finish_h2_record(record, status, error_type)
    await stream.send_headers(status, headers)
    await stream.send_data(body, end_stream=True)


def finish_h2_record(record: dict, status: int, error_type: Optional[str]) -> None:
    record["status"], record["error_type"] = status, error_type
    log_bedrock_record(record)
