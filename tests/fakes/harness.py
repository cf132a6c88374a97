"""Helpers shared by the tests of the fakes: fake_aws as a real process, and small clients for it.

Real AWS clients (boto3/botocore, the openai SDK) talk to the fake over
loopback, so the fake's wire formats and its SigV4 verification are checked
against the reference implementations.  Waiting is always polling with a
deadline.

The fixtures are in conftest.py; the helpers the test modules import are
here, since pytest advises against importing from a conftest.py.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from unittest import mock

import boto3
import botocore.auth
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer


HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_aws"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-broker"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


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
