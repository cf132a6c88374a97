"""Tests of the fakes themselves: fake_aws (run as a real process) and eventstream.py.

Real AWS clients (boto3/botocore, the openai SDK) talk to the fake over
loopback, so the fake's wire formats and its SigV4 verification are checked
against the reference implementations.  Waiting is always polling with a
deadline.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from unittest import mock

import aiohttp
import boto3
import botocore.auth
import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError

import eventstream
import fake_aws
from h2client import H2Client

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_aws"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-broker"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


# --------------------------------------------------------------------------
# Process management and small clients
# --------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Fake:
    """A running fake_aws process."""

    proc: subprocess.Popen
    sts: str
    bedrock: str
    control: str
    ready_line: str
    ready_file: Path
    stderr_path: Path
    ca_path: Optional[str] = None
    bedrock_h2: Optional[str] = None  # only with --h2-port

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start_fake(tmp: Path, *extra: str) -> Fake:
    """Start fake_aws on ephemeral ports and wait (polling) until it is ready."""
    ready_file = tmp / "ready.json"
    stderr_path = tmp / "fake.stderr"
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--sts-port", "0", "--bedrock-port", "0", "--region", REGION,
         "--ready-file", str(ready_file), *extra],
        stdout=subprocess.PIPE,
        stderr=stderr_path.open("wb"),
        text=True,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"fake exited early ({proc.returncode}): {stderr_path.read_text()}")
        return ready_file.exists()

    wait_until(ready, timeout=20, what="fake_aws ready file")
    line = proc.stdout.readline()  # printed before the ready file is written
    info = json.loads(ready_file.read_text())
    return Fake(proc, info["sts"], info["bedrock"], info["control"], line, ready_file, stderr_path,
                bedrock_h2=info.get("bedrock_h2"))


def stop_fake(fake: Fake) -> None:
    """Terminate the fake and wait for it."""
    fake.proc.terminate()
    try:
        fake.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        fake.proc.kill()
        fake.proc.wait(timeout=10)


HTTP = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=30))


def control(fake: Fake, method: str, path: str, body: Any = None) -> Any:
    """Call the control API; returns decoded JSON, asserting HTTP 200."""
    data = None if body is None else json.dumps(body).encode()
    resp = HTTP.request(method, fake.control + path, body=data)
    assert resp.status == 200, (resp.status, resp.data)
    return json.loads(resp.data)


def control_status(fake: Fake, method: str, path: str, body: Any = None) -> int:
    """Call the control API and return only the HTTP status."""
    return HTTP.request(method, fake.control + path, body=json.dumps(body).encode()).status


def bedrock_requests(fake: Fake, **query: str) -> list:
    """Recorded Bedrock requests (optionally filtered by ?test_id=)."""
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return control(fake, "GET", "/bedrock/requests" + (f"?{qs}" if qs else ""))


def sts_client(fake: Fake, creds: Optional[dict] = None):
    """boto3 STS client pointed at the fake."""
    kwargs = dict(aws_access_key_id="AKIDUNUSED", aws_secret_access_key="unused")
    if creds:
        kwargs = dict(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                      aws_session_token=creds.get("SessionToken"))
    return boto3.client("sts", endpoint_url=fake.sts, region_name=REGION, config=NO_RETRY, **kwargs)


def assume(fake: Fake, token: str = "web-identity-token", session: str = "sess-1", **extra: Any) -> dict:
    """AssumeRoleWithWebIdentity through boto3; returns the full parsed response."""
    return sts_client(fake).assume_role_with_web_identity(
        RoleArn=ROLE_ARN, RoleSessionName=session, WebIdentityToken=token, **extra
    )


def runtime_client(fake: Fake, creds: dict, extra_headers: Optional[dict] = None):
    """boto3 bedrock-runtime client pointed at the fake (optionally adding signed headers)."""
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.bedrock,
        region_name=REGION,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds.get("SessionToken"),
        config=NO_RETRY,
        verify=fake.ca_path if fake.ca_path else True,
    )
    if extra_headers:
        def add(request: AWSRequest, **_: Any) -> None:
            for k, v in extra_headers.items():
                request.headers[k] = v
        client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def sign(
    url: str,
    body: bytes,
    creds: dict,
    *,
    method: str = "POST",
    service: str = "bedrock",
    region: str = REGION,
    headers: Optional[dict] = None,
    when: Optional[dt.datetime] = None,
) -> dict:
    """Headers of a request signed by botocore (optionally at a fixed time)."""
    req = AWSRequest(method=method, url=url, headers={"Content-Type": "application/json", **(headers or {})}, data=body)
    signer = SigV4Auth(Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("SessionToken")), service, region)
    if when is None:
        signer.add_auth(req)
    else:
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            signer.add_auth(req)
    return dict(req.headers.items())


def send(url: str, body: bytes, headers: dict, method: str = "POST", ca: Optional[str] = None) -> urllib3.BaseHTTPResponse:
    """Send a raw request (urllib3; Host comes from the URL, as signed)."""
    pool = HTTP if ca is None else urllib3.PoolManager(ca_certs=ca, retries=False)
    return pool.request(method, url, body=body, headers=headers)


def converse_body(text: str = "hello there") -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": [{"text": text}]}]}).encode()


def decode_events(data: bytes) -> list:
    """Decode an event-stream byte string with botocore's decoder."""
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [(m.headers, m.payload) for m in buf]


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory):
    f = start_fake(tmp_path_factory.mktemp("fake"), "--h2-port", "0")
    yield f
    stop_fake(f)
    if os.environ.get("FAKE_AWS_SHOW_LOG"):
        print(f.stderr(), file=sys.stderr)


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest):
    if "fake" in request.fixturenames:
        control(request.getfixturevalue("fake"), "POST", "/reset", {})
    yield


@pytest.fixture
def sts_creds(fake: Fake) -> dict:
    return assume(fake)["Credentials"]


@pytest.fixture
def static_creds(fake: Fake) -> dict:
    creds = {"AccessKeyId": "AKIASTATICFAKE000001", "SecretAccessKey": "static/secret/key/for/tests/only/0000000"}
    control(fake, "POST", "/static_keys", {"access_key_id": creds["AccessKeyId"], "secret_access_key": creds["SecretAccessKey"]})
    return creds


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory: pytest.TempPathFactory):
    trustme = pytest.importorskip("trustme")
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    f = start_fake(tmp, "--tls-cert", str(tmp / "server.pem"), "--tls-key", str(tmp / "server.key"), "--h2-port", "0")
    f.ca_path = str(tmp / "ca.pem")
    yield f
    stop_fake(f)


# --------------------------------------------------------------------------
# eventstream.py
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Startup
# --------------------------------------------------------------------------


def test_ready_line_matches_ready_file(fake: Fake):
    info = json.loads(fake.ready_line)
    assert info == json.loads(fake.ready_file.read_text())
    assert info["sts"].startswith("http://127.0.0.1:")
    assert info["bedrock"].startswith("http://127.0.0.1:")
    assert info["control"] == info["sts"] + "/_control"
    assert info["bedrock_h2"].startswith("http://127.0.0.1:")  # h2c: the fixture passes --h2-port 0


def test_ready_line_has_no_h2_url_without_h2_port(tmp_path: Path):
    f = start_fake(tmp_path)
    try:
        assert set(json.loads(f.ready_line)) == {"sts", "bedrock", "control"}
    finally:
        stop_fake(f)


# --------------------------------------------------------------------------
# Fake STS
# --------------------------------------------------------------------------


