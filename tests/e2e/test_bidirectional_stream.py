"""InvokeModelWithBidirectionalStream through the sidecar.

The fake Bedrock listens for HTTP/2 over TLS (as the real endpoint does) and
checks the opening request's SigV4 with botocore and every event-stream
frame's chained signature with its own Python code, so the sidecar's
re-signing is verified by implementations that share nothing with it.

Both directions are driven in lockstep: message n+1 is only sent once the
answer to message n has arrived, so anything buffered on the way would hang
the exchange instead of passing slowly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import urllib.parse

import pytest
import requests

from conftest import REGION, ROOT, wait_for

sys.path.insert(0, str(ROOT / "tests" / "fakes"))
import eventstream  # noqa: E402  (the fakes' encoder; botocore only decodes)
from h2client import H2Client  # noqa: E402

JS_DIR = ROOT / "tests" / "e2e" / "js"
MODEL = "amazon.nova-sonic-v1:0"
OPERATION = "invoke_bidirectional_stream"


@pytest.fixture
def bidi_env(h2_env) -> dict[str, str]:
    return h2_env


def bidi_records(fake) -> list[dict]:
    return [r for r in fake.requests() if r["bidi"] is not None]


def chunk(text: str) -> bytes:
    """A bare BidirectionalInputPayloadPart event, as a client without AWS code sends it."""
    payload = json.dumps({"bytes": base64.b64encode(json.dumps({"text": text}).encode()).decode()}).encode()
    return eventstream.encode_message(
        [(":message-type", "event"), (":event-type", "chunk"), (":content-type", "application/json")], payload
    )


def answer(message) -> dict:
    assert message is not None, "the response ended instead of answering"
    assert message.headers[":message-type"] == "event", (message.headers, message.payload)
    return json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))


def bidi_headers(proxy: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    authority = urllib.parse.urlsplit(proxy).netloc
    path = f"/model/{urllib.parse.quote(MODEL, safe='')}/invoke-with-bidirectional-stream"
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
        ("content-type", "application/vnd.amazon.eventstream"),
        *extra,
    ]


def corrupt(message: bytes) -> bytes:
    bad = bytearray(message)
    bad[-1] ^= 0xFF  # breaks the message CRC
    return bytes(bad)


def run_js_sdk(proxy: str, *texts: str) -> dict:
    node = shutil.which("node")
    assert node, "node is required (make js installs the SDK; .ci/run installs node)"
    assert (JS_DIR / "node_modules" / "@aws-sdk" / "client-bedrock-runtime").is_dir(), "run `make js` first"
    done = subprocess.run(
        [node, str(JS_DIR / "bidi_client.mjs"), proxy, MODEL, *texts],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=JS_DIR,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from the JS client (exit {done.returncode}):\n{done.stderr}"
    return json.loads(lines[-1])


def test_aws_sdk_for_javascript_streams_both_ways_through_the_sidecar(start_sidecar, bidi_env, fake_aws_h2):
    sidecar = start_sidecar(bidi_env)
    texts = ["hello", "how are you?", "bye"]
    result = run_js_sdk(sidecar.proxy, *texts)
    assert "error" not in result, result
    assert [r["seq"] for r in result["received"]] == [1, 2, 3]
    assert [json.loads(r["echo"])["text"] for r in result["received"]] == texts

    (record,) = bidi_records(fake_aws_h2)
    assert record["verified"], record
    assert record["http_version"] == "2"
    bidi = record["bidi"]
    assert bidi["data_frames"] == 3 and bidi["frames_verified"] == 4, bidi  # 3 messages + the end
    assert bidi["end_frame_received"] and bidi["completed"] and bidi["error"] is None, bidi
    # The SDK signed with "unused" credentials; what reached Bedrock was
    # signed with the role's, from the fake STS.
    assert record["access_key_id"] != "unused"
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": OPERATION, "code": "200", "auth": "sigv4"}) == 1


async def lockstep_bare(proxy: str, texts: list[str]) -> list[dict]:
    """Bare messages over h2c prior knowledge, each answer awaited before the next message."""
    client = await H2Client.connect(proxy)
    try:
        call = await client.start(bidi_headers(proxy))
        answers = []
        for text in texts:
            await call.send(chunk(text))
            if not answers:
                assert await call.response_status() == 200, await call.body()
            answers.append(answer(await call.next_message()))
        await call.send(b"", end_stream=True)
        assert await call.next_message() is None, "nothing after the last answer"
        return answers
    finally:
        await client.close()


def test_a_client_without_aws_code_sends_bare_messages_over_h2c(start_sidecar, bidi_env, fake_aws_h2):
    sidecar = start_sidecar(bidi_env)
    texts = ["one", "two", "three", "four"]
    answers = asyncio.run(lockstep_bare(sidecar.proxy, texts))
    assert [a["seq"] for a in answers] == [1, 2, 3, 4]
    assert [json.loads(a["echo"])["text"] for a in answers] == texts

    (record,) = bidi_records(fake_aws_h2)
    bidi = record["bidi"]
    assert record["verified"] and record["auth_kind"] == "sigv4", record
    assert bidi["data_frames"] == 4 and bidi["frames_verified"] == 5, bidi
    # The sidecar added the end-of-stream message the client never sent.
    assert bidi["end_frame_received"] and bidi["completed"], bidi
    # Every frame's chain link is the previous frame's signature, starting
    # from the opening request's.
    frames = bidi["frames"]
    assert frames[0]["prev_signature"] == bidi["seed_signature"]
    assert all(b["prev_signature"] == a["signature"] for a, b in zip(frames, frames[1:]))
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": OPERATION, "code": "200", "auth": "sigv4"}) == 1


async def send_garbage(proxy: str) -> tuple[int, dict, object]:
    client = await H2Client.connect(proxy)
    try:
        call = await client.start(bidi_headers(proxy))
        await call.send(chunk("fine"))
        status = await call.response_status()
        first = answer(await call.next_message())
        await call.send(corrupt(chunk("broken")))
        await call.body()  # until the stream ends, one way or the other
        return status, first, call.reset_code
    finally:
        await client.close()


def test_a_corrupt_client_message_aborts_the_stream_and_is_logged(start_sidecar, bidi_env, fake_aws_h2):
    sidecar = start_sidecar(bidi_env)
    status, first, reset_code = asyncio.run(send_garbage(sidecar.proxy))
    assert status == 200 and first["seq"] == 1
    # The client is told its stream failed (reset), not given a clean end.
    assert reset_code is not None, "the response ended cleanly after a corrupt message"
    # Nothing unsigned or half-signed reached Bedrock: the upstream request
    # was cut off after the one good message, without an end frame.
    def ended() -> dict | None:
        (record,) = bidi_records(fake_aws_h2)
        bidi = record["bidi"]
        return bidi if bidi["client_disconnected"] or bidi["request_body_ended"] or bidi["error"] else None

    bidi = wait_for(ended, timeout=10, what="the upstream stream to end")
    assert bidi["data_frames"] == 1 and not bidi["end_frame_received"], bidi
    assert all(f["ok"] for f in bidi["frames"]), bidi["frames"]
    wait_for(lambda: "bidirectional stream aborted" in sidecar.log_text(), timeout=10, what="the abort to be logged")
    assert "malformed" in sidecar.log_text()


async def lockstep_http1(proxy: str, texts: list[str]) -> tuple[str, list[dict]]:
    """The same exchange over HTTP/1.1 with a chunked request body: the
    answers arrive while the request is still open."""
    from botocore.eventstream import EventStreamBuffer

    netloc = urllib.parse.urlsplit(proxy)
    reader, writer = await asyncio.open_connection(netloc.hostname, netloc.port)
    path = f"/model/{urllib.parse.quote(MODEL, safe='')}/invoke-with-bidirectional-stream"
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {netloc.netloc}\r\n"
        "Content-Type: application/vnd.amazon.eventstream\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    decoder = EventStreamBuffer()
    status_line, answers = "", []
    try:
        for sent, text in enumerate(texts, start=1):
            message = chunk(text)
            writer.write(b"%x\r\n%s\r\n" % (len(message), message))
            await writer.drain()
            if not status_line:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status_line = head.decode().splitlines()[0]
                assert "transfer-encoding: chunked" in head.decode().lower(), head
            while len(answers) < sent:
                size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 10), 16)
                decoder.add_data((await asyncio.wait_for(reader.readexactly(size + 2), 10))[:-2])
                answers.extend(answer(m) for m in decoder)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 10) == b"0\r\n", "the response ends after the request"
        return status_line, answers
    finally:
        writer.close()


def test_http1_clients_stream_both_ways_with_a_chunked_body(start_sidecar, bidi_env, fake_aws_h2):
    sidecar = start_sidecar(bidi_env)
    status_line, answers = asyncio.run(lockstep_http1(sidecar.proxy, ["x", "y"]))
    assert status_line == "HTTP/1.1 200 OK"
    assert [json.loads(a["echo"])["text"] for a in answers] == ["x", "y"]
    (record,) = bidi_records(fake_aws_h2)
    assert record["http_version"] == "2", "upstream is HTTP/2 whatever the client speaks"
    assert record["bidi"]["frames_verified"] == 3 and record["bidi"]["completed"], record["bidi"]


async def one_message_stream(proxy: str) -> tuple[int, dict, bytes]:
    """A stream of one bare message, for answers that refuse it: the
    status, the headers and the body."""
    client = await H2Client.connect(proxy)
    try:
        call = await client.start(bidi_headers(proxy))
        await call.send(chunk("hi"), end_stream=True)
        status = await call.response_status()
        body = await call.body()
        return status, dict(call.headers), body
    finally:
        await client.close()


def test_streams_refused_even_with_refreshed_credentials_stop_asking_for_refreshes(start_sidecar, bidi_env, fake_aws_h2):
    # A region the account has not enabled refuses every key. Streams are
    # not retried: each refused one asked for a refresh, an STS call per
    # stream. Now the first asks; the next, refused with the refreshed
    # credentials, shows that refreshing does not help, and that is the end.
    sidecar = start_sidecar(bidi_env)
    calls = len(fake_aws_h2.sts_calls())
    fake_aws_h2.post("/bedrock", {"region_enabled": False})

    def refused_once() -> None:
        status, headers, _ = asyncio.run(one_message_stream(sidecar.proxy))
        assert status == 403 and headers["x-amzn-errortype"].startswith("UnrecognizedClientException"), headers

    refused_once()
    wait_for(lambda: len(fake_aws_h2.sts_calls()) == calls + 1, timeout=10, what="the refresh the refusal asked for")
    wait_for(lambda: sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "success"}) == 2,
             timeout=10, what="the refreshed credentials")
    for _ in range(3):
        refused_once()
    warned = [line for line in sidecar.log_text().splitlines() if "rejected credentials just obtained" in line]
    assert len(warned) == 1, warned
    assert len(fake_aws_h2.sts_calls()) == calls + 1
    # Not retried (the body is not kept): each is given up on, as
    # dashboards of the auth retries should show.
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 4


def test_credentials_that_worked_and_are_rejected_later_get_a_refresh(start_sidecar, bidi_env, fake_aws_h2):
    # Refused, refreshed, then working (the region enabled meanwhile), and
    # hours later revoked or expired early: a refresh does help then. Taken
    # for "refreshed in vain", no refresh came until the schedule's.
    sidecar = start_sidecar(bidi_env)
    calls = len(fake_aws_h2.sts_calls())
    fake_aws_h2.post("/bedrock", {"region_enabled": False})
    assert asyncio.run(one_message_stream(sidecar.proxy))[0] == 403
    wait_for(lambda: sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "success"}) == 2,
             timeout=10, what="the refresh the refusal asked for")
    fake_aws_h2.post("/bedrock", {"region_enabled": True})
    assert asyncio.run(lockstep_bare(sidecar.proxy, ["works"]))[0]["seq"] == 1
    fake_aws_h2.post("/credentials/expire", {})
    status, headers, _ = asyncio.run(one_message_stream(sidecar.proxy))
    assert status == 403 and headers["x-amzn-errortype"].startswith("ExpiredToken"), headers
    wait_for(lambda: len(fake_aws_h2.sts_calls()) == calls + 2, timeout=10, what="a refresh for the expired credentials")
    assert "rejected credentials just obtained" not in sidecar.log_text()


def test_api_keys_are_refused_for_bidirectional_streams(start_sidecar, fake_aws_h2):
    # AWS: "You can't use [API keys] with InvokeModelWithBidirectionalStream".
    fake_aws_h2.post("/reset")
    sidecar = start_sidecar(
        {"AWS_REGION": REGION, "AWS_BEARER_TOKEN_BEDROCK": "ABSKexample", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws_h2.bedrock_h2}
    )

    status, headers, raw = asyncio.run(one_message_stream(sidecar.proxy))
    body = json.loads(raw)
    assert status == 400
    assert headers["x-bedrock-broker-error"] == "api_key_unsupported"
    assert "InvokeModelWithBidirectionalStream" in body["message"] and "SigV4" in body["message"]
    assert "ABSKexample" not in json.dumps(body)
    assert bidi_records(fake_aws_h2) == [], "nothing was sent upstream"
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": OPERATION, "code": "400", "auth": "api_key"}) == 1


def test_credentials_close_to_expiry_are_refreshed_before_a_stream_opens(start_sidecar, bidi_env, fake_aws_h2):
    # 9-minute credentials: always under the 10 minutes a stream may need,
    # so opening one forces a refresh and the stream is signed with the new
    # credentials, not with ones that could expire mid-session.
    fake_aws_h2.configure_sts(lifetime_seconds=540)

    def issued() -> list[str]:
        return [c["access_key_id"] for c in fake_aws_h2.get("/credentials")]

    before = issued()
    sidecar = start_sidecar(bidi_env)
    at_start = [k for k in issued() if k not in before]
    assert len(at_start) == 1, at_start

    answers = asyncio.run(lockstep_bare(sidecar.proxy, ["hi"]))
    assert answers[0]["seq"] == 1

    refreshed = [k for k in issued() if k not in before and k not in at_start]
    assert len(refreshed) == 1, refreshed
    (record,) = bidi_records(fake_aws_h2)
    assert record["access_key_id"] == refreshed[0]
    assert record["bidi"]["completed"], record["bidi"]


def test_a_stream_opened_on_expired_credentials_waits_for_the_attempt_under_way(start_sidecar, bidi_env, fake_aws_h2):
    # A pod whose credentials expired in an STS outage: the refresher's
    # attempt under way as STS comes back brings fresh credentials in a
    # moment; a stream opened meanwhile waits for them rather than fail.
    fake_aws_h2.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(bidi_env, ["--refresh-max-backoff", "500ms"])
    fake_aws_h2.configure_sts(fail_always=True, fail_code="InternalFailure", fail_status=500)
    wait_for(lambda: sidecar.ready().status_code == 503, timeout=10, what="credentials to expire")

    fake_aws_h2.configure_sts(fail_always=False, delay_seconds=3, lifetime_seconds=3600)
    wait_for(
        lambda: any(c.get("result") == "pending" for c in fake_aws_h2.sts_calls()),
        timeout=10,
        what="an STS call under way",
    )
    answers = asyncio.run(lockstep_bare(sidecar.proxy, ["hi"]))
    assert answers[0]["seq"] == 1

    (record,) = bidi_records(fake_aws_h2)
    issued = {c["access_key_id"]: c for c in fake_aws_h2.get("/credentials")}
    assert not issued[record["access_key_id"]]["expired"], "signed with the credentials the attempt brought"
    assert record["bidi"]["completed"], record["bidi"]


# The fake holds its response headers until input arrives: a stream the
# client breaks before then fails before Bedrock answered.
HOLD_HEADERS = ("x-fake-headers-after-input", "1")


def test_a_stream_broken_before_bedrock_answers_is_the_clients_error(start_sidecar, bidi_env, fake_aws_h2):
    sidecar = start_sidecar(bidi_env)

    async def broken() -> tuple[int, dict, dict]:
        client = await H2Client.connect(sidecar.proxy)
        try:
            call = await client.start(bidi_headers(sidecar.proxy, HOLD_HEADERS))
            await call.send(corrupt(chunk("first")))
            status = await call.response_status()
            return status, dict(call.headers), json.loads(await call.body())
        finally:
            await client.close()

    status, headers, body = asyncio.run(broken())
    assert status == 400, body
    assert headers["x-bedrock-broker-error"] == "invalid_event_stream"
    assert "malformed" in body["message"], body
    # The fake may still be handling the reset stream when the client has
    # its answer.
    (record,) = wait_for(
        lambda: [r for r in bidi_records(fake_aws_h2) if r["bidi"]["client_disconnected"]],
        timeout=10,
        what="the fake to record the reset stream",
    )
    assert record["bidi"]["frames_received"] == 0, "nothing of the broken message reached Bedrock"
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": OPERATION, "code": "400", "auth": "sigv4"}) == 1
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": OPERATION, "code": "502", "auth": "sigv4"}) is None


def test_an_http1_client_hanging_up_mid_message_is_counted_as_499(start_sidecar, bidi_env, fake_aws_h2):
    sidecar = start_sidecar(bidi_env)

    async def hang_up() -> None:
        netloc = urllib.parse.urlsplit(sidecar.proxy)
        reader, writer = await asyncio.open_connection(netloc.hostname, netloc.port)
        path = f"/model/{urllib.parse.quote(MODEL, safe='')}/invoke-with-bidirectional-stream"
        half = chunk("cut short")[:20]
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {netloc.netloc}\r\n{HOLD_HEADERS[0]}: {HOLD_HEADERS[1]}\r\n"
            "Content-Type: application/vnd.amazon.eventstream\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%s\r\n" % (len(half), half)
        )
        await writer.drain()
        writer.close()

    asyncio.run(hang_up())
    labels = {"operation": OPERATION, "code": "499", "auth": "sigv4"}
    wait_for(lambda: sidecar.metric("bedrock_broker_requests_total", labels) == 1, timeout=10, what="the hang-up to be counted")
    assert "bidirectional stream aborted" not in sidecar.log_text(), "a hang-up is not a warning"


def test_a_stream_whose_answer_ended_first_holds_its_slot_until_its_input_ends(start_sidecar, bidi_env, fake_aws_h2):
    """HTTP/2 lets Bedrock end its answer while the client still sends:
    the sidecar goes on forwarding (and signing) the client's messages, so
    the stream is still in flight and still takes a `--max-requests` slot
    (a neighbour cannot open more streams than the limit this way)."""
    sidecar = start_sidecar(bidi_env, ["--max-requests", "1"])
    in_flight = lambda: sidecar.metric("bedrock_broker_requests_in_flight")  # noqa: E731

    async def exchange() -> tuple[int, int, float]:
        client = await H2Client.connect(sidecar.proxy)
        try:
            call = await client.start(bidi_headers(sidecar.proxy, ("x-fake-end-answers-after", "1")))
            await call.send(chunk("one"))
            status = await call.response_status()
            assert answer(await call.next_message())["seq"] == 1
            assert await call.next_message() is None, "the answer ended"
            gauge = in_flight()
            other = await asyncio.to_thread(
                requests.post, sidecar.url("/model/m/converse"), data="{}", timeout=10)
            await call.send(chunk("two"), end_stream=True)
            return status, other.status_code, gauge
        finally:
            await client.close()

    status, other, gauge = asyncio.run(exchange())
    assert status == 200
    assert (gauge, other) == (1, 503), "the stream still sends: in flight, holding its slot"
    wait_for(lambda: (bidi_records(fake_aws_h2) or [{}])[0].get("bidi", {}).get("request_body_ended"), timeout=10,
             what="the input forwarded to its end")
    (record,) = [r for r in bidi_records(fake_aws_h2)]
    assert record["bidi"]["frames_verified"] == 3, record["bidi"]
    wait_for(lambda: in_flight() == 0, timeout=10, what="the slot given back")


def test_a_client_silent_after_the_answer_ended_lets_go_of_its_slot(start_sidecar, bidi_env, fake_aws_h2):
    """Once Bedrock's answer is over, nothing but the client would end the
    stream: a client that goes quiet then (and never ends it) is cut off
    after `--body-read-timeout`, not kept in flight for ever."""
    sidecar = start_sidecar(bidi_env, ["--max-requests", "1", "--body-read-timeout", "1s"])
    in_flight = lambda: sidecar.metric("bedrock_broker_requests_in_flight")  # noqa: E731

    async def go_quiet() -> None:
        client = await H2Client.connect(sidecar.proxy)
        try:
            call = await client.start(bidi_headers(sidecar.proxy, ("x-fake-end-answers-after", "1")))
            await call.send(chunk("one"))
            assert await call.response_status() == 200
            assert answer(await call.next_message())["seq"] == 1
            assert await call.next_message() is None, "the answer ended"
            # The connection stays open and says nothing more.
            await asyncio.to_thread(wait_for, lambda: in_flight() == 0, timeout=10, what="the quiet stream let go")
        finally:
            await client.close()

    asyncio.run(go_quiet())


async def input_after_a_cut(sidecar, fake) -> dict:
    """A session whose Bedrock goes quiet: the sidecar cuts the answer off
    (--stream-idle-timeout) while the client, still connected, sends on.
    Returns Bedrock's record once its stream has ended and the request has
    let go of its slot."""
    client = await H2Client.connect(sidecar.proxy)
    try:
        call = await client.start(bidi_headers(sidecar.proxy, ("x-fake-silent-answers", "1")))
        await call.send(chunk("one"))
        assert await call.response_status() == 200
        cut = await call.next_message(timeout=30)
        assert cut is not None and cut.headers[":message-type"] == "exception", cut
        assert b"--stream-idle-timeout" in cut.payload, cut.payload
        for i in range(3):
            try:
                await call.send(chunk(f"after the cut {i}"))
            except Exception:  # the sidecar may have reset the client's stream already
                break
        # Polled while the client is still connected: its leaving would
        # end everything anyway.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            (record,) = bidi_records(fake)
            in_flight = sidecar.metric("bedrock_broker_requests_in_flight")
            if (record["bidi"]["client_disconnected"] or record["bidi"]["request_body_ended"]) and in_flight == 0:
                return record
            assert asyncio.get_running_loop().time() < deadline, f"Bedrock's stream still open: {record['bidi']}, in flight {in_flight}"
            await asyncio.sleep(0.05)
    finally:
        await client.close()


def test_an_answer_cut_off_for_silence_ends_bedrocks_stream_too(start_sidecar, bidi_env, fake_aws_h2):
    # The cut ended the client's answer, yet its input went on being signed
    # and sent to Bedrock, Bedrock's stream and the request's slot held for
    # as long as the client sent.
    sidecar = start_sidecar({**bidi_env, "BEDROCK_BROKER_STREAM_IDLE_TIMEOUT": "1s"})
    record = asyncio.run(input_after_a_cut(sidecar, fake_aws_h2))
    bidi = record["bidi"]
    assert bidi["client_disconnected"] and not bidi["end_frame_received"], bidi
    assert bidi["data_frames"] == 1, "nothing after the cut reached Bedrock"
