"""The HTTP/2 port (``--h2-port``): InvokeModelWithBidirectionalStream (the frame-signature verifier, and the stream on the wire), and every other operation relayed to the HTTP/1.1 app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import struct
import time
import urllib.parse
from typing import Any, Optional

import h2.errors
import pytest

import eventstream
import fake_aws
from h2client import H2Client
from harness import MODEL, REGION, Fake, assume, bedrock_requests, control, converse_body, send, sign, wait_until


EVENTS_PAYLOAD_HASH = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
EVENTSTREAM = "application/vnd.amazon.eventstream"
BIDI_PATH = f"/model/{urllib.parse.quote(MODEL, safe='')}/invoke-with-bidirectional-stream"


# The published vector from aws-sigv4's event-stream signing tests.
SIGV4_VECTOR_STRING_TO_SIGN = (
    "AWS4-HMAC-SHA256-PAYLOAD\n19731129T213309Z\n19731129/us-east-1/testservice/aws4_request\n"
    "be1f8c7d79ef8e1abc5254a2c70e4da3bfaf4f07328f527444e1fc6ea67273e2\n"
    "0c0e3b3bf66b59b976181bd7d401927bbd624107303c713fd1e5f3d3c8dd1b1e\n"
    "f2eba0f2e95967ee9fbc6db5e678d2fd599229c0d04b11e4fc8e0f2a02a806c6"
)


def frame_string_to_sign(millis: int, scope: str, prev_signature: str, payload: bytes) -> str:
    """The test's own event-frame string to sign (kept apart from fake_aws's verifier)."""
    date_header = struct.pack(">B", 5) + b":date" + struct.pack(">Bq", 8, millis)
    return "\n".join([
        "AWS4-HMAC-SHA256-PAYLOAD",
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(millis // 1000)),
        scope,
        prev_signature,
        hashlib.sha256(date_header).hexdigest(),
        hashlib.sha256(payload).hexdigest(),
    ])


def outer_frame(inner: bytes, millis: int, signature_hex: str) -> bytes:
    """An outer input frame: ``:date`` + ``:chunk-signature`` around the inner message."""
    return eventstream.encode_message(
        [(":date", eventstream.Timestamp(millis)), (":chunk-signature", bytes.fromhex(signature_hex))], inner
    )


class FrameSigner:
    """Signs input frames as an SDK would, chaining each signature to the previous one."""

    def __init__(self, creds: dict, seed_signature: str, region: str = REGION, service: str = "bedrock") -> None:
        self.secret = creds["SecretAccessKey"]
        self.region, self.service = region, service
        self.seed = self.prev = seed_signature

    def signature(self, inner: bytes, millis: int, prev: str) -> str:
        day = time.strftime("%Y%m%d", time.gmtime(millis // 1000))
        key = ("AWS4" + self.secret).encode()
        for part in (day, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        return hmac.new(key, frame_string_to_sign(millis, scope, prev, inner).encode(), hashlib.sha256).hexdigest()

    def sign(self, inner: bytes, *, millis: Optional[int] = None, prev: Optional[str] = None) -> bytes:
        """The next frame (``prev`` overrides the chain); the chain advances to its signature."""
        millis = int(time.time()) * 1000 if millis is None else millis  # seconds precision, as SDKs send
        self.prev = self.signature(inner, millis, self.prev if prev is None else prev)
        return outer_frame(inner, millis, self.prev)


def input_chunk(text: str, event_type: str = "chunk") -> bytes:
    """An inner BidirectionalInputPayloadPart event carrying ``text``."""
    return eventstream.event(event_type, json.dumps({"bytes": base64.b64encode(text.encode()).decode()}).encode())


def bidi_headers(base_url: str, creds: dict, *, test_id: str, sign_headers: Optional[dict] = None,
                 path: str = BIDI_PATH) -> tuple[list, str]:
    """HTTP/2 request headers of a botocore-signed bidi call, and the seed (request) signature."""
    signing = {"Content-Type": EVENTSTREAM, "X-Amz-Content-SHA256": EVENTS_PAYLOAD_HASH, "x-test-id": test_id}
    signing.update(sign_headers or {})
    signing = {k: v for k, v in signing.items() if v is not None}
    url = base_url + path
    signed = sign(url, b"", creds, headers=signing)
    parts = urllib.parse.urlsplit(url)
    pseudo = [(":method", "POST"), (":scheme", parts.scheme), (":authority", parts.netloc), (":path", parts.path)]
    return pseudo + [(k.lower(), v) for k, v in signed.items()], signed["Authorization"].rsplit("Signature=", 1)[1]


def echo_of(message: Any) -> dict:
    assert message is not None, "response ended instead of sending an echo"
    assert message.headers[":message-type"] == "event", (message.headers, message.payload)
    assert message.headers[":event-type"] == "chunk"
    return json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))


def bidi_record(fake: Fake, test_id: str) -> dict:
    (rec,) = bedrock_requests(fake, test_id=test_id)
    return rec


def test_event_string_to_sign_matches_aws_sigv4_vector():
    inner = eventstream.encode_message([("some-header", "value")], b"test payload")
    args = (123456789 * 1000, "19731129/us-east-1/testservice/aws4_request",
            hashlib.sha256(b"last message sts").hexdigest(), inner)
    assert fake_aws.event_string_to_sign(*args) == SIGV4_VECTOR_STRING_TO_SIGN
    assert frame_string_to_sign(*args) == SIGV4_VECTOR_STRING_TO_SIGN  # the test's own signer too


def _verifier(creds: dict) -> Any:
    return fake_aws.EventStreamVerifier(secret=creds["SecretAccessKey"], region=REGION,
                                        service="bedrock", seed_signature="ab" * 32)


def test_event_stream_verifier_unit(static_creds: dict):
    now = time.time()
    millis = int(now) * 1000
    signer = FrameSigner(static_creds, "ab" * 32)
    inner = input_chunk("x")
    verifier = _verifier(static_creds)
    entry = verifier.verify(eventstream.decode_message(signer.sign(inner, millis=millis)), now)
    assert (entry["ok"], entry["check"], entry["prev_signature"]) == (True, "ok", "ab" * 32)
    # Header order does not matter: only their values enter the signature.
    sig = signer.signature(inner, millis, signer.prev)
    reordered = eventstream.encode_message(
        [(":chunk-signature", bytes.fromhex(sig)), (":date", eventstream.Timestamp(millis))], inner)
    assert verifier.verify(eventstream.decode_message(reordered), now)["ok"]
    assert verifier.chain == ["ab" * 32, entry["signature"], sig]

    # The scope comes from the frame's own :date (a stream may cross UTC
    # midnight): a frame dated a minute before midnight verifies just after it.
    midnight = (int(now) // 86400 + 1) * 86400
    late = _verifier(static_creds)
    frame = FrameSigner(static_creds, "ab" * 32).sign(inner, millis=(midnight - 60) * 1000)
    assert late.verify(eventstream.decode_message(frame), midnight + 60)["ok"]

    rejecting = _verifier(static_creds)
    entry = rejecting.verify(eventstream.decode_message(_wrongly_signed(inner, millis)), now)
    assert entry["check"] == "signature", entry
    assert rejecting.chain == ["ab" * 32], "a rejected frame does not advance the chain"

    for headers, error in [
        ([(":date", eventstream.Timestamp(millis))], "exactly :date and :chunk-signature"),
        ([(":date", "now"), (":chunk-signature", b"\x00" * 32)], ":date must be a timestamp header"),
        ([(":date", eventstream.Timestamp(millis)), (":chunk-signature", b"\x00" * 31)], "32-byte byte-array"),
    ]:
        entry = _verifier(static_creds).verify(eventstream.decode_message(eventstream.encode_message(headers, inner)), now)
        assert entry["check"] == "headers" and error in entry["error"]


async def _lockstep_echo(base_url: str, creds: dict, test_id: str, texts: list, ca: Optional[str] = None) -> str:
    """Send each text as a frame, awaiting its echo before the next; then the end frame. Returns the seed."""
    client = await H2Client.connect(base_url, ca)
    try:
        headers, seed = bidi_headers(base_url, creds, test_id=test_id)
        call = await client.start(headers)
        # Headers arrive before any input frame is sent: the response does not wait for the body.
        assert await call.response_status() == 200
        assert call.headers["content-type"] == EVENTSTREAM
        signer = FrameSigner(creds, seed)
        for seq, text in enumerate(texts, start=1):
            await call.send(signer.sign(input_chunk(text)))
            assert echo_of(await call.next_message()) == {"seq": seq, "echo": text}
        await call.send(signer.sign(b""), end_stream=True)
        assert await call.next_message() is None and call.ended
        return seed
    finally:
        await client.close()


def test_bidi_lockstep_echo_verifies_every_frame(fake: Fake, sts_creds: dict):
    texts = ["hello 1", "h\u00e9llo \u2603 2", "hello 3"]
    seed = asyncio.run(_lockstep_echo(fake.bedrock_h2, sts_creds, "bidi-ok", texts))
    rec = bidi_record(fake, "bidi-ok")
    assert (rec["route"], rec["model_id"], rec["http_version"], rec["status"]) == (
        "invoke-with-bidirectional-stream", MODEL, "2", 200)
    assert rec["verified"] and rec["auth"] == f"sigv4:{sts_creds['AccessKeyId']}" and rec["rejection"] is None
    assert "x-amz-content-sha256" in rec["signed_headers"]
    bidi = rec["bidi"]
    assert bidi["seed_signature"] == seed
    assert (bidi["frames_received"], bidi["frames_verified"], bidi["data_frames"], bidi["events_sent"]) == (4, 4, 3, 3)
    assert bidi["end_frame_received"] and bidi["request_body_ended"] and bidi["completed"]
    assert bidi["error"] is None and not bidi["client_disconnected"]
    frames = bidi["frames"]
    assert [(f["index"], f["ok"], f["check"], f["end"]) for f in frames] == [
        (1, True, "ok", False), (2, True, "ok", False), (3, True, "ok", False), (4, True, "ok", True)]
    assert [f["text"] for f in frames] == [*texts, None]
    assert frames[0]["prev_signature"] == seed
    assert all(f["prev_signature"] == p["signature"] for p, f in zip(frames, frames[1:])), "signatures chain"
    assert rec["body_length"] > 0 and len(rec["body_sha256"]) == 64


def test_bidi_over_tls_with_alpn_h2(tls_fake: Fake):
    assert tls_fake.bedrock_h2.startswith("https://127.0.0.1:")
    control(tls_fake, "POST", "/reset", {})
    creds = assume(tls_fake)["Credentials"]
    asyncio.run(_lockstep_echo(tls_fake.bedrock_h2, creds, "bidi-tls", ["over tls"], ca=tls_fake.ca_path))
    assert bidi_record(tls_fake, "bidi-tls")["bidi"]["completed"]


def test_h2_port_refuses_http1(fake: Fake, tls_fake: Fake):
    resp = send(fake.bedrock_h2 + BIDI_PATH, b"", {})
    assert resp.status == 505 and "HTTP/2 only" in json.loads(resp.data)["message"]
    resp = send(tls_fake.bedrock_h2 + BIDI_PATH, b"", {}, ca=tls_fake.ca_path)  # ALPN http/1.1 is accepted, then refused
    assert resp.status == 505


async def _h2_call(fake: Fake, headers: list, body: bytes) -> tuple:
    """``(status, headers, body, reset code)`` of one request on a fresh HTTP/2 connection."""
    client = await H2Client.connect(fake.bedrock_h2)
    try:
        call = await client.start(headers, end_stream=not body)
        if body:
            await call.send(body, end_stream=True)
        status = await call.response_status()
        return status, call.headers, await call.body(), call.reset_code
    finally:
        await client.close()


def h2_signed(fake: Fake, creds: dict, path: str, body: bytes, test_id: str, extra: Optional[dict] = None) -> list:
    """HTTP/2 headers of a request botocore signed for ``path``."""
    url = fake.bedrock_h2 + path
    signed = sign(url, body, creds, headers={"x-test-id": test_id, **(extra or {})})
    parts = urllib.parse.urlsplit(url)
    pseudo = [(":method", "POST"), (":scheme", parts.scheme), (":authority", parts.netloc), (":path", parts.path)]
    return pseudo + [(k.lower(), v) for k, v in signed.items()]


def test_h2_port_relays_other_operations_to_the_http1_app(fake: Fake, sts_creds: dict):
    path = f"/model/{MODEL}/converse"
    body = converse_body("over h2")
    status, headers, answer, _ = asyncio.run(_h2_call(fake, h2_signed(fake, sts_creds, path, body, "h2-relay"), body))
    assert status == 200 and "connection" not in headers and "transfer-encoding" not in headers
    assert json.loads(answer)["output"]["message"]["role"] == "assistant"
    rec = bidi_record(fake, "h2-relay")
    assert (rec["route"], rec["verified"], rec["http_version"]) == ("converse", True, "2")
    assert "x-fake-h2-relay" not in rec["header_names"], "the relay's marker is not the client's header"
    assert rec["peer_port"] != urllib.parse.urlsplit(fake.bedrock).port

    # The signature is still checked, on what the client sent.
    tampered = [(k, v + "0" if k == "x-amz-date" else v) for k, v in h2_signed(fake, sts_creds, path, body, "h2-bad", {})]
    status, headers, _, _ = asyncio.run(_h2_call(fake, tampered, body))
    assert status == 403 and bidi_record(fake, "h2-bad")["verified"] is False

    # A client's own marker is dropped on the way; only the relay's counts.
    forged = h2_signed(fake, sts_creds, path, body, "h2-forged") + [("x-fake-h2-relay", "00:1")]
    asyncio.run(_h2_call(fake, forged, body))
    rec = bidi_record(fake, "h2-forged")
    assert rec["http_version"] == "2" and rec["peer_port"] != 1
    assert "x-fake-h2-relay" not in rec["header_names"]


def test_h2_relay_resets_the_stream_of_an_answer_broken_off(fake: Fake, sts_creds: dict):
    path = f"/model/{MODEL}/converse"
    body = converse_body("break it")
    headers = h2_signed(fake, sts_creds, path, body, "h2-break", {"x-fake-break-body": "1"})
    status, _, answer, reset = asyncio.run(_h2_call(fake, headers, body))
    assert status == 200 and reset == h2.errors.ErrorCodes.INTERNAL_ERROR
    assert 0 < len(answer), "the half that came is passed on before the reset"


async def _initial_request(fake: Fake, headers: list) -> tuple:
    client = await H2Client.connect(fake.bedrock_h2)
    try:
        call = await client.start(headers, end_stream=True)
        return await call.response_status(), call.headers, json.loads(await call.body())
    finally:
        await client.close()


def _replace_header(headers: list, name: str, value: Optional[str]) -> list:
    return [(k, v) for k, v in headers if k != name] + ([(name, value)] if value is not None else [])


def _flip_last_hex(value: str) -> str:
    return value[:-1] + ("0" if value[-1] != "0" else "1")


@pytest.mark.parametrize("name, build, status, error_type, message_part", [
    ("wrong signature",
     lambda h: _replace_header(h, "authorization", _flip_last_hex(dict(h)["authorization"])),
     403, "InvalidSignatureException", "signature mismatch"),
    ("missing content sha256", {"X-Amz-Content-SHA256": None},
     400, "ValidationException", "STREAMING-AWS4-HMAC-SHA256-EVENTS"),
    ("unsigned payload", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
     400, "ValidationException", "got 'UNSIGNED-PAYLOAD'"),
    ("streaming literal sent but not signed",
     lambda h: _replace_header(h, "x-amz-content-sha256", EVENTS_PAYLOAD_HASH),
     403, "InvalidSignatureException", "must be in SignedHeaders"),
    ("wrong content type", {"Content-Type": "application/json"},
     400, "ValidationException", "content-type must be application/vnd.amazon.eventstream"),
    ("bearer token", lambda h: _replace_header(h, "authorization", "Bearer ABSK-bidi"),
     403, "AccessDeniedException", "requires SigV4"),
    ("injected throttling", {"x-fake-status": "429"}, 429, "ThrottlingException", "x-fake-status"),
])
def test_bidi_initial_request_rejections(fake: Fake, sts_creds: dict, name: str, build: Any, status: int,
                                         error_type: str, message_part: str):
    test_id = "bidi-reject-" + name.replace(" ", "-")
    if isinstance(build, dict):  # headers changed before botocore signs
        headers, _ = bidi_headers(fake.bedrock_h2, sts_creds, test_id=test_id, sign_headers=build)
    else:  # headers changed after signing
        unsigned = {"X-Amz-Content-SHA256": None} if "not signed" in name else {}
        headers, _ = bidi_headers(fake.bedrock_h2, sts_creds, test_id=test_id, sign_headers=unsigned)
        headers = build(headers)
    got_status, resp_headers, body = asyncio.run(_initial_request(fake, headers))
    assert (got_status, resp_headers["x-amzn-errortype"]) == (status, error_type), body
    assert message_part in body["message"]
    rec = bidi_record(fake, test_id)
    assert rec["status"] == status and rec["bidi"] is None
    # Content type and x-fake-status are checked after a good signature; the rest fail authentication.
    assert rec["verified"] == (name in ("wrong content type", "injected throttling"))


def test_bidi_rejects_unknown_and_expired_credentials(fake: Fake, sts_creds: dict):
    unknown = {**sts_creds, "AccessKeyId": "ASIAUNKNOWNKEY000000"}
    headers, _ = bidi_headers(fake.bedrock_h2, unknown, test_id="bidi-unknown")
    status, resp_headers, _ = asyncio.run(_initial_request(fake, headers))
    assert (status, resp_headers["x-amzn-errortype"]) == (403, "UnrecognizedClientException")
    control(fake, "POST", "/credentials/expire", {"access_key_id": sts_creds["AccessKeyId"]})
    headers, _ = bidi_headers(fake.bedrock_h2, sts_creds, test_id="bidi-expired")
    status, resp_headers, _ = asyncio.run(_initial_request(fake, headers))
    assert (status, resp_headers["x-amzn-errortype"]) == (403, "ExpiredTokenException")


def _wrongly_signed(inner: bytes, millis: int) -> bytes:
    """A well-formed frame whose signature is 32 bytes but wrong."""
    return eventstream.encode_message([(":date", eventstream.Timestamp(millis)), (":chunk-signature", b"\x01" * 32)], inner)


def _tampered_signature(signer: FrameSigner, inner: bytes) -> bytes:
    millis = int(time.time()) * 1000
    return outer_frame(inner, millis, _flip_last_hex(signer.signature(inner, millis, signer.prev)))


def _swapped_payload(signer: FrameSigner, signed: bytes, sent: bytes) -> bytes:
    """A well-formed frame (valid CRCs) whose signature covers a different inner message."""
    millis = int(time.time()) * 1000
    return outer_frame(sent, millis, signer.signature(signed, millis, signer.prev))


def _corrupt_crc(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


# Each case: the frames after a good frame 1, as functions of the signer; the
# last one is rejected with (check, message part).
FRAME_REJECTIONS = {
    "tampered signature": ([lambda s: _tampered_signature(s, input_chunk("two"))],
                           "signature", "frame 2: signature mismatch: wrong key, altered frame"),
    "chain broken (signed over the seed)": ([lambda s: s.sign(input_chunk("two"), prev=s.seed)],
                                            "signature", "frame 2: signature mismatch: chain broken: signed as if "
                                            "it followed the initial request, but it follows frame 1"),
    "replayed frame 1": ([lambda s: s.sign(input_chunk("one"), prev=s.seed)],
                         "signature", "chain broken"),
    "payload swapped after signing": ([lambda s: _swapped_payload(s, input_chunk("two"), input_chunk("2wo"))],
                                      "signature", "frame 2: signature mismatch: wrong key, altered frame"),
    "bad message CRC": ([lambda s: _corrupt_crc(s.sign(input_chunk("two")))], "framing", "message CRC mismatch"),
    "stale :date": ([lambda s: s.sign(input_chunk("two"), millis=(int(time.time()) - 600) * 1000)],
                    "date", "more than 5 min from now"),
    "inner event type": ([lambda s: s.sign(input_chunk("two", event_type="audio"))],
                         "inner", "frame 2: inner message: inner message must be :message-type event, :event-type chunk"),
    "frame after the end frame": ([lambda s: s.sign(b""), lambda s: s.sign(input_chunk("three"))],
                                  "after_end", "frame 3: frame arrived after the empty end frame"),
}


@pytest.mark.parametrize("name", list(FRAME_REJECTIONS))
def test_bidi_bad_frame_gets_exception_event(fake: Fake, sts_creds: dict, name: str):
    builders, check, message_part = FRAME_REJECTIONS[name]
    test_id = "bidi-frame-" + name.split(" ")[0]

    async def run() -> tuple:
        client = await H2Client.connect(fake.bedrock_h2)
        try:
            headers, seed = bidi_headers(fake.bedrock_h2, sts_creds, test_id=test_id)
            call = await client.start(headers)
            signer = FrameSigner(sts_creds, seed)
            await call.send(signer.sign(input_chunk("one")))
            assert echo_of(await call.next_message()) == {"seq": 1, "echo": "one"}
            for build in builders:
                await call.send(build(signer))
            return await call.next_message(), await call.next_message()
        finally:
            await client.close()

    exception, after = asyncio.run(run())
    assert exception.headers[":message-type"] == "exception"
    assert exception.headers[":exception-type"] == "validationException"
    assert message_part in json.loads(exception.payload)["message"]
    assert after is None, "the response ends after the exception"
    bidi = bidi_record(fake, test_id)["bidi"]
    bad = bidi["frames"][-1]
    assert (bad["ok"], bad["check"]) == (False, check) and message_part.split(": ", 1)[-1] in bad["error"]
    assert bidi["frames"][0]["check"] == "ok" and bidi["frames_verified"] == len(bidi["frames"]) - 1
    assert not bidi["completed"] and bidi["exception_type"] == "validationException"
    assert bidi["error"] == json.loads(exception.payload)["message"]


@pytest.mark.parametrize("tail, message_part", [
    (b"", "request body ended after frame 1 without the empty end frame"),
    (b"\x00\x00\x00", "frame 2: request body ended inside a frame (3 byte(s) left over)"),
])
def test_bidi_body_must_end_with_the_end_frame(fake: Fake, sts_creds: dict, tail: bytes, message_part: str):
    async def run() -> Any:
        client = await H2Client.connect(fake.bedrock_h2)
        try:
            headers, seed = bidi_headers(fake.bedrock_h2, sts_creds, test_id="bidi-no-end")
            call = await client.start(headers)
            await call.send(FrameSigner(sts_creds, seed).sign(input_chunk("only")))
            echo_of(await call.next_message())
            await call.send(tail, end_stream=True)
            return await call.next_message()
        finally:
            await client.close()

    exception = asyncio.run(run())
    assert exception.headers[":exception-type"] == "validationException"
    assert message_part in json.loads(exception.payload)["message"]
    bidi = bidi_record(fake, "bidi-no-end")["bidi"]
    assert bidi["request_body_ended"] and not bidi["end_frame_received"] and not bidi["completed"]


def test_bidi_late_frames_after_exception_keep_the_connection_usable(fake: Fake, sts_creds: dict):
    """The client may still be sending when the fake has ended the response: that is fine in HTTP/2."""
    async def run() -> None:
        client = await H2Client.connect(fake.bedrock_h2)
        try:
            headers, seed = bidi_headers(fake.bedrock_h2, sts_creds, test_id="bidi-late")
            call = await client.start(headers)
            signer = FrameSigner(sts_creds, seed)
            await call.send(signer.sign(input_chunk("one"), prev="00" * 32))
            assert (await call.next_message()).headers[":message-type"] == "exception"
            assert await call.next_message() is None
            for text in ("late 1", "late 2"):  # still ours to send: only the response has ended
                await call.send(signer.sign(input_chunk(text)))
            await call.send(signer.sign(b""), end_stream=True)
            # A second stream on the same connection still works.
            headers, seed = bidi_headers(fake.bedrock_h2, sts_creds, test_id="bidi-late-2")
            call = await client.start(headers)
            signer = FrameSigner(sts_creds, seed)
            await call.send(signer.sign(input_chunk("again")))
            assert echo_of(await call.next_message()) == {"seq": 1, "echo": "again"}
            await call.send(signer.sign(b""), end_stream=True)
            assert await call.next_message() is None
        finally:
            await client.close()

    asyncio.run(run())
    first, second = bidi_record(fake, "bidi-late"), bidi_record(fake, "bidi-late-2")
    assert first["bidi"]["frames_received"] == 1 and first["bidi"]["error"].startswith("frame 1: signature mismatch")
    assert second["bidi"]["completed"] and first["peer_port"] == second["peer_port"]


def test_bidi_large_frames_respect_flow_control(fake: Fake, sts_creds: dict):
    """Frames and echoes far larger than the 64 KiB initial windows, in both directions."""
    texts = ["a" * 200_000, "\u2603" * 50_000]
    asyncio.run(_lockstep_echo(fake.bedrock_h2, sts_creds, "bidi-large", texts))
    bidi = bidi_record(fake, "bidi-large")["bidi"]
    assert bidi["completed"] and bidi["frames_verified"] == 3
    assert [len(f["text"]) for f in bidi["frames"][:2]] == [1024, 1024]  # the record keeps 1 KiB of each


def test_bidi_client_reset_is_recorded(fake: Fake, sts_creds: dict):
    async def run() -> None:
        client = await H2Client.connect(fake.bedrock_h2)
        try:
            headers, seed = bidi_headers(fake.bedrock_h2, sts_creds, test_id="bidi-reset")
            call = await client.start(headers)
            await call.send(FrameSigner(sts_creds, seed).sign(input_chunk("bye")))
            echo_of(await call.next_message())
            client.conn.reset_stream(call.stream_id)
            await client.flush()
        finally:
            await client.close()

    asyncio.run(run())
    bidi = wait_until(lambda: (b := bidi_record(fake, "bidi-reset")["bidi"])["client_disconnected"] and b,
                      what="reset recorded")
    assert bidi["frames_verified"] == 1 and not bidi["completed"] and bidi["error"] is None