def test_assume_role_response_parses_with_boto3(fake: Fake):
    before = dt.datetime.now(dt.timezone.utc)
    resp = assume(fake, token="tok-123", session="pod-a")
    creds = resp["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["AccessKeyId"]) == 20
    assert creds["AccessKeyId"][4:].isalnum() and creds["AccessKeyId"][4:].upper() == creds["AccessKeyId"][4:]
    assert len(creds["SecretAccessKey"]) == 40 and creds["SessionToken"]
    assert dt.timedelta(seconds=3590) < creds["Expiration"] - before <= dt.timedelta(seconds=3601)
    assert resp["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/pod-a"
    assert resp["AssumedRoleUser"]["AssumedRoleId"].endswith(":pod-a")
    assert resp["Audience"] and resp["Provider"] and resp["SubjectFromWebIdentityToken"]
    second = assume(fake, token="tok-123", session="pod-a")["Credentials"]
    assert second["AccessKeyId"] != creds["AccessKeyId"], "fresh credentials on every call"
    calls = control(fake, "GET", "/sts/calls")
    assert [c["token"] for c in calls] == ["tok-123", "tok-123"]
    assert calls[0]["role_arn"] == ROLE_ARN and calls[0]["role_session_name"] == "pod-a"
    assert calls[0]["result"] == "ok" and calls[0]["access_key_id"] == creds["AccessKeyId"]
    assert calls[0]["signed"] is False


def test_assume_role_lifetime_rounds_expiration_down(fake: Fake):
    control(fake, "POST", "/sts", {"lifetime_seconds": 2.5})
    t0 = time.time()
    creds = assume(fake)["Credentials"]
    call = control(fake, "GET", "/sts/calls")[-1]
    assert t0 + 2.5 <= call["expires_at"] <= time.time() + 2.5
    assert creds["Expiration"].timestamp() == int(call["expires_at"]) <= call["expires_at"]


def test_duration_seconds_used_when_lifetime_not_configured(fake: Fake):
    t0 = time.time()
    assume(fake, DurationSeconds=900)
    call = control(fake, "GET", "/sts/calls")[-1]
    assert call["duration_seconds"] == "900"
    assert abs(call["expires_at"] - (t0 + 900)) < 5


@pytest.mark.parametrize(
    "role_arn, session, message_part",
    [
        ("arn:aws:iam::12345:role/x", "sess", "roleArn"),
        ("arn:aws:iam::123456789012:user/x", "sess", "roleArn"),
        (ROLE_ARN, "s", "roleSessionName"),
        (ROLE_ARN, "bad session!", "roleSessionName"),
    ],
)
def test_assume_role_validation(fake: Fake, role_arn: str, session: str, message_part: str):
    # Raw form post: boto3 would reject some of these client-side.
    form = urllib.parse.urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role_arn,
                                   "RoleSessionName": session, "WebIdentityToken": "tok1"})
    resp = HTTP.request("POST", fake.sts + "/", body=form.encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400
    assert "<Code>ValidationError</Code>" in resp.data.decode() and message_part in resp.data.decode()


def test_accept_tokens(fake: Fake):
    control(fake, "POST", "/sts", {"accept_tokens": ["good-token"]})
    assert assume(fake, token="good-token")["Credentials"]["AccessKeyId"].startswith("ASIA")
    with pytest.raises(ClientError) as exc:
        assume(fake, token="bad-token")
    assert exc.value.response["Error"]["Code"] == "InvalidIdentityToken"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    control(fake, "POST", "/sts", {"accept_tokens": None})
    assume(fake, token="anything")
    results = [(c["token"], c["result"], c["error_code"]) for c in control(fake, "GET", "/sts/calls")]
    assert results == [("good-token", "ok", None), ("bad-token", "error", "InvalidIdentityToken"), ("anything", "ok", None)]


def test_fail_next_then_recover(fake: Fake):
    control(fake, "POST", "/sts", {"fail_next": 2, "fail_code": "IDPCommunicationError"})
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            assume(fake)
        assert exc.value.response["Error"]["Code"] == "IDPCommunicationError"
    assert assume(fake)["Credentials"]["AccessKeyId"].startswith("ASIA")


@pytest.mark.parametrize(
    "code, status, expected_status",
    [("InternalFailure", None, 500), ("AccessDenied", None, 403), ("Throttling", 503, 503), ("ExpiredTokenException", None, 400)],
)
def test_fail_always_codes_and_status(fake: Fake, code: str, status: Optional[int], expected_status: int):
    cfg: dict = {"fail_always": True, "fail_code": code}
    if status:
        cfg["fail_status"] = status
    control(fake, "POST", "/sts", cfg)
    for _ in range(2):
        resp = HTTP.request("POST", fake.sts + "/", body=b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status == expected_status
        assert f"<Code>{code}</Code>" in resp.data.decode()
        assert ("<Type>Receiver</Type>" if expected_status >= 500 else "<Type>Sender</Type>") in resp.data.decode()


def test_sts_delay_is_applied(fake: Fake):
    control(fake, "POST", "/sts", {"delay_seconds": 0.3})
    t0 = time.monotonic()
    assume(fake)
    assert time.monotonic() - t0 >= 0.3


def test_get_caller_identity(fake: Fake, sts_creds: dict, static_creds: dict):
    ident = sts_client(fake, sts_creds).get_caller_identity()
    assert ident["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/sess-1"
    assert ident["Account"] == "123456789012" and ident["UserId"].endswith(":sess-1")
    assert sts_client(fake, static_creds).get_caller_identity()["Arn"] == "arn:aws:iam::123456789012:user/static-user"


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda c: {**c, "SecretAccessKey": "wrong" + c["SecretAccessKey"][5:]}, "SignatureDoesNotMatch"),
        (lambda c: {**c, "AccessKeyId": "ASIAUNKNOWNKEY000000"}, "InvalidClientTokenId"),
        (lambda c: {**c, "SessionToken": "not-the-issued-token"}, "InvalidClientTokenId"),
    ],
)
def test_get_caller_identity_rejections(fake: Fake, sts_creds: dict, mutate: Callable, code: str):
    with pytest.raises(ClientError) as exc:
        sts_client(fake, mutate(sts_creds)).get_caller_identity()
    assert exc.value.response["Error"]["Code"] == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_credentials_listing_hides_secrets_unless_asked(fake: Fake, sts_creds: dict):
    # STS-issued credentials survive /reset, so pick ours out of the list.
    def mine(path: str) -> dict:
        (cred,) = [c for c in control(fake, "GET", path) if c["access_key_id"] == sts_creds["AccessKeyId"]]
        return cred

    plain = mine("/credentials")
    assert plain["kind"] == "sts" and not plain["expired"] and "secret_access_key" not in plain
    full = mine("/credentials?include_secrets=1")
    assert full["secret_access_key"] == sts_creds["SecretAccessKey"] and full["session_token"] == sts_creds["SessionToken"]


def test_get_caller_identity_expired(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/credentials/expire", {"access_key_id": sts_creds["AccessKeyId"]})
    with pytest.raises(ClientError) as exc:
        sts_client(fake, sts_creds).get_caller_identity()
    assert exc.value.response["Error"]["Code"] == "ExpiredToken"


def test_unknown_action(fake: Fake):
    resp = HTTP.request("POST", fake.sts + "/", body=b"Action=Nope&Version=2011-06-15")
    assert resp.status == 400 and b"<Code>InvalidAction</Code>" in resp.data


# --------------------------------------------------------------------------
# Fake STS: AssumeRole (role chaining) and session policies
# --------------------------------------------------------------------------

TARGET_ROLE_ARN = "arn:aws:iam::210987654321:role/path/target-role"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "bedrock:InvokeModel", "Resource": "*"}]}
POLICY_ARNS = ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::123456789012:policy/team/bedrock-invoke"]


def raw_sts(fake: Fake, form: dict, creds: Optional[dict] = None) -> urllib3.BaseHTTPResponse:
    """POST a form to the fake STS, SigV4-signed (service sts) by botocore when ``creds`` is given."""
    body = urllib.parse.urlencode({"Version": "2011-06-15", **form}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if creds is not None:
        headers = sign(fake.sts + "/", body, creds, service="sts", headers=headers)
    return send(fake.sts + "/", body, headers)


def error_code(resp: urllib3.BaseHTTPResponse) -> str:
    text = resp.data.decode()
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else text


def test_assume_role_chained_from_web_identity_with_boto3(fake: Fake, sts_creds: dict):
    t0 = time.time()
    resp = sts_client(fake, sts_creds).assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="chain-1", DurationSeconds=1800)
    creds = resp["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and creds["AccessKeyId"] != sts_creds["AccessKeyId"]
    assert len(creds["SecretAccessKey"]) == 40 and creds["SessionToken"]
    assert resp["AssumedRoleUser"]["Arn"] == "arn:aws:sts::210987654321:assumed-role/target-role/chain-1"
    assert resp["AssumedRoleUser"]["AssumedRoleId"].startswith("AROA")
    assert resp["AssumedRoleUser"]["AssumedRoleId"].endswith(":chain-1")
    assert resp["PackedPolicySize"] == 0
    ident = sts_client(fake, creds).get_caller_identity()
    assert ident["Arn"] == resp["AssumedRoleUser"]["Arn"] and ident["Account"] == "210987654321"

    # Chain once more, signed with the AssumeRole-issued credentials.
    again = sts_client(fake, creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="chain-2")
    assert again["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/chain-2"

    calls = control(fake, "GET", "/sts/calls?action=AssumeRole")
    assert len(calls) == 2
    first, second = calls
    assert first["signed"] is True and first["result"] == "ok" and first["status"] == 200
    assert first["source_access_key_id"] == sts_creds["AccessKeyId"]
    assert first["source_arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/sess-1"
    assert first["access_key_id"] == creds["AccessKeyId"]
    assert first["assumed_role_arn"] == resp["AssumedRoleUser"]["Arn"]
    assert first["role_arn"] == TARGET_ROLE_ARN and first["role_session_name"] == "chain-1"
    assert first["duration_seconds"] == "1800" and abs(first["expires_at"] - (t0 + 1800)) < 5
    assert first["external_id"] is None and first["policy"] is None and first["policy_arns"] == []
    assert creds["Expiration"].timestamp() == int(first["expires_at"])
    assert second["source_access_key_id"] == creds["AccessKeyId"]
    listed = {c["access_key_id"]: c for c in control(fake, "GET", "/credentials")}
    assert listed[creds["AccessKeyId"]]["role_arn"] == TARGET_ROLE_ARN
    assert listed[creds["AccessKeyId"]]["arn"] == resp["AssumedRoleUser"]["Arn"]


def test_assume_role_response_xml_shape(fake: Fake, sts_creds: dict):
    resp = raw_sts(fake, {"Action": "AssumeRole", "RoleArn": TARGET_ROLE_ARN, "RoleSessionName": "xml"}, sts_creds)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/xml")
    text = resp.data.decode()
    assert text.startswith('<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials>')
    order = ["<AccessKeyId>", "<SecretAccessKey>", "<SessionToken>", "<Expiration>", "</Credentials>", "<AssumedRoleUser>",
             "<AssumedRoleId>", "<Arn>", "</AssumedRoleUser>", "<PackedPolicySize>0</PackedPolicySize>",
             "</AssumeRoleResult>", "<ResponseMetadata><RequestId>", "</AssumeRoleResponse>"]
    positions = [text.index(tag) for tag in order]
    assert positions == sorted(positions)


def test_assume_role_with_static_key(fake: Fake, static_creds: dict):
    resp = sts_client(fake, static_creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="from-static")
    assert resp["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/from-static"
    call = control(fake, "GET", "/sts/calls")[-1]
    assert call["source_access_key_id"] == static_creds["AccessKeyId"]
    assert call["source_arn"] == "arn:aws:iam::123456789012:user/static-user"


def test_assume_role_lifetime_override(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/sts", {"lifetime_seconds": 2.5})
    t0 = time.time()
    sts_client(fake, sts_creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="short", DurationSeconds=3600)
    call = control(fake, "GET", "/sts/calls?action=AssumeRole")[-1]
    assert t0 + 2.5 <= call["expires_at"] <= time.time() + 2.5


def test_assume_role_signature_rejections(fake: Fake, sts_creds: dict):
    form = {"Action": "AssumeRole", "RoleArn": ROLE_ARN, "RoleSessionName": "sig"}
    unsigned = raw_sts(fake, form)
    assert unsigned.status == 403 and error_code(unsigned) == "MissingAuthenticationToken"
    wrong_secret = {**sts_creds, "SecretAccessKey": "x" * 40}
    bad = raw_sts(fake, form, wrong_secret)
    assert bad.status == 403 and error_code(bad) == "SignatureDoesNotMatch"
    unknown = raw_sts(fake, form, {**sts_creds, "AccessKeyId": "ASIAUNKNOWNKEY000000"})
    assert unknown.status == 403 and error_code(unknown) == "InvalidClientTokenId"
    wrong_service = send(fake.sts + "/", urllib.parse.urlencode(form).encode(),
                         sign(fake.sts + "/", urllib.parse.urlencode(form).encode(), sts_creds, service="bedrock",
                              headers={"Content-Type": "application/x-www-form-urlencoded"}))
    assert wrong_service.status == 403 and error_code(wrong_service) == "SignatureDoesNotMatch"
    control(fake, "POST", "/credentials/expire", {"access_key_id": sts_creds["AccessKeyId"]})
    with pytest.raises(ClientError) as exc:
        sts_client(fake, sts_creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="sig")
    assert exc.value.response["Error"]["Code"] == "ExpiredToken"
    calls = control(fake, "GET", "/sts/calls?action=AssumeRole")
    assert [c["error_code"] for c in calls] == [
        "MissingAuthenticationToken", "SignatureDoesNotMatch", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"]
    assert calls[0]["source_access_key_id"] is None and calls[0]["signed"] is False
    assert calls[1]["source_access_key_id"] == sts_creds["AccessKeyId"] and calls[1]["rejection"]
    assert all(c["access_key_id"] is None for c in calls)


@pytest.mark.parametrize(
    "extra, code, message_part",
    [
        ({"RoleArn": "arn:aws:iam::12345:role/x"}, "ValidationError", "roleArn"),
        ({"RoleArn": "arn:aws:iam::123456789012:user/x"}, "ValidationError", "roleArn"),
        ({"RoleSessionName": "s"}, "ValidationError", "roleSessionName"),
        ({"RoleSessionName": "bad session!"}, "ValidationError", "roleSessionName"),
        ({"DurationSeconds": "899"}, "ValidationError", "durationSeconds"),
        ({"DurationSeconds": "43201"}, "ValidationError", "durationSeconds"),
        ({"ExternalId": "x"}, "ValidationError", "externalId"),
        ({"ExternalId": "bad id!"}, "ValidationError", "externalId"),
        ({"Policy": "{not json"}, "MalformedPolicyDocument", "valid JSON"),
        ({"Policy": "[1, 2]"}, "MalformedPolicyDocument", "valid JSON"),
        ({"Policy": ""}, "ValidationError", "policy"),
        ({"Policy": json.dumps({"Statement": [], "pad": "x" * 2048})}, "ValidationError", "policy"),
        ({f"PolicyArns.member.{i}.arn": f"arn:aws:iam::aws:policy/P{i:02d}xxxxxxxx" for i in range(1, 12)},
         "ValidationError", "policyArns"),
        ({"PolicyArns.member.1.arn": "arn:aws:iam::123456789012:role/not-a-policy"}, "ValidationError", "policyArns.1"),
        ({"PolicyArns.member.2.arn": POLICY_ARNS[0]}, "ValidationError", "PolicyArns"),
    ],
)
def test_assume_role_validation_like_aws(fake: Fake, sts_creds: dict, extra: dict, code: str, message_part: str):
    form = {"Action": "AssumeRole", "RoleArn": ROLE_ARN, "RoleSessionName": "valid", **extra}
    resp = raw_sts(fake, form, sts_creds)
    assert resp.status == 400 and error_code(resp) == code
    assert message_part in resp.data.decode()
    call = control(fake, "GET", "/sts/calls")[-1]
    assert call["result"] == "error" and call["error_code"] == code and call["access_key_id"] is None
    if "Policy" in extra:
        assert call["policy"] == recorded_policy_of(extra["Policy"])


def recorded_policy_of(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def test_web_identity_validates_session_policies(fake: Fake):
    base = {"Action": "AssumeRoleWithWebIdentity", "RoleArn": ROLE_ARN, "RoleSessionName": "wi", "WebIdentityToken": "tok1"}
    bad_json = raw_sts(fake, {**base, "Policy": "{nope"})
    assert bad_json.status == 400 and error_code(bad_json) == "MalformedPolicyDocument"
    bad_arn = raw_sts(fake, {**base, "PolicyArns.member.1.arn": "arn:aws:s3:::bucket-not-policy"})
    assert bad_arn.status == 400 and error_code(bad_arn) == "ValidationError"
    too_many = raw_sts(fake, {**base, **{f"PolicyArns.member.{i}.arn": POLICY_ARNS[1] for i in range(1, 12)}})
    assert too_many.status == 400 and "policyArns" in too_many.data.decode()
    calls = control(fake, "GET", "/sts/calls")
    assert calls[0]["policy"] == "{nope"
    assert calls[1]["policy_arns"] == ["arn:aws:s3:::bucket-not-policy"]
    assert len(calls[2]["policy_arns"]) == 11


def test_session_policies_recorded_for_both_actions(fake: Fake):
    web = assume(fake, session="wi-pol", Policy=json.dumps(POLICY), PolicyArns=[{"arn": a} for a in POLICY_ARNS])
    assert 0 < web["PackedPolicySize"] <= 100
    chained = sts_client(fake, web["Credentials"]).assume_role(
        RoleArn=TARGET_ROLE_ARN, RoleSessionName="ar-pol", ExternalId="ext-123",
        Policy=json.dumps(POLICY, indent=2), PolicyArns=[{"arn": POLICY_ARNS[1]}])
    assert 0 < chained["PackedPolicySize"] <= 100
    plain = assume(fake)
    assert "PackedPolicySize" not in plain, "no session policies: element omitted, as AWS does"
    wi_call, ar_call, plain_call = control(fake, "GET", "/sts/calls")
    assert wi_call["action"] == "AssumeRoleWithWebIdentity"
    assert wi_call["policy"] == POLICY and wi_call["policy_arns"] == POLICY_ARNS
    assert wi_call["external_id"] is None and wi_call["source_access_key_id"] is None
    assert ar_call["action"] == "AssumeRole" and ar_call["policy"] == POLICY
    assert ar_call["policy_arns"] == [POLICY_ARNS[1]] and ar_call["external_id"] == "ext-123"
    assert plain_call["policy"] is None and plain_call["policy_arns"] == []


def test_policy_arns_recorded_in_member_order(fake: Fake, sts_creds: dict):
    arns = [f"arn:aws:iam::123456789012:policy/p{i}" for i in range(1, 11)]
    form = {"Action": "AssumeRole", "RoleArn": ROLE_ARN, "RoleSessionName": "order"}
    form.update({f"PolicyArns.member.{i}.arn": arns[i - 1] for i in range(10, 0, -1)})  # sent out of order
    assert raw_sts(fake, form, sts_creds).status == 200
    assert control(fake, "GET", "/sts/calls")[-1]["policy_arns"] == arns


def test_require_external_id(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/sts", {"require_external_id": {TARGET_ROLE_ARN: "ext-secret"}})
    client = sts_client(fake, sts_creds)
    for extra in ({}, {"ExternalId": "ext-wrong"}):
        with pytest.raises(ClientError) as exc:
            client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="ext", **extra)
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert "sts:AssumeRole" in exc.value.response["Error"]["Message"]
    assert client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="ext", ExternalId="ext-secret")["Credentials"]
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="other")["Credentials"], "other roles need no id"
    calls = control(fake, "GET", "/sts/calls?action=AssumeRole")
    assert [(c["external_id"], c["error_code"]) for c in calls] == [
        (None, "AccessDenied"), ("ext-wrong", "AccessDenied"), ("ext-secret", None), (None, None)]
    assert calls[0]["access_key_id"] is None and calls[2]["access_key_id"]
    assert control(fake, "GET", "/sts")["require_external_id"] == {TARGET_ROLE_ARN: "ext-secret"}


def test_deny_roles(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/sts", {"deny_roles": [TARGET_ROLE_ARN]})
    client = sts_client(fake, sts_creds)
    with pytest.raises(ClientError) as exc:
        client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="denied")
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="allowed")["Credentials"]
    assert assume(fake, session="wi-unaffected")["Credentials"], "deny_roles applies to AssumeRole only"
    control(fake, "POST", "/reset", {})
    assert control(fake, "GET", "/sts")["deny_roles"] == []
    assert client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="after-reset")["Credentials"]


def test_fail_action_targets_one_action(fake: Fake, sts_creds: dict):
    client = sts_client(fake, sts_creds)
    control(fake, "POST", "/sts", {"fail_always": True, "fail_code": "Throttling", "fail_action": "AssumeRole"})
    assert assume(fake)["Credentials"]
    with pytest.raises(ClientError) as exc:
        client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x1")
    assert exc.value.response["Error"]["Code"] == "Throttling"

    # fail_next is consumed only by the targeted action.
    control(fake, "POST", "/sts", {"fail_always": False, "fail_next": 1, "fail_code": "IDPCommunicationError",
                                   "fail_action": "AssumeRoleWithWebIdentity"})
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x2")["Credentials"]
    assert control(fake, "GET", "/sts")["fail_next"] == 1
    with pytest.raises(ClientError) as exc:
        assume(fake)
    assert exc.value.response["Error"]["Code"] == "IDPCommunicationError"
    assert assume(fake)["Credentials"]

    # null targets both (the default).
    control(fake, "POST", "/sts", {"fail_next": 2, "fail_code": "InternalFailure", "fail_action": None})
    for call in (lambda: assume(fake), lambda: client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x3")):
        with pytest.raises(ClientError) as exc:
            call()
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x4")["Credentials"]
    assert sts_client(fake, sts_creds).get_caller_identity()["Arn"], "GetCallerIdentity is never injected"

    results = [(c["action"], c["error_code"]) for c in control(fake, "GET", "/sts/calls")]
    assert results == [
        ("AssumeRoleWithWebIdentity", None),  # the sts_creds fixture
        ("AssumeRoleWithWebIdentity", None), ("AssumeRole", "Throttling"),
        ("AssumeRole", None), ("AssumeRoleWithWebIdentity", "IDPCommunicationError"), ("AssumeRoleWithWebIdentity", None),
        ("AssumeRoleWithWebIdentity", "InternalFailure"), ("AssumeRole", "InternalFailure"), ("AssumeRole", None),
        ("GetCallerIdentity", None),
    ]


def test_sts_control_validates_new_keys(fake: Fake):
    assert control_status(fake, "POST", "/sts", {"fail_action": "GetCallerIdentity"}) == 400
    assert control_status(fake, "POST", "/sts", {"require_external_id": ["x"]}) == 400
    assert control_status(fake, "POST", "/sts", {"require_external_id": {ROLE_ARN: 5}}) == 400
    assert control_status(fake, "POST", "/sts", {"deny_roles": ROLE_ARN}) == 400
    cfg = control(fake, "POST", "/sts", {"require_external_id": None, "deny_roles": None, "fail_action": "AssumeRole"})
    assert cfg["require_external_id"] == {} and cfg["deny_roles"] == [] and cfg["fail_action"] == "AssumeRole"
    control(fake, "POST", "/reset", {})
    assert control(fake, "GET", "/sts")["fail_action"] is None


def test_bedrock_records_principal_arn(fake: Fake, sts_creds: dict, static_creds: dict):
    chained = sts_client(fake, sts_creds).assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="invoker")
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    runtime_client(fake, chained["Credentials"], {"x-test-id": "p-chained"}).converse(modelId=MODEL, messages=messages)
    runtime_client(fake, sts_creds, {"x-test-id": "p-web"}).converse(modelId=MODEL, messages=messages)
    runtime_client(fake, static_creds, {"x-test-id": "p-static"}).converse(modelId=MODEL, messages=messages)
    send(f"{fake.bedrock}/model/{MODEL}/converse", converse_body(), {"Authorization": "Bearer ABSK1", "x-test-id": "p-bearer"})
    bad = {**chained["Credentials"], "SecretAccessKey": "y" * 40}
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    send(url, converse_body(), {**sign(url, converse_body(), bad), "x-test-id": "p-badsig"})
    unknown = {**sts_creds, "AccessKeyId": "ASIAUNKNOWNKEY000000"}
    send(url, converse_body(), {**sign(url, converse_body(), unknown), "x-test-id": "p-unknown"})

    def principal(test_id: str) -> tuple:
        (rec,) = bedrock_requests(fake, test_id=test_id)
        return rec["principal_arn"], rec["verified"]

    assert principal("p-chained") == ("arn:aws:sts::210987654321:assumed-role/target-role/invoker", True)
    assert principal("p-web") == ("arn:aws:sts::123456789012:assumed-role/bedrock-broker/sess-1", True)
    assert principal("p-static") == ("arn:aws:iam::123456789012:user/static-user", True)
    assert principal("p-bearer") == (None, True)
    assert principal("p-badsig") == ("arn:aws:sts::210987654321:assumed-role/target-role/invoker", False)
    assert principal("p-unknown") == (None, False)


# --------------------------------------------------------------------------
# Fake Bedrock via boto3 (SigV4 signed by botocore)
# --------------------------------------------------------------------------


def test_boto3_converse_and_invoke(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-test-id": "t-conv", "x-llamastack-provider-data": "{}"})
    out = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "ping"}]}])
    assert out["output"]["message"]["content"][0]["text"] == f"fake reply from {MODEL} to: ping"
    assert out["stopReason"] == "end_turn" and out["usage"]["totalTokens"] > 0

    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "pong"}]})
    inv = client.invoke_model(modelId=MODEL, body=body, contentType="application/json", accept="application/json")
    assert inv["contentType"] == "application/json"
    assert json.loads(inv["body"].read())["content"][0]["text"] == f"fake reply from {MODEL} to: pong"

    recs = bedrock_requests(fake, test_id="t-conv")
    assert [r["route"] for r in recs] == ["converse", "invoke"]
    for r in recs:
        assert r["verified"] and r["status"] == 200 and r["auth"] == f"sigv4:{sts_creds['AccessKeyId']}"
        assert r["model_id"] == MODEL
        assert r["raw_path"].startswith("/model/anthropic.claude-3-haiku-20240307-v1%3A0/")
        assert r["headers_present"]["x-llamastack-provider-data"] and r["headers_present"]["x-amz-security-token"]
        assert r["security_token_signed"] is True
        assert "host" in r["signed_headers"] and "x-amz-date" in r["signed_headers"]
        assert r["user_agent"] and "botocore" in r["user_agent"].lower()
    assert recs[1]["body_sha256"] and json.loads(recs[1]["body"])["messages"][0]["content"] == "pong"


def test_boto3_converse_stream(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-chunks": "4"})
    events = list(client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "s"}]}])["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["messageStart"] + ["contentBlockDelta"] * 4 + ["contentBlockStop", "messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text.startswith(f"fake reply from {MODEL} to: s") and text.endswith("<chunk 4/4>")
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["totalTokens"] > 0
    stream_id = bedrock_requests(fake)[-1]["stream_id"]
    status = control(fake, "GET", f"/stream/{stream_id}")
    assert status["chunks_sent"] == 4 and status["finished"] and not status["client_disconnected"]


def test_boto3_converse_stream_zero_chunks(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-chunks": "0"})
    events = list(client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "s"}]}])["stream"])
    assert [next(iter(e)) for e in events] == ["messageStart", "contentBlockStop", "messageStop", "metadata"]


def test_boto3_invoke_with_response_stream(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-chunks": "3"})
    body = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "yo"}]}]})
    resp = client.invoke_model_with_response_stream(modelId=MODEL, body=body)
    chunks = [json.loads(e["chunk"]["bytes"]) for e in resp["body"]]
    types = [c["type"] for c in chunks]
    assert types == ["message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    text = "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
    assert text.startswith(f"fake reply from {MODEL} to: yo") and "<chunk 3/3>" in text


def test_inference_profile_arn_is_percent_encoded_in_path(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds)
    out = client.converse(modelId=PROFILE_ARN, messages=[{"role": "user", "content": [{"text": "arn"}]}])
    assert PROFILE_ARN in out["output"]["message"]["content"][0]["text"]
    rec = bedrock_requests(fake)[-1]
    assert rec["raw_path"] == "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert rec["model_id"] == PROFILE_ARN and rec["verified"]
    # botocore double-encodes '%' in the canonical URI (non-S3 SigV4 rule).
    assert "%253Aaws%253Abedrock" in rec["canonical_request"].split("\n")[1]


def test_raw_colon_in_path_is_accepted(fake: Fake, sts_creds: dict):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = converse_body()
    resp = send(url, body, sign(url, body, sts_creds))
    assert resp.status == 200, resp.data
    rec = bedrock_requests(fake)[-1]
    assert rec["raw_path"] == f"/model/{MODEL}/converse" and rec["model_id"] == MODEL
    assert rec["canonical_request"].split("\n")[1] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"


def test_unencoded_arn_slash_is_not_a_route(fake: Fake, sts_creds: dict):
    url = f"{fake.bedrock}/model/{PROFILE_ARN}/converse"
    body = converse_body()
    resp = send(url, body, sign(url, body, sts_creds))
    assert resp.status == 404
    assert resp.headers["x-amzn-ErrorType"] == "UnknownOperationException"


def test_query_string_is_signed(fake: Fake, static_creds: dict):
    url = f"{fake.bedrock}/openai/v1/models?b=2&a=1"
    resp = send(url, b"", sign(url, b"", static_creds, method="GET"), method="GET")
    assert resp.status == 200, resp.data
    assert json.loads(resp.data)["object"] == "list"
    rec = bedrock_requests(fake)[-1]
    assert rec["query"] == "b=2&a=1" and rec["auth"] == f"sigv4:{static_creds['AccessKeyId']}"


def test_unsigned_security_token_is_accepted_and_recorded(fake: Fake, sts_creds: dict):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = converse_body()
    headers = sign(url, body, {**sts_creds, "SessionToken": None})
    headers["X-Amz-Security-Token"] = sts_creds["SessionToken"]
    assert send(url, body, headers).status == 200
    assert bedrock_requests(fake)[-1]["security_token_signed"] is False


def test_static_key_with_session_token(fake: Fake):
    creds = {"AccessKeyId": "AKIASTATICWITHTOKEN1", "SecretAccessKey": "s" * 40, "SessionToken": "static-token"}
    control(fake, "POST", "/static_keys", {"access_key_id": creds["AccessKeyId"], "secret_access_key": creds["SecretAccessKey"],
                                           "session_token": creds["SessionToken"]})
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    assert send(url, converse_body(), sign(url, converse_body(), creds)).status == 200
    assert send(url, converse_body(), sign(url, converse_body(), {**creds, "SessionToken": None})).status == 403


# --------------------------------------------------------------------------
# Fake Bedrock: rejections
# --------------------------------------------------------------------------

def _tamper_cases():
    """(name, builder(url, body, creds) -> (body, headers), error type, rejection substring)."""

    def body_changed(url, body, creds):
        return body + b" ", sign(url, body, creds)

    def signed_header_changed(url, body, creds):
        headers = sign(url, body, creds, headers={"x-test-id": "a"})
        headers["x-test-id"] = "b"
        return body, headers

    def wrong_secret(url, body, creds):
        return body, sign(url, body, {**creds, "SecretAccessKey": "x" * 40})

    def unknown_key(url, body, creds):
        return body, sign(url, body, {**creds, "AccessKeyId": "ASIAUNKNOWN000000000"})

    def missing_token(url, body, creds):
        headers = sign(url, body, creds)
        del headers["X-Amz-Security-Token"]
        return body, headers

    def wrong_token(url, body, creds):
        return body, sign(url, body, {**creds, "SessionToken": "forged"})

    def wrong_region(url, body, creds):
        return body, sign(url, body, creds, region="eu-west-1")

    def wrong_service(url, body, creds):
        return body, sign(url, body, creds, service="bedrock-runtime")

    def stale_date(url, body, creds):
        old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=6)
        return body, sign(url, body, creds, when=old)

    def content_sha_lie(url, body, creds):
        return body, sign(url, body, creds, headers={"X-Amz-Content-SHA256": "0" * 64})

    def user_agent_signed(url, body, creds):
        headers = sign(url, body, creds)
        headers["Authorization"] = headers["Authorization"].replace(
            "SignedHeaders=content-type;host;", "SignedHeaders=content-type;host;user-agent;")
        headers["User-Agent"] = "ua"
        return body, headers

    def host_not_signed(url, body, creds):
        headers = sign(url, body, creds)
        headers["Authorization"] = headers["Authorization"].replace(";host;", ";")
        return body, headers

    return [
        ("body_changed", body_changed, "InvalidSignatureException", "signature mismatch"),
        ("signed_header_changed", signed_header_changed, "InvalidSignatureException", "signature mismatch"),
        ("wrong_secret", wrong_secret, "InvalidSignatureException", "signature mismatch"),
        ("unknown_key", unknown_key, "UnrecognizedClientException", "unknown access key"),
        ("missing_token", missing_token, "UnrecognizedClientException", "missing"),
        ("wrong_token", wrong_token, "UnrecognizedClientException", "does not match"),
        ("wrong_region", wrong_region, "InvalidSignatureException", "region"),
        ("wrong_service", wrong_service, "InvalidSignatureException", "service"),
        ("stale_date", stale_date, "InvalidSignatureException", "Signature expired"),
        ("content_sha_lie", content_sha_lie, "InvalidSignatureException", "X-Amz-Content-SHA256"),
        ("user_agent_signed", user_agent_signed, "InvalidSignatureException", "user-agent"),
        ("host_not_signed", host_not_signed, "InvalidSignatureException", "'host'"),
    ]


@pytest.mark.parametrize("name, build, error_type, reason", _tamper_cases(), ids=[c[0] for c in _tamper_cases()])
def test_tampered_sigv4_rejected(fake: Fake, sts_creds: dict, name: str, build: Callable, error_type: str, reason: str):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body, headers = build(url, converse_body(), sts_creds)
    resp = send(url, body, headers)
    assert resp.status == 403, resp.data
    assert resp.headers["x-amzn-ErrorType"] == error_type
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "message" in json.loads(resp.data)
    rec = bedrock_requests(fake)[-1]
    assert rec["auth_kind"] == "sigv4" and rec["verified"] is False and rec["status"] == 403
    assert reason in rec["rejection"], rec["rejection"]
    if error_type == "InvalidSignatureException" and "mismatch" in reason:
        assert json.loads(resp.data)["message"].startswith("The request signature we calculated does not match")
        assert "canonical request" in fake.stderr()


def test_expired_sts_credentials_rejected_after_lifetime(fake: Fake):
    control(fake, "POST", "/sts", {"lifetime_seconds": 1.0})
    creds = assume(fake)["Credentials"]
    url = f"{fake.bedrock}/model/{MODEL}/converse"

    def status() -> int:
        return send(url, converse_body(), sign(url, converse_body(), creds)).status

    assert status() == 200
    wait_until(lambda: status() == 403, timeout=10, interval=0.2, what="credentials to expire")
    rec = bedrock_requests(fake)[-1]
    assert rec["error_type"] == "ExpiredTokenException" and rec["rejection"].startswith("expired")


def test_missing_or_foreign_auth(fake: Fake):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        resp = send(url, converse_body(), headers)
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert json.loads(resp.data) == {"message": "Missing Authentication Token"}
    assert [r["auth_kind"] for r in bedrock_requests(fake)] == ["none", "none"]


def test_auth_checked_before_routing(fake: Fake):
    resp = send(f"{fake.bedrock}/no/such/path", b"", {}, method="GET")
    assert resp.status == 403
    resp = send(f"{fake.bedrock}/no/such/path", b"", {"Authorization": "Bearer ABSK-x"}, method="GET")
    assert resp.status == 404 and json.loads(resp.data) == {"message": "UnknownOperationException"}


def test_signing_name_configurable(fake: Fake, static_creds: dict):
    control(fake, "POST", "/bedrock", {"signing_name": "bedrock-runtime"})
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    assert send(url, converse_body(), sign(url, converse_body(), static_creds)).status == 403
    assert send(url, converse_body(), sign(url, converse_body(), static_creds, service="bedrock-runtime")).status == 200


# --------------------------------------------------------------------------
# Bearer tokens and the OpenAI-compatible API
# --------------------------------------------------------------------------


def test_bearer_tokens_default_and_configured(fake: Fake):
    url = f"{fake.bedrock}/model/{MODEL}/converse"

    def call(token: str) -> urllib3.BaseHTTPResponse:
        return send(url, converse_body(), {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

    assert call("bedrock-api-key-abc").status == 200
    assert call("ABSKxyz").status == 200
    bad = call("sk-nope")
    assert bad.status == 403 and json.loads(bad.data) == {"message": "Invalid API key"}
    assert bad.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    control(fake, "POST", "/bearer_tokens", {"tokens": ["only-this"]})
    assert call("only-this").status == 200
    assert call("ABSKxyz").status == 403
    recs = bedrock_requests(fake)
    assert [r["auth"] for r in recs] == ["bearer:bedrock-api-key-abc", "bearer:ABSKxyz", "bearer:sk-nope", "bearer:only-this", "bearer:ABSKxyz"]
    assert [r["verified"] for r in recs] == [True, True, False, True, False]


def test_botocore_bearer_token_env(tls_fake: Fake, monkeypatch: pytest.MonkeyPatch):
    # botocore only sends bearer tokens over HTTPS, hence the TLS fake.
    control(tls_fake, "POST", "/reset", {})
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-from-env")
    client = boto3.client("bedrock-runtime", endpoint_url=tls_fake.bedrock, region_name=REGION, config=NO_RETRY,
                          verify=tls_fake.ca_path)
    out = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "env"}]}])
    assert out["output"]["message"]["content"][0]["text"].endswith("to: env")
    assert bedrock_requests(tls_fake)[-1]["auth"] == "bearer:bedrock-api-key-from-env"


def test_openai_sdk(fake: Fake):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{fake.bedrock}/openai/v1", api_key="bedrock-api-key-oai", max_retries=0,
                           default_headers={"x-test-id": "oai"})
    out = client.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hey"}])
    assert out.choices[0].message.content == "fake reply from openai.gpt-oss-20b-1:0 to: hey"
    assert out.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "yo"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-fake-chunks": "3"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("fake reply from m1 to: yo") and text.endswith("<chunk 3/3>")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    models = client.models.list()
    assert "openai.gpt-oss-20b-1:0" in [m.id for m in models.data]

    bad = openai.OpenAI(base_url=f"{fake.bedrock}/openai/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        bad.models.list()
    recs = bedrock_requests(fake, test_id="oai")
    assert [r["route"] for r in recs] == ["openai-chat", "openai-chat", "openai-models"]
    assert all(r["auth"] == "bearer:bedrock-api-key-oai" for r in recs)


def test_openai_sse_wire_format(fake: Fake):
    resp = send(f"{fake.bedrock}/openai/v1/chat/completions",
                json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode(),
                {"Authorization": "Bearer ABSK1", "x-fake-chunks": "2"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    frames = resp.data.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert json.loads(frames[0][6:])["object"] == "chat.completion.chunk"


# --------------------------------------------------------------------------
# Error injection
# --------------------------------------------------------------------------


@pytest.mark.parametrize("status, error_type", [(429, "ThrottlingException"), (400, "ValidationException"),
                                                (500, "InternalServerException"), (503, "ServiceUnavailableException")])
def test_fake_status_passthrough(fake: Fake, sts_creds: dict, status: int, error_type: str):
    client = runtime_client(fake, sts_creds, {"x-fake-status": str(status)})
    with pytest.raises(ClientError) as exc:
        client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "e"}]}])
    assert exc.value.response["Error"]["Code"] == error_type
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_bad_fake_header_is_a_400(fake: Fake):
    resp = send(f"{fake.bedrock}/model/{MODEL}/converse-stream", converse_body(),
                {"Authorization": "Bearer ABSK1", "x-fake-chunks": "many"})
    assert resp.status == 400 and b"x-fake-chunks" in resp.data


def test_double_slash_path_verifies_but_does_not_route(fake: Fake, static_creds: dict):
    # botocore (both when signing and in the fake) collapses '//' in the canonical URI,
    # so the signature verifies; routing is on the raw path, so it is not a model route.
    url = f"{fake.bedrock}//model/{MODEL}/converse"
    resp = send(url, converse_body(), sign(url, converse_body(), static_creds))
    assert resp.status == 404
    rec = bedrock_requests(fake)[-1]
    assert rec["verified"] and rec["raw_path"].startswith("//model/")
    assert rec["canonical_request"].split("\n")[1].startswith("/model/")


def test_malformed_json_body(fake: Fake):
    resp = send(f"{fake.bedrock}/model/{MODEL}/converse", b"{not json", {"Authorization": "Bearer ABSK1"})
    assert resp.status == 400 and resp.headers["x-amzn-ErrorType"] == "ValidationException"


def test_control_rejects_unknown_keys(fake: Fake):
    assert control_status(fake, "POST", "/sts", {"lifetime": 3}) == 400
    assert control_status(fake, "POST", "/sts", {"fail_code": "Nope"}) == 400
    assert control_status(fake, "POST", "/bedrock", {"signing": "x"}) == 400
    assert control_status(fake, "POST", "/stream/release", {}) == 400
    assert HTTP.request("GET", fake.control + "/stream/nope").status == 404


def test_reset_restores_defaults(fake: Fake, static_creds: dict):
    control(fake, "POST", "/sts", {"fail_always": True, "lifetime_seconds": 5})
    control(fake, "POST", "/bearer_tokens", {"tokens": ["x"]})
    control(fake, "POST", "/reset", {})
    cfg = control(fake, "GET", "/sts")
    assert cfg["fail_always"] is False and cfg["lifetime_seconds"] is None
    assert control(fake, "GET", "/sts/calls") == [] and bedrock_requests(fake) == []
    assert send(f"{fake.bedrock}/openai/v1/models", b"", {"Authorization": "Bearer ABSK1"}, method="GET").status == 200
    keys = [c["access_key_id"] for c in control(fake, "GET", "/credentials")]
    assert static_creds["AccessKeyId"] not in keys


# --------------------------------------------------------------------------
# Fake IMDSv2 and container credentials (on the STS port)
# --------------------------------------------------------------------------


NODE_ROLE_ARN = "arn:aws:sts::123456789012:assumed-role/node-role/i-0123456789abcdef0"
POD_ROLE_ARN = "arn:aws:sts::123456789012:assumed-role/pod-identity-role/eks-pod"
AWS_ENV_TO_CLEAR = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_EC2_METADATA_V1_DISABLED", "AWS_BEARER_TOKEN_BEDROCK",
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
)


def imds_url(fake: Fake) -> str:
    """The value for AWS_EC2_METADATA_SERVICE_ENDPOINT (a path prefix on the STS port)."""
    return fake.sts + "/imds/"


def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the environment or from files, so the SDK chain reaches IMDS / container."""
    for name in AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def imds_token(fake: Fake, ttl: str = "21600") -> str:
    resp = HTTP.request("PUT", imds_url(fake) + "latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert resp.status == 200 and resp.headers["X-aws-ec2-metadata-token-ttl-seconds"] == ttl
    return resp.data.decode()


def imds_get(fake: Fake, path: str, token: Optional[str]) -> urllib3.BaseHTTPResponse:
    headers = {} if token is None else {"X-aws-ec2-metadata-token": token}
    return HTTP.request("GET", imds_url(fake) + path, headers=headers)


def converse_as(fake: Fake, creds: dict, test_id: str) -> dict:
    """Converse signed (botocore SigV4) with ``creds``; returns the fake's record of it."""
    out = runtime_client(fake, creds, {"x-test-id": test_id}).converse(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "from " + test_id}]}]
    )
    assert out["output"]["message"]["content"][0]["text"].endswith("to: from " + test_id)
    (rec,) = bedrock_requests(fake, test_id=test_id)
    return rec


def test_imds_with_botocore_fetcher_then_bedrock(fake: Fake):
    from botocore.utils import InstanceMetadataRegionFetcher, InstanceMetadataFetcher

    before = time.time()
    got = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=imds_url(fake)).retrieve_iam_role_credentials()
    assert got["role_name"] == "node-role" and got["access_key"].startswith("ASIA")
    expiry = calendar_epoch(got["expiry_time"])
    assert before + 3600 - 2 <= expiry <= time.time() + 3600
    creds = {"AccessKeyId": got["access_key"], "SecretAccessKey": got["secret_key"], "SessionToken": got["token"]}
    rec = converse_as(fake, creds, "imds-fetcher")
    assert rec["verified"] and rec["principal_arn"] == NODE_ROLE_ARN

    calls = control(fake, "GET", "/imds/calls")
    assert [(c["method"], c["path"], c["status"]) for c in calls] == [
        ("PUT", "/latest/api/token", 200),
        ("GET", "/latest/meta-data/iam/security-credentials/", 200),
        ("GET", "/latest/meta-data/iam/security-credentials/node-role", 200),
    ]
    assert calls[0]["token_ttl_seconds"] == "21600" and calls[0]["raw_path"] == "/imds/latest/api/token"
    assert all(c["token_sent"] and c["token_valid"] for c in calls[1:])
    assert calls[2]["access_key_id"] == got["access_key"] and calls[2]["principal_arn"] == NODE_ROLE_ARN
    assert calls[2]["user_agent"]  # recorded (the bare fetcher sends urllib3's)
    (listed,) = [c for c in control(fake, "GET", "/credentials") if c["access_key_id"] == got["access_key"]]
    assert listed["role_arn"] == "arn:aws:iam::123456789012:role/node-role" and listed["kind"] == "sts"

    # botocore's IMDS region lookup (placement/availability-zone/) and the region path the Rust SDK uses.
    assert InstanceMetadataRegionFetcher(timeout=5, num_attempts=1, base_url=imds_url(fake)).retrieve_region() == REGION
    assert imds_get(fake, "latest/meta-data/placement/region", imds_token(fake)).data.decode() == REGION


def calendar_epoch(iso: str) -> float:
    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def test_imds_credentials_json_shape(fake: Fake):
    control(fake, "POST", "/sts", {"lifetime_seconds": 120})
    token = imds_token(fake)
    listing = imds_get(fake, "latest/meta-data/iam/security-credentials/", token)
    assert listing.status == 200 and listing.data == b"node-role"
    resp = imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token)
    body = json.loads(resp.data)
    assert list(body) == ["Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"]
    assert body["Code"] == "Success" and body["Type"] == "AWS-HMAC"
    assert abs(calendar_epoch(body["LastUpdated"]) - time.time()) < 5
    assert 115 <= calendar_epoch(body["Expiration"]) - time.time() <= 120  # lifetime_seconds, rounded down
    again = json.loads(imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token).data)
    assert again["AccessKeyId"] != body["AccessKeyId"], "every credentials GET issues a fresh credential"
    assert imds_get(fake, "latest/meta-data/iam/security-credentials/other-role", token).status == 404
    assert imds_get(fake, "latest/meta-data/instance-id", token).data == b"i-0123456789abcdef0"
    assert imds_get(fake, "latest/meta-data/nothing-here", token).status == 404


def test_imds_with_boto3_session_from_env(fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolated_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url(fake))
    session = boto3.Session(region_name=REGION)
    resolved = session.get_credentials()
    assert resolved is not None and resolved.method == "iam-role"
    frozen = resolved.get_frozen_credentials()
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    rec = converse_as(fake, creds, "imds-env")
    assert rec["verified"] and rec["principal_arn"] == NODE_ROLE_ARN and rec["security_token_signed"] is True
    assert [c["path"] for c in control(fake, "GET", "/imds/calls")][0] == "/latest/api/token"


def test_imds_token_rules(fake: Fake):
    creds_path = "latest/meta-data/iam/security-credentials/node-role"
    assert imds_get(fake, creds_path, None).status == 401
    assert imds_get(fake, creds_path, "AQAEAnot-a-token").status == 401
    url = imds_url(fake) + "latest/api/token"
    assert HTTP.request("PUT", url).status == 400
    for bad in ("0", "21601", "abc"):
        assert HTTP.request("PUT", url, headers={"X-aws-ec2-metadata-token-ttl-seconds": bad}).status == 400
    forwarded = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"}
    assert HTTP.request("PUT", url, headers=forwarded).status == 403
    assert HTTP.request("GET", url).status == 405
    short = imds_token(fake, ttl="1")
    assert imds_get(fake, creds_path, short).status == 200
    wait_until(lambda: imds_get(fake, "latest/meta-data/placement/region", short).status == 401, timeout=5,
               interval=0.2, what="IMDS token to expire")
    calls = control(fake, "GET", "/imds/calls")
    assert [c["status"] for c in calls[:2]] == [401, 401]
    assert calls[0]["token_sent"] is False and calls[0]["error"] == "missing token"
    assert calls[1]["token_sent"] is True and calls[1]["token_valid"] is False
    assert calls[-1]["status"] == 401 and calls[-1]["token_valid"] is False


def test_imds_controls(fake: Fake):
    from botocore.utils import InstanceMetadataFetcher

    def fetch(attempts: int = 1) -> dict:
        return InstanceMetadataFetcher(timeout=5, num_attempts=attempts, base_url=imds_url(fake)).retrieve_iam_role_credentials()

    assert control(fake, "GET", "/imds") == {"role_name": "node-role", "fail_next": 0, "fail_status": 500, "disabled": False}
    control(fake, "POST", "/imds", {"role_name": "worker-role"})
    got = fetch()
    assert got["role_name"] == "worker-role"
    creds = {"AccessKeyId": got["access_key"], "SecretAccessKey": got["secret_key"], "SessionToken": got["token"]}
    assert converse_as(fake, creds, "imds-worker")["principal_arn"] == (
        "arn:aws:sts::123456789012:assumed-role/worker-role/i-0123456789abcdef0"
    )
    token = imds_token(fake)
    assert imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token).status == 404

    control(fake, "POST", "/imds", {"role_name": None})  # no instance profile attached
    assert imds_get(fake, "latest/meta-data/iam/security-credentials/", token).status == 404
    assert fetch() == {}

    control(fake, "POST", "/reset", {})  # back to node-role, and a clean call record
    control(fake, "POST", "/imds", {"fail_next": 1, "fail_status": 503})
    assert fetch(attempts=2)["role_name"] == "node-role"  # botocore retries the failed GET
    assert [(c["method"], c["status"]) for c in control(fake, "GET", "/imds/calls")] == [
        ("PUT", 200), ("GET", 503), ("GET", 200), ("GET", 200)]  # token PUTs are never failed
    assert control(fake, "GET", "/imds")["fail_next"] == 0

    control(fake, "POST", "/imds", {"disabled": True})
    assert HTTP.request("PUT", imds_url(fake) + "latest/api/token",
                        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}).status == 403
    assert imds_get(fake, "latest/meta-data/placement/region", token).status == 403
    assert fetch() == {}
    control(fake, "POST", "/imds", {"disabled": False})
    assert fetch()["role_name"] == "node-role"

    for bad in ({"role": "x"}, {"role_name": ""}, {"role_name": "a/b"}, {"fail_next": -1}, {"fail_next": "1"},
                {"fail_status": 200}, {"disabled": "yes"}):
        assert control_status(fake, "POST", "/imds", bad) == 400, bad


def test_container_provider_then_bedrock(fake: Fake):
    from botocore.credentials import ContainerProvider

    url = fake.sts + "/ecs/v1/credentials"
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ecs-test-token"}
    resolved = ContainerProvider(environ=env).load()
    assert resolved.method == "container-role"
    frozen = resolved.get_frozen_credentials()
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    rec = converse_as(fake, creds, "ecs-provider")
    assert rec["verified"] and rec["principal_arn"] == POD_ROLE_ARN

    (call,) = control(fake, "GET", "/ecs/calls")
    assert call["raw_path"] == "/ecs/v1/credentials" and call["status"] == 200
    assert call["authorization_sent"] and call["authorized"] and call["access_key_id"] == frozen.access_key
    assert call["principal_arn"] == POD_ROLE_ARN

    resp = HTTP.request("GET", url, headers={"Authorization": "ecs-test-token"})
    body = json.loads(resp.data)
    assert list(body) == ["AccessKeyId", "SecretAccessKey", "Token", "Expiration", "RoleArn"]
    assert body["RoleArn"] == "arn:aws:iam::123456789012:role/pod-identity-role"
    assert body["AccessKeyId"] != frozen.access_key
    assert 3595 <= calendar_epoch(body["Expiration"]) - time.time() <= 3600


def test_container_credentials_from_env_session(fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolated_aws_env(monkeypatch, tmp_path)
    control(fake, "POST", "/ecs", {"token": "pod-identity-token"})
    token_file = tmp_path / "token"
    token_file.write_text("pod-identity-token")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", fake.sts + "/ecs/v1/credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))  # as EKS Pod Identity sets it
    resolved = boto3.Session(region_name=REGION).get_credentials()
    assert resolved is not None and resolved.method == "container-role"
    frozen = resolved.get_frozen_credentials()
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    assert converse_as(fake, creds, "ecs-env")["principal_arn"] == POD_ROLE_ARN


def test_container_credentials_auth_and_controls(fake: Fake):
    from botocore.credentials import ContainerProvider
    from botocore.exceptions import CredentialRetrievalError
    from botocore.utils import ContainerMetadataFetcher

    url = fake.sts + "/ecs/v1/credentials"
    assert HTTP.request("GET", url).status == 401
    assert HTTP.request("GET", url, headers={"Authorization": "wrong"}).status == 401
    no_sleep = ContainerMetadataFetcher(sleep=lambda _: None)
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong"}
    with pytest.raises(CredentialRetrievalError):
        ContainerProvider(environ=env, fetcher=no_sleep).load()
    calls = control(fake, "GET", "/ecs/calls")
    assert [c["status"] for c in calls] == [401] * 5 and not any(c["authorized"] for c in calls)
    assert calls[0]["authorization_sent"] is False and calls[0]["error"] == "missing Authorization"
    assert calls[1]["error"] == "wrong Authorization" and calls[1]["access_key_id"] is None

    control(fake, "POST", "/ecs", {"token": "rotated", "fail_next": 1,
                                   "role_arn": "arn:aws:iam::210987654321:role/team-role"})
    assert HTTP.request("GET", url, headers={"Authorization": "ecs-test-token"}).status == 401
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "rotated"
    frozen = ContainerProvider(environ=env, fetcher=no_sleep).load().get_frozen_credentials()  # 500, then retried
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    assert converse_as(fake, creds, "ecs-team")["principal_arn"] == "arn:aws:sts::210987654321:assumed-role/team-role/eks-pod"
    assert [c["status"] for c in control(fake, "GET", "/ecs/calls")][-3:] == [401, 500, 200]

    control(fake, "POST", "/ecs", {"token": None})  # no Authorization required (like the ECS relative URI)
    assert HTTP.request("GET", fake.sts + "/ecs/anything", headers={}).status == 200
    assert HTTP.request("POST", url, headers={"Authorization": "rotated"}).status == 405
    for bad in ({"tok": "x"}, {"token": 5}, {"role_arn": "arn:aws:iam::1:role/x"}, {"fail_next": -2}):
        assert control_status(fake, "POST", "/ecs", bad) == 400, bad


def test_reset_restores_imds_and_ecs(fake: Fake):
    token = imds_token(fake)
    control(fake, "POST", "/imds", {"role_name": "other", "fail_next": 3, "disabled": True})
    control(fake, "POST", "/ecs", {"token": "t2", "fail_next": 2})
    HTTP.request("GET", fake.sts + "/ecs/v1/credentials")
    control(fake, "POST", "/reset", {})
    assert control(fake, "GET", "/imds") == {"role_name": "node-role", "fail_next": 0, "fail_status": 500, "disabled": False}
    assert control(fake, "GET", "/ecs") == {"token": "ecs-test-token", "role_arn": "arn:aws:iam::123456789012:role/pod-identity-role",
                                            "fail_next": 0, "fail_status": 500}
    assert control(fake, "GET", "/imds/calls") == [] and control(fake, "GET", "/ecs/calls") == []
    assert imds_get(fake, "latest/meta-data/placement/region", token).status == 200, "tokens survive a reset"


def test_imds_and_ecs_do_not_disturb_sts(fake: Fake):
    assert assume(fake)["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert HTTP.request("GET", fake.sts + "/imds").status == 404  # the prefix needs its slash: /imds/...
    assert raw_sts(fake, {"Action": "Nope", "Version": "2011-06-15"}).status == 400


# --------------------------------------------------------------------------
# Streaming: real flushing, lockstep, disconnects
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Concurrency, keep-alive, TLS
# --------------------------------------------------------------------------


def test_many_concurrent_requests_with_mixed_auth(fake: Fake, sts_creds: dict, static_creds: dict):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = converse_body("concurrent")
    kinds = ["sts", "static", "bearer", "bad-bearer", "bad-sig", "stream"] * 10

    def headers_for(kind: str, i: int) -> dict:
        h = {"x-test-id": f"conc-{i}"}
        if kind == "sts":
            return sign(url, body, sts_creds, headers=h)
        if kind == "static":
            return sign(url, body, static_creds, headers=h)
        if kind == "bad-sig":
            return sign(url, body, {**static_creds, "SecretAccessKey": "z" * 40}, headers=h)
        token = "ABSK-ok" if kind in ("bearer", "stream") else "nope"
        return {**h, "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                **({"x-fake-chunks": "3", "x-fake-chunk-delay-ms": "20"} if kind == "stream" else {})}

    prepared = [(kind, headers_for(kind, i)) for i, kind in enumerate(kinds)]

    async def one(session: aiohttp.ClientSession, kind: str, headers: dict) -> tuple:
        target = url.replace("/converse", "/converse-stream") if kind == "stream" else url
        # Host is signed as 127.0.0.1:PORT, which is what aiohttp sends.
        async with session.post(target, data=body, headers=headers) as r:
            await r.read()
            return kind, r.status

    async def run() -> list:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=12)) as session:
            return await asyncio.gather(*(one(session, k, h) for k, h in prepared))

    results = asyncio.run(run())
    expected = {"sts": 200, "static": 200, "bearer": 200, "stream": 200, "bad-bearer": 403, "bad-sig": 403}
    assert all(status == expected[kind] for kind, status in results), results
    recs = bedrock_requests(fake)
    assert len(recs) == len(kinds)
    by_id = {r["x_test_id"]: r for r in recs}
    for i, kind in enumerate(kinds):
        assert by_id[f"conc-{i}"]["verified"] == (expected[kind] == 200)
    assert len({r["peer_port"] for r in recs}) <= 12, "connections are kept alive and reused"


def test_tls_bedrock(tls_fake: Fake):
    assert tls_fake.bedrock.startswith("https://127.0.0.1:") and tls_fake.sts.startswith("http://")
    control(tls_fake, "POST", "/reset", {})
    creds = assume(tls_fake)["Credentials"]
    client = runtime_client(tls_fake, creds, {"x-fake-chunks": "2"})
    out = client.converse(modelId=PROFILE_ARN, messages=[{"role": "user", "content": [{"text": "tls"}]}])
    assert out["output"]["message"]["content"][0]["text"].endswith("to: tls")
    events = list(client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "t"}]}])["stream"])
    assert sum("contentBlockDelta" in e for e in events) == 2
    url = f"{tls_fake.bedrock}/model/{MODEL}/converse"
    assert send(url, converse_body(), sign(url, converse_body(), creds), ca=tls_fake.ca_path).status == 200
    assert all(r["verified"] for r in bedrock_requests(tls_fake))


def test_event_payload_base64_roundtrip():
    """The invoke-stream chunk framing is exactly {"bytes": base64(json)}."""
    inner = {"type": "content_block_delta", "delta": {"text": "x"}}
    raw = eventstream.event("chunk", json.dumps({"bytes": base64.b64encode(json.dumps(inner).encode()).decode()}).encode())
    (headers, payload), = decode_events(raw)
    assert headers[":event-type"] == "chunk"
    assert json.loads(base64.b64decode(json.loads(payload)["bytes"])) == inner


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting reaping counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_exit_with_parent(tmp_path: Path):
    ready = tmp_path / "ready.json"
    # The launcher waits until the fake is ready (so the fake has recorded its parent), then exits.
    launcher = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, {str(FAKE)!r}, '--exit-with-parent', '--ready-file', {str(ready)!r},"
        f" '--log-file', {str(tmp_path / 'log')!r}], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({str(ready)!r}) and time.monotonic() < deadline and p.poll() is None:\n"
        "    time.sleep(0.02)\n"
        "print(p.pid)\n"
    )
    out = subprocess.run([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, check=True, timeout=30)
    pid = int(out.stdout)
    try:
        assert ready.exists()
        wait_until(lambda: _process_gone(pid), timeout=10, what="orphaned fake to exit")
        assert "parent" in (tmp_path / "log").read_text()
    finally:
        if not _process_gone(pid):
            os.kill(pid, 9)


# --------------------------------------------------------------------------
# InvokeModelWithBidirectionalStream over HTTP/2 (--h2-port)
# --------------------------------------------------------------------------

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


def test_h2_port_serves_only_the_bidi_route(fake: Fake, sts_creds: dict):
    async def run() -> tuple:
        client = await H2Client.connect(fake.bedrock_h2)
        try:
            headers, _ = bidi_headers(fake.bedrock_h2, sts_creds, test_id="h2-404", path=f"/model/{MODEL}/converse")
            call = await client.start(headers, end_stream=True)
            return await call.response_status(), call.headers, await call.body()
        finally:
            await client.close()

    status, headers, body = asyncio.run(run())
    assert status == 404 and headers["x-amzn-errortype"] == "UnknownOperationException"
    assert "invoke-with-bidirectional-stream" in json.loads(body)["message"]
    assert bidi_record(fake, "h2-404")["status"] == 404


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
