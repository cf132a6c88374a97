#!/usr/bin/env python3
"""Fake AWS STS + Amazon Bedrock for bedrock-broker's end-to-end tests.

One process serves two (or three) loopback ports that share in-memory state:

* a fake **STS** (plain HTTP): ``AssumeRoleWithWebIdentity`` (unsigned),
  ``AssumeRole`` (role chaining) and ``GetCallerIdentity`` (both SigV4,
  service ``sts``), plus the JSON control API under ``/_control``;
* a fake **Bedrock** runtime (HTTP, or HTTPS with ``--tls-cert/--tls-key``):
  ``converse``, ``converse-stream``, ``invoke``, ``invoke-with-response-stream``
  and the OpenAI-compatible ``/openai/v1`` routes;
* with ``--h2-port``, a fake Bedrock **HTTP/2** listener (TLS with ALPN ``h2``
  when a certificate is given, else cleartext h2c with prior knowledge) that
  serves only ``InvokeModelWithBidirectionalStream``, full duplex: each input
  frame's chained event-stream signature is verified as it arrives and
  answered at once with an echo event.

The STS port also serves a fake EC2 instance metadata service (IMDSv2) under
``/imds/`` (point ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` at
``http://127.0.0.1:P1/imds/``) and a fake container-credentials endpoint
(ECS / EKS Pod Identity agent) under ``/ecs/`` (for example
``AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:P1/ecs/v1/credentials``).
Both hand out credentials minted like STS ones, so fake Bedrock accepts them.

Every Bedrock request is authenticated first (the HTTP/2 listener only
routes before that, answering 404 for anything but its one route).  SigV4
signatures are verified
independently with botocore (``SigV4Auth.canonical_request`` /
``string_to_sign`` / ``signature``) over the *raw* request path, query,
the headers named in ``SignedHeaders`` and the raw body, so that the broker's
Rust signer is checked by a different implementation.  The bidirectional
stream's initial request goes through the same check (with the signed payload
hash ``STREAMING-AWS4-HMAC-SHA256-EVENTS``); its frame signatures are checked
by ``EventStreamVerifier`` here, written with hashlib/hmac.

Usage::

    python tests/fakes/fake_aws.py --sts-port 0 --bedrock-port 0 [--h2-port 0] \\
        [--tls-cert F --tls-key F] [--region us-east-1] [--ready-file PATH]

When every port listens, one JSON line is printed to stdout (and written to
``--ready-file``)::

    {"sts": "http://127.0.0.1:P1", "bedrock": "http://127.0.0.1:P2",
     "control": "http://127.0.0.1:P1/_control",
     "bedrock_h2": "https://127.0.0.1:P3"}

``bedrock_h2`` is present only with ``--h2-port`` (``http://`` for h2c).

See ``tests/fakes/README.md`` for the control API.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import socket
import ssl
import string
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape as xml_escape

# Recorded before the slow third-party imports, for --exit-with-parent.
STARTING_PARENT_PID = os.getppid()

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
from aiohttp import web  # noqa: E402
from multidict import CIMultiDict  # noqa: E402
from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eventstream  # noqa: E402  (sibling module; works both as script and import)

log = logging.getLogger("fake_aws")

STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
STS_VERSION = "2011-06-15"
DEFAULT_ACCOUNT = "123456789012"
DEFAULT_LIFETIME_SECONDS = 3600.0
DEFAULT_SIGNING_NAME = "bedrock"
MAX_CLOCK_SKEW_SECONDS = 300.0
DEFAULT_LOCKSTEP_TIMEOUT_SECONDS = 30.0
DEFAULT_STREAM_CHUNKS = 5
DEFAULT_BEARER_PREFIXES = ("bedrock-api-key-", "ABSK")
DEFAULT_OPENAI_MODELS = (
    "openai.gpt-oss-20b-1:0",
    "openai.gpt-oss-120b-1:0",
)
BODY_RECORD_LIMIT = 64 * 1024
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Event-stream request signing (InvokeModelWithBidirectionalStream over HTTP/2).
EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
EVENTS_PAYLOAD_HASH = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
EVENT_SIGNING_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
BIDI_ROUTE = "invoke-with-bidirectional-stream"
BIDI_ROUTE_RE = re.compile(r"^/model/(?P<model>[^/]+)/invoke-with-bidirectional-stream$")
# A stalled client gets an exception event instead of holding the stream forever.
BIDI_IDLE_TIMEOUT_SECONDS = 30.0
# Recorded per frame: enough of the echoed text to assert on, bounded.
BIDI_TEXT_RECORD_LIMIT = 1024
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_READ_SIZE = 64 * 1024

ROLE_ARN_RE = re.compile(r"^arn:aws:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$", re.ASCII)
SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}$", re.ASCII)
POLICY_ARN_RE = re.compile(r"^arn:aws:iam::(?:\d{12}|aws):policy/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,128}$", re.ASCII)
POLICY_ARN_PARAM_RE = re.compile(r"^PolicyArns\.member\.(\d+)\.arn$")
MAX_POLICY_ARNS = 10
MAX_POLICY_CHARS = 2048
# Actions whose failures can be injected (``fail_action``); None targets both.
STS_ISSUING_ACTIONS = ("AssumeRoleWithWebIdentity", "AssumeRole")

# Fake EC2 instance metadata service (IMDSv2) and container-credentials
# endpoint, both served on the STS port under these path prefixes.
IMDS_PREFIX = "/imds"
ECS_PREFIX = "/ecs"
IMDS_DEFAULT_ROLE_NAME = "node-role"
IMDS_INSTANCE_ID = "i-0123456789abcdef0"
IMDS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
IMDS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
IMDS_MAX_TOKEN_TTL = 21600
IMDS_CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
IMDS_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)
ECS_DEFAULT_TOKEN = "ecs-test-token"
ECS_DEFAULT_ROLE_ARN = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/pod-identity-role"
ECS_SESSION_NAME = "eks-pod"
AUTH_SIGV4_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(?P<params>.+)$", re.S)
MODEL_ROUTE_RE = re.compile(
    r"^/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream|invoke|invoke-with-response-stream|count-tokens)$"
)
GUARDRAIL_ROUTE_RE = re.compile(r"^/guardrail/(?P<id>[^/]+)/version/(?P<version>[^/]+)/apply$")
ASYNC_INVOKE_ROUTE_RE = re.compile(r"^/async-invoke(?:/(?P<arn>[^/]+))?$")

# Headers whose presence (not value) is recorded for every Bedrock request.
PRESENCE_HEADERS = (
    "authorization",
    "x-amz-security-token",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-user-agent",
    "x-llamastack-provider-data",
    "x-api-key",
    "x-forwarded-for",
    "cookie",
    "proxy-authorization",
    "content-type",
    "content-length",
    "transfer-encoding",
    "accept",
    "accept-encoding",
    "user-agent",
    "x-test-id",
)

# Default HTTP status for each injectable STS error code.
STS_FAIL_STATUS = {
    "IDPCommunicationError": 400,
    "AccessDenied": 403,
    "InvalidIdentityToken": 400,
    "ExpiredTokenException": 400,
    "Throttling": 400,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
}

# AWS error type used for ``x-fake-status`` responses.
BEDROCK_STATUS_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


# --------------------------------------------------------------------------
# Shared state
# --------------------------------------------------------------------------


@dataclass
class Credential:
    """A credential the fakes accept: issued by fake STS or registered static."""

    access_key_id: str
    secret_access_key: str
    session_token: Optional[str]
    expires_at: Optional[float]  # epoch seconds; None = never expires (static)
    arn: str
    user_id: str
    account: str
    kind: str  # "sts" | "static"
    role_arn: Optional[str] = None  # the IAM role an STS credential was issued for

    def expired(self, now: float) -> bool:
        """True when the fake no longer accepts this credential."""
        return self.expires_at is not None and now >= self.expires_at


@dataclass
class StsConfig:
    """Behaviour knobs of the fake STS (``POST /_control/sts``)."""

    lifetime_seconds: Optional[float] = None  # None: DurationSeconds or 3600
    fail_next: int = 0
    fail_always: bool = False
    fail_code: str = "InternalFailure"
    fail_status: Optional[int] = None
    accept_tokens: Optional[list] = None  # None: any non-empty token
    delay_seconds: float = 0.0
    fail_action: Optional[str] = None  # None: injected failures hit both issuing actions
    require_external_id: dict = field(default_factory=dict)  # role arn -> ExternalId (AssumeRole)
    deny_roles: list = field(default_factory=list)  # role arns AssumeRole may not assume


@dataclass
class BedrockConfig:
    """Behaviour knobs of the fake Bedrock (``POST /_control/bedrock``)."""

    signing_name: str = DEFAULT_SIGNING_NAME
    models: list = field(default_factory=lambda: list(DEFAULT_OPENAI_MODELS))


@dataclass
class ImdsConfig:
    """Behaviour knobs of the fake IMDS (``POST /_control/imds``)."""

    role_name: Optional[str] = IMDS_DEFAULT_ROLE_NAME  # None: no instance profile (404)
    fail_next: int = 0  # fail the next N metadata GETs (token PUTs are not affected)
    fail_status: int = 500
    disabled: bool = False  # every IMDS request gets 403, as when IMDS is turned off


@dataclass
class EcsConfig:
    """Behaviour knobs of the fake container-credentials endpoint (``POST /_control/ecs``)."""

    token: Optional[str] = ECS_DEFAULT_TOKEN  # None: no Authorization required
    role_arn: str = ECS_DEFAULT_ROLE_ARN
    fail_next: int = 0  # fail the next N authorized requests
    fail_status: int = 500


class StreamState:
    """Progress of one streaming response; lockstep streams wait on releases."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.started = False
        self.route: Optional[str] = None
        self.model_id: Optional[str] = None
        self.request_seq: Optional[int] = None
        self.lockstep = False
        self.total_chunks: Optional[int] = None
        self.chunks_sent = 0
        self.finished = False
        self.client_disconnected = False
        self.gave_up = False
        self.aborted = False
        self.waiting = False
        self.releases_received = 0
        self._credits = 0
        self._released = asyncio.Event()

    def release(self) -> None:
        """Allow one more held chunk to be sent (credits accumulate)."""
        self.releases_received += 1
        self._credits += 1
        self._released.set()

    async def wait_release(self, timeout: float) -> bool:
        """Consume one release credit; False if none arrives within timeout."""
        self.waiting = True
        try:
            deadline = time.monotonic() + timeout
            while self._credits == 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._released.clear()
                try:
                    await asyncio.wait_for(self._released.wait(), remaining)
                except asyncio.TimeoutError:
                    return False
            self._credits -= 1
            return True
        finally:
            self.waiting = False

    def status(self) -> dict:
        """JSON-able status for ``GET /_control/stream/{id}``."""
        return {
            "stream_id": self.stream_id,
            "started": self.started,
            "route": self.route,
            "model_id": self.model_id,
            "request_seq": self.request_seq,
            "lockstep": self.lockstep,
            "total_chunks": self.total_chunks,
            "chunks_sent": self.chunks_sent,
            "finished": self.finished,
            "client_disconnected": self.client_disconnected,
            "gave_up": self.gave_up,
            "aborted": self.aborted,
            "waiting_for_release": self.waiting,
            "releases_received": self.releases_received,
            "pending_releases": self._credits,
        }


class FakeState:
    """All state shared by the STS and Bedrock apps."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.credentials: dict[str, Credential] = {}
        self.sts = StsConfig()
        self.bedrock = BedrockConfig()
        self.imds = ImdsConfig()
        self.ecs = EcsConfig()
        self.imds_tokens: dict[str, float] = {}  # IMDSv2 session token -> expiry (epoch)
        self.bearer_tokens: Optional[set] = None  # None: default prefixes
        self.sts_calls: list[dict] = []
        self.imds_calls: list[dict] = []
        self.ecs_calls: list[dict] = []
        self.bedrock_requests: list[dict] = []
        self.streams: dict[str, StreamState] = {}
        self._seq = 0
        self._auto_stream = 0

    def next_seq(self) -> int:
        """Monotonic sequence number shared by all records."""
        self._seq += 1
        return self._seq

    def reset(self) -> None:
        """Clear records and restore default config.

        Credentials issued by STS, IMDS or the container endpoint stay valid
        (as real AWS would keep them), and so do IMDSv2 session tokens;
        registered static keys and bearer tokens are dropped.
        """
        self.credentials = {k: c for k, c in self.credentials.items() if c.kind == "sts"}
        self.sts = StsConfig()
        self.bedrock = BedrockConfig()
        self.imds = ImdsConfig()
        self.ecs = EcsConfig()
        self.bearer_tokens = None
        self.sts_calls.clear()
        self.imds_calls.clear()
        self.ecs_calls.clear()
        self.bedrock_requests.clear()
        self.streams.clear()

    def bearer_accepted(self, token: str) -> bool:
        """Whether a Bedrock API key (bearer token) is accepted."""
        if self.bearer_tokens is None:
            return token.startswith(DEFAULT_BEARER_PREFIXES)
        return token in self.bearer_tokens

    def stream(self, stream_id: str) -> StreamState:
        """Get or create the stream state for ``stream_id``."""
        st = self.streams.get(stream_id)
        if st is None:
            st = self.streams[stream_id] = StreamState(stream_id)
        return st

    def new_stream(self, stream_id: Optional[str]) -> StreamState:
        """State for a starting stream (reusing pre-released, unstarted ids)."""
        if stream_id is None:
            self._auto_stream += 1
            stream_id = f"auto-{self._auto_stream}"
        st = self.streams.get(stream_id)
        if st is None or st.started:
            st = self.streams[stream_id] = StreamState(stream_id)
        st.started = True
        return st


STATE_KEY = web.AppKey("state", FakeState)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def random_chars(n: int, alphabet: str = string.ascii_uppercase + string.digits) -> str:
    """``n`` random characters from ``alphabet``."""
    return "".join(secrets.choice(alphabet) for _ in range(n))


def iso8601_floor(epoch: float) -> str:
    """Format ``epoch`` as ``YYYY-MM-DDTHH:MM:SSZ``, rounding down."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def parse_amz_date(value: str) -> Optional[float]:
    """Parse an ``X-Amz-Date`` (``YYYYMMDDTHHMMSSZ``) to epoch seconds."""
    try:
        return float(calendar.timegm(time.strptime(value, AMZ_DATE_FORMAT)))
    except (ValueError, TypeError):
        return None


def new_request_id() -> str:
    """A UUID4 string like AWS request ids."""
    return str(uuid.uuid4())


def json_response(status: int, payload: Any, headers: Optional[dict] = None) -> web.Response:
    """Compact JSON response."""
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )


def aws_json_error(status: int, error_type: str, message: str) -> web.Response:
    """AWS REST-JSON error: ``{"message"}`` body plus ``x-amzn-ErrorType``."""
    return json_response(
        status,
        {"message": message},
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": new_request_id()},
    )


def xml_response(status: int, body: str) -> web.Response:
    """STS (query protocol) XML response."""
    return web.Response(status=status, body=body.encode(), content_type="text/xml")


def sts_error(status: int, code: str, message: str) -> web.Response:
    """STS XML error in the ``<ErrorResponse>`` shape."""
    err_type = "Receiver" if status >= 500 else "Sender"
    body = (
        f'<ErrorResponse xmlns="{STS_NS}">'
        f"<Error><Type>{err_type}</Type><Code>{xml_escape(code)}</Code>"
        f"<Message>{xml_escape(message)}</Message></Error>"
        f"<RequestId>{new_request_id()}</RequestId></ErrorResponse>"
    )
    return xml_response(status, body)


class BadFakeHeader(ValueError):
    """An ``x-fake-*`` control header has an unusable value."""


def header_int(request: Any, name: str, default: Optional[int]) -> Optional[int]:
    """Integer value of a request header, or ``default`` (``request``: anything with ``.headers``)."""
    raw = request.headers.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise BadFakeHeader(f"header {name} must be an integer, got {raw!r}") from None


async def read_json(request: web.Request) -> dict:
    """Parse a control request body as a JSON object (empty body = {})."""
    raw = await request.read()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def check_keys(data: dict, allowed: set) -> None:
    """Reject unknown control keys so typos in tests fail loudly."""
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown keys: {sorted(unknown)}; allowed: {sorted(allowed)}")


# --------------------------------------------------------------------------
# SigV4 verification (independent implementation: botocore)
# --------------------------------------------------------------------------


@dataclass
class SigCheck:
    """Outcome of verifying one SigV4-signed request.

    ``kind`` is None on success, else one of: ``malformed``, ``unknown_key``,
    ``expired``, ``bad_token``, ``scope``, ``skew``, ``signature``, or (only
    with ``event_stream=True``) ``payload_hash``.
    """

    kind: Optional[str] = None
    message: str = ""
    access_key_id: Optional[str] = None
    credential: Optional[Credential] = None
    signed_headers: list = field(default_factory=list)
    security_token_signed: Optional[bool] = None
    canonical_request: Optional[str] = None
    string_to_sign: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.kind is None


def parse_sigv4_authorization(value: str) -> Optional[dict]:
    """Split ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``."""
    m = AUTH_SIGV4_RE.match(value.strip())
    if not m:
        return None
    params = {}
    for part in m.group("params").split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            return None
        params[key] = val
    if not {"Credential", "SignedHeaders", "Signature"} <= params.keys():
        return None
    scope = params["Credential"].split("/")
    if len(scope) != 5:
        return None
    params["scope"] = scope
    return params


def _botocore_signed_set(signer: SigV4Auth, req: AWSRequest) -> list:
    """The header names botocore would put into SignedHeaders for ``req``."""
    return signer.signed_headers(signer.headers_to_sign(req)).split(";")


def verify_sigv4(
    state: FakeState,
    *,
    method: str,
    scheme: str,
    raw_path: str,
    headers: Any,
    body: bytes,
    service: str,
    event_stream: bool = False,
) -> SigCheck:
    """Verify a SigV4 ``Authorization`` header against the fake's credentials.

    Checks, in order: header syntax, access key known, credential not expired,
    session token matches, scope region/service, X-Amz-Date skew, the
    SignedHeaders list, the payload hash, then the signature recomputed by
    botocore.  With ``event_stream`` the payload hash must be the signed
    literal ``STREAMING-AWS4-HMAC-SHA256-EVENTS`` (the body is a stream of
    separately signed frames, not known up front) and ``body`` is ignored.
    """
    now = time.time()
    parsed = parse_sigv4_authorization(headers.get("Authorization", ""))
    if parsed is None:
        return SigCheck("malformed", "Authorization header requires Credential, SignedHeaders, Signature")
    akid, scope_date, region, svc, terminator = parsed["scope"]
    check = SigCheck(access_key_id=akid, signed_headers=parsed["SignedHeaders"].split(";"))

    cred = state.credentials.get(akid)
    if cred is None:
        return _fail(check, "unknown_key", f"unknown access key id {akid}")
    check.credential = cred
    if cred.expired(now):
        return _fail(check, "expired", f"credential {akid} expired at {cred.expires_at:.3f} (now {now:.3f})")

    problem = _check_session_token(cred, headers.get("X-Amz-Security-Token"))
    if problem:
        return _fail(check, "bad_token", problem)
    if region != state.region:
        return _fail(check, "scope", f"credential scope region {region!r} != expected {state.region!r}")
    if svc != service:
        return _fail(check, "scope", f"credential scope service {svc!r} != expected {service!r}")
    if terminator != "aws4_request":
        return _fail(check, "scope", f"credential scope terminator {terminator!r} != 'aws4_request'")

    amz_date = headers.get("X-Amz-Date", "")
    signed_at = parse_amz_date(amz_date)
    if signed_at is None:
        return _fail(check, "malformed", f"missing or invalid X-Amz-Date {amz_date!r}")
    if abs(now - signed_at) > MAX_CLOCK_SKEW_SECONDS:
        return _fail(check, "skew", f"Signature expired: X-Amz-Date {amz_date} is more than 5 min from now")
    if scope_date != amz_date[:8]:
        return _fail(check, "signature", f"credential scope date {scope_date} != X-Amz-Date day {amz_date[:8]}")

    problem = _check_signed_header_list(check.signed_headers, headers)
    if problem:
        return _fail(check, "signature", problem)
    check.security_token_signed = (
        "x-amz-security-token" in check.signed_headers if "X-Amz-Security-Token" in headers else None
    )
    if event_stream:
        problem = _check_event_stream_payload_hash(headers, check.signed_headers)
        if problem:
            return _fail(check, *problem)
        body = b""  # not read yet, and not needed: botocore takes the signed header as the payload hash
    else:
        problem = _check_content_sha256(headers, body)
        if problem:
            return _fail(check, "signature", problem)

    return _compare_signature(check, cred, method, scheme, raw_path, headers, body, service, region, amz_date, parsed["Signature"])


def _fail(check: SigCheck, kind: str, message: str) -> SigCheck:
    check.kind = kind
    check.message = message
    return check


def _check_session_token(cred: Credential, received: Optional[str]) -> Optional[str]:
    """Problem with the X-Amz-Security-Token header, or None."""
    if cred.session_token is None:
        if received is not None:
            return "X-Amz-Security-Token sent for a key that has no session token"
        return None
    if received is None:
        return "X-Amz-Security-Token missing for a temporary credential"
    if not hmac.compare_digest(received.encode(), cred.session_token.encode()):
        return "X-Amz-Security-Token does not match the token issued with this key"
    return None


def _check_signed_header_list(names: list, headers: Any) -> Optional[str]:
    """Problem with the SignedHeaders list itself, or None."""
    if names != sorted(set(names)) or any(n != n.lower() or not n for n in names):
        return f"SignedHeaders must be lowercase, sorted and unique: {';'.join(names)!r}"
    for required in ("host", "x-amz-date"):
        if required not in names:
            return f"SignedHeaders must include {required!r}: {';'.join(names)!r}"
    never = [n for n in names if n in SIGNED_HEADERS_BLACKLIST]
    if never:
        return (
            f"SignedHeaders contains {never} which botocore never signs "
            "(hop-by-hop or proxy-mutated headers); the broker must not sign them"
        )
    if "authorization" in names:
        return "SignedHeaders must not contain 'authorization'"
    missing = [n for n in names if n not in headers]
    if missing:
        return f"SignedHeaders lists headers absent from the request: {missing}"
    return None


def _check_content_sha256(headers: Any, body: bytes) -> Optional[str]:
    """If X-Amz-Content-SHA256 is sent it must be the real body hash."""
    claimed = headers.get("X-Amz-Content-SHA256")
    if claimed is None:
        return None
    actual = hashlib.sha256(body).hexdigest()
    if claimed != actual:
        return f"X-Amz-Content-SHA256 {claimed!r} != sha256(body) {actual!r}"
    return None


def _check_event_stream_payload_hash(headers: Any, signed_headers: list) -> Optional[tuple]:
    """``(kind, message)`` if an event-stream request's payload hash is wrong, else None.

    botocore's canonical request uses the X-Amz-Content-SHA256 value as the
    payload hash only when that header is among the signed ones, so an
    unsigned header would make any correct signature look wrong: say so.
    """
    claimed = headers.get("X-Amz-Content-SHA256")
    if claimed != EVENTS_PAYLOAD_HASH:
        return "payload_hash", (
            f"x-amz-content-sha256 must be {EVENTS_PAYLOAD_HASH!r} on an event-stream request, got {claimed!r}"
        )
    if "x-amz-content-sha256" not in signed_headers:
        return "signature", "x-amz-content-sha256 must be in SignedHeaders on an event-stream request"
    return None


def _compare_signature(
    check: SigCheck,
    cred: Credential,
    method: str,
    scheme: str,
    raw_path: str,
    headers: Any,
    body: bytes,
    service: str,
    region: str,
    amz_date: str,
    provided: str,
) -> SigCheck:
    """Recompute the signature with botocore and compare in constant time."""
    req = AWSRequest(method=method, url=f"{scheme}://{headers.get('Host', '')}{raw_path}", data=body)
    for name in check.signed_headers:
        for value in headers.getall(name):
            req.headers[name] = value  # HTTPHeaders appends: keeps repeated headers
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(cred.access_key_id, cred.secret_access_key, cred.session_token), service, region
    )
    botocore_set = _botocore_signed_set(signer, req)
    if botocore_set != check.signed_headers:
        return _fail(
            check,
            "signature",
            f"botocore would sign {botocore_set} but SignedHeaders is {check.signed_headers}",
        )
    check.canonical_request = signer.canonical_request(req)
    check.string_to_sign = signer.string_to_sign(req, check.canonical_request)
    expected = signer.signature(check.string_to_sign, req)
    if not hmac.compare_digest(expected.encode(), provided.encode()):
        log.warning(
            "SIGNATURE MISMATCH for %s %s (key %s)\n--- canonical request (botocore) ---\n%s\n"
            "--- string to sign ---\n%s\n--- expected %s, got %s",
            method, raw_path, cred.access_key_id, check.canonical_request,
            check.string_to_sign, expected, provided,
        )
        return _fail(check, "signature", "signature mismatch (see canonical_request)")
    return check


# --------------------------------------------------------------------------
# Fake STS
# --------------------------------------------------------------------------


STS_SIG_ERRORS = {
    "malformed": "IncompleteSignature",
    "unknown_key": "InvalidClientTokenId",
    "bad_token": "InvalidClientTokenId",
    "expired": "ExpiredToken",
    "scope": "SignatureDoesNotMatch",
    "skew": "SignatureDoesNotMatch",
    "signature": "SignatureDoesNotMatch",
}


async def sts_handler(request: web.Request) -> web.Response:
    """``POST /`` (or GET with query): dispatch on the ``Action`` parameter."""
    state = request.app[STATE_KEY]
    body = await request.read()
    params = dict(parse_qsl(request.query_string, keep_blank_values=True))
    params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    action = params.get("Action")
    if action == "AssumeRoleWithWebIdentity":
        resp = await assume_role_with_web_identity(state, request, params)
    elif action == "AssumeRole":
        resp = await assume_role(state, request, body, params)
    elif action == "GetCallerIdentity":
        resp = get_caller_identity(state, request, body, params)
    else:
        resp = sts_error(400, "InvalidAction", f"Could not find operation {action!r} for version {STS_VERSION}")
    log.info("sts %s -> %d", action, resp.status)
    return resp


def policy_arn_params(params: dict) -> list:
    """The ``PolicyArns.member.N.arn`` values, ordered by N."""
    found = []
    for key, value in params.items():
        m = POLICY_ARN_PARAM_RE.match(key)
        if m:
            found.append((int(m.group(1)), value))
    return [value for _, value in sorted(found)]


def recorded_policy(raw: Optional[str]) -> Any:
    """The ``Policy`` param as recorded: parsed JSON, else the raw string (None if absent)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _sts_record(state: FakeState, request: web.Request, action: str, params: dict) -> dict:
    record = {
        "seq": state.next_seq(),
        "time": time.time(),
        "action": action,
        "role_arn": params.get("RoleArn"),
        "role_session_name": params.get("RoleSessionName"),
        "token": params.get("WebIdentityToken"),
        "duration_seconds": params.get("DurationSeconds"),
        "external_id": params.get("ExternalId"),
        "policy": recorded_policy(params.get("Policy")),
        "policy_arns": policy_arn_params(params),
        "signed": "Authorization" in request.headers,
        "source_access_key_id": None,
        "source_arn": None,
        "user_agent": request.headers.get("User-Agent"),
        "x_test_id": request.headers.get("x-test-id"),
        "result": "pending",
        "status": None,
        "error_code": None,
        "access_key_id": None,
        "assumed_role_arn": None,
        "expiration": None,
        "expires_at": None,
    }
    state.sts_calls.append(record)
    return record


def _finish(record: dict, resp: web.Response, error_code: Optional[str] = None) -> web.Response:
    record["status"] = resp.status
    record["result"] = "ok" if error_code is None else "error"
    record["error_code"] = error_code
    return resp


def _validation(message: str) -> tuple:
    return "ValidationError", f"1 validation error detected: {message}"


def _validate_assume_role(params: dict, action: str) -> Optional[tuple]:
    """``(code, message)`` if AssumeRole[WithWebIdentity] params are invalid, else None."""
    version = params.get("Version")
    if version is not None and version != STS_VERSION:
        return "ValidationError", f"unsupported Version {version!r}"
    role_arn = params.get("RoleArn")
    if not role_arn or not ROLE_ARN_RE.match(role_arn):
        return _validation(f"Value {role_arn!r} at 'roleArn' failed to satisfy constraint")
    session = params.get("RoleSessionName")
    if not session or not SESSION_NAME_RE.match(session):
        return _validation(
            f"Value {session!r} at 'roleSessionName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*"
        )
    if action == "AssumeRoleWithWebIdentity" and not params.get("WebIdentityToken"):
        return _validation(
            "Value at 'webIdentityToken' failed to satisfy constraint: Member must have length greater than or equal to 4"
        )
    external_id = params.get("ExternalId")
    if action == "AssumeRole" and external_id is not None and not EXTERNAL_ID_RE.match(external_id):
        return _validation(
            f"Value {external_id!r} at 'externalId' failed to satisfy constraint: Member must have length "
            "between 2 and 1224 and satisfy regular expression pattern: [\\w+=,.@:\\/-]*"
        )
    duration = params.get("DurationSeconds")
    if duration is not None:
        if not duration.isdigit() or not 900 <= int(duration) <= 43200:
            return _validation(f"Value {duration!r} at 'durationSeconds' failed to satisfy constraint")
    return _validate_session_policies(params)


def _validate_session_policies(params: dict) -> Optional[tuple]:
    """Checks of the ``Policy`` and ``PolicyArns.member.N.arn`` params."""
    policy = params.get("Policy")
    if policy is not None:
        if not 1 <= len(policy) <= MAX_POLICY_CHARS:
            return _validation(
                f"Value at 'policy' failed to satisfy constraint: Member must have length between 1 and {MAX_POLICY_CHARS}"
            )
        try:
            doc = json.loads(policy)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return "MalformedPolicyDocument", "The policy is not in the valid JSON format."
    indexes = sorted(int(m.group(1)) for k in params if (m := POLICY_ARN_PARAM_RE.match(k)))
    if indexes != list(range(1, len(indexes) + 1)):
        return _validation(f"PolicyArns members must be numbered 1..N without gaps, got {indexes}")
    if len(indexes) > MAX_POLICY_ARNS:
        return _validation(
            f"Value at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to {MAX_POLICY_ARNS}"
        )
    for i, arn in enumerate(policy_arn_params(params), start=1):
        if not 20 <= len(arn) <= 2048 or not POLICY_ARN_RE.match(arn):
            return _validation(
                f"Value {arn!r} at 'policyArns.{i}.member.arn' failed to satisfy constraint: "
                "Member must be an IAM policy ARN"
            )
    return None


def packed_policy_size(params: dict) -> int:
    """Percent of the session-policy limit used (fake estimate: compact JSON + ARNs vs 2048)."""
    size = 0
    if params.get("Policy") is not None:
        size += len(json.dumps(json.loads(params["Policy"]), separators=(",", ":")))
    size += sum(len(arn) for arn in policy_arn_params(params))
    return -(-size * 100 // MAX_POLICY_CHARS)


def has_session_policies(params: dict) -> bool:
    return params.get("Policy") is not None or bool(policy_arn_params(params))


def _injected_failure(cfg: StsConfig, action: str) -> Optional[tuple]:
    """(status, code) of a configured failure to inject now into ``action``, or None."""
    if cfg.fail_action is not None and cfg.fail_action != action:
        return None
    if not cfg.fail_always:
        if cfg.fail_next <= 0:
            return None
        cfg.fail_next -= 1
    status = cfg.fail_status or STS_FAIL_STATUS.get(cfg.fail_code, 400)
    return status, cfg.fail_code


def _jwt_claims(token: str) -> dict:
    """Best-effort decode of a JWT's claims (no verification); {} if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
        return claims if isinstance(claims, dict) else {}
    except (ValueError, TypeError):
        return {}


def issue_credential(state: FakeState, role_arn: str, session: str, duration: Optional[str]) -> Credential:
    """Mint and remember a fresh temporary credential for an assumed role."""
    m = ROLE_ARN_RE.match(role_arn)
    assert m is not None
    account, role_name = m.group(1), m.group(2)
    lifetime = state.sts.lifetime_seconds
    if lifetime is None:
        lifetime = float(duration) if duration else DEFAULT_LIFETIME_SECONDS
    role_id = "AROA" + random_chars(17)
    cred = Credential(
        access_key_id="ASIA" + random_chars(16),
        secret_access_key=random_chars(40, string.ascii_letters + string.digits + "+/"),
        session_token="FwoGZXIvYXdzE" + random_chars(120, string.ascii_letters + string.digits),
        expires_at=time.time() + lifetime,
        arn=f"arn:aws:sts::{account}:assumed-role/{role_name}/{session}",
        user_id=f"{role_id}:{session}",
        account=account,
        kind="sts",
        role_arn=role_arn,
    )
    state.credentials[cred.access_key_id] = cred
    return cred


def _credentials_xml(cred: Credential) -> str:
    e = xml_escape
    return (
        "<Credentials>"
        f"<AccessKeyId>{e(cred.access_key_id)}</AccessKeyId>"
        f"<SecretAccessKey>{e(cred.secret_access_key)}</SecretAccessKey>"
        f"<SessionToken>{e(cred.session_token or '')}</SessionToken>"
        f"<Expiration>{iso8601_floor(cred.expires_at or 0)}</Expiration>"
        "</Credentials>"
    )


def _assumed_role_user_xml(cred: Credential) -> str:
    return (
        "<AssumedRoleUser>"
        f"<AssumedRoleId>{xml_escape(cred.user_id)}</AssumedRoleId>"
        f"<Arn>{xml_escape(cred.arn)}</Arn>"
        "</AssumedRoleUser>"
    )


def assume_role_response_xml(cred: Credential, token: str, packed_size: Optional[int] = None) -> str:
    """The AssumeRoleWithWebIdentity success XML (PackedPolicySize only with session policies)."""
    claims = _jwt_claims(token)
    subject = str(claims.get("sub", "system:serviceaccount:default:fake"))
    audience = claims.get("aud", "sts.amazonaws.com")
    if isinstance(audience, list):
        audience = audience[0] if audience else ""
    issuer = str(claims.get("iss", "https://oidc.fake.local")).removeprefix("https://")
    e = xml_escape
    packed = "" if packed_size is None else f"<PackedPolicySize>{packed_size}</PackedPolicySize>"
    return (
        f'<AssumeRoleWithWebIdentityResponse xmlns="{STS_NS}">'
        "<AssumeRoleWithWebIdentityResult>"
        f"{_credentials_xml(cred)}"
        f"<SubjectFromWebIdentityToken>{e(subject)}</SubjectFromWebIdentityToken>"
        f"{_assumed_role_user_xml(cred)}"
        f"{packed}"
        f"<Provider>arn:aws:iam::{cred.account}:oidc-provider/{e(issuer)}</Provider>"
        f"<Audience>{e(str(audience))}</Audience>"
        "</AssumeRoleWithWebIdentityResult>"
        f"<ResponseMetadata><RequestId>{new_request_id()}</RequestId></ResponseMetadata>"
        "</AssumeRoleWithWebIdentityResponse>"
    )


def chained_role_response_xml(cred: Credential, packed_size: int) -> str:
    """The AssumeRole success XML."""
    return (
        f'<AssumeRoleResponse xmlns="{STS_NS}">'
        "<AssumeRoleResult>"
        f"{_credentials_xml(cred)}"
        f"{_assumed_role_user_xml(cred)}"
        f"<PackedPolicySize>{packed_size}</PackedPolicySize>"
        "</AssumeRoleResult>"
        f"<ResponseMetadata><RequestId>{new_request_id()}</RequestId></ResponseMetadata>"
        "</AssumeRoleResponse>"
    )


def _record_issued(record: dict, cred: Credential) -> None:
    record.update(
        access_key_id=cred.access_key_id,
        assumed_role_arn=cred.arn,
        expiration=iso8601_floor(cred.expires_at or 0),
        expires_at=cred.expires_at,
    )


async def _delay_and_inject(state: FakeState, record: dict, action: str) -> Optional[web.Response]:
    """Apply ``delay_seconds``, then an injected failure for ``action`` if one is due."""
    if state.sts.delay_seconds > 0:
        await asyncio.sleep(state.sts.delay_seconds)  # simulated latency, not synchronization
    injected = _injected_failure(state.sts, action)
    if injected:
        status, code = injected
        return _finish(record, sts_error(status, code, f"injected failure {code}"), code)
    return None


async def assume_role_with_web_identity(state: FakeState, request: web.Request, params: dict) -> web.Response:
    """Handle AssumeRoleWithWebIdentity (unsigned)."""
    record = _sts_record(state, request, "AssumeRoleWithWebIdentity", params)
    failed = await _delay_and_inject(state, record, "AssumeRoleWithWebIdentity")
    if failed:
        return failed
    problem = _validate_assume_role(params, "AssumeRoleWithWebIdentity")
    if problem:
        code, message = problem
        return _finish(record, sts_error(400, code, message), code)
    token = params["WebIdentityToken"]
    if state.sts.accept_tokens is not None and token not in state.sts.accept_tokens:
        msg = "Couldn't retrieve verification key from your identity provider, or token not accepted"
        return _finish(record, sts_error(400, "InvalidIdentityToken", msg), "InvalidIdentityToken")
    cred = issue_credential(state, params["RoleArn"], params["RoleSessionName"], params.get("DurationSeconds"))
    _record_issued(record, cred)
    packed = packed_policy_size(params) if has_session_policies(params) else None
    return _finish(record, xml_response(200, assume_role_response_xml(cred, token, packed)))


def _verify_sts_signature(state: FakeState, request: web.Request, body: bytes, record: dict) -> tuple:
    """``(credential, None)`` for a valid SigV4 (service ``sts``) request, else ``(None, error)``."""
    if "Authorization" not in request.headers:
        code = "MissingAuthenticationToken"
        return None, _finish(record, sts_error(403, code, "Request is missing Authentication Token"), code)
    check = verify_sigv4(
        state,
        method=request.method,
        scheme="https" if request.secure else "http",
        raw_path=request.raw_path,
        headers=request.headers,
        body=body,
        service="sts",
    )
    record["source_access_key_id"] = check.access_key_id
    if check.credential is not None:
        record["source_arn"] = check.credential.arn
    if not check.ok:
        code = STS_SIG_ERRORS[check.kind]
        record["rejection"] = check.message
        return None, _finish(record, sts_error(403, code, check.message), code)
    assert check.credential is not None
    return check.credential, None


async def assume_role(state: FakeState, request: web.Request, body: bytes, params: dict) -> web.Response:
    """Handle AssumeRole (role chaining): SigV4-signed by a credential the fake accepts."""
    record = _sts_record(state, request, "AssumeRole", params)
    failed = await _delay_and_inject(state, record, "AssumeRole")
    if failed:
        return failed
    source, failed = _verify_sts_signature(state, request, body, record)
    if failed:
        return failed
    problem = _validate_assume_role(params, "AssumeRole")
    if problem:
        code, message = problem
        return _finish(record, sts_error(400, code, message), code)
    role_arn = params["RoleArn"]
    denied = f"User: {source.arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
    if role_arn in state.sts.deny_roles:
        return _finish(record, sts_error(403, "AccessDenied", denied), "AccessDenied")
    required = state.sts.require_external_id.get(role_arn)
    if required is not None and params.get("ExternalId") != required:
        return _finish(record, sts_error(403, "AccessDenied", denied), "AccessDenied")
    cred = issue_credential(state, role_arn, params["RoleSessionName"], params.get("DurationSeconds"))
    _record_issued(record, cred)
    return _finish(record, xml_response(200, chained_role_response_xml(cred, packed_policy_size(params))))


def get_caller_identity(state: FakeState, request: web.Request, body: bytes, params: dict) -> web.Response:
    """Handle GetCallerIdentity: SigV4 (service ``sts``) verified like Bedrock."""
    record = _sts_record(state, request, "GetCallerIdentity", params)
    cred, failed = _verify_sts_signature(state, request, body, record)
    record["access_key_id"] = record["source_access_key_id"]
    if failed:
        return failed
    body_xml = (
        f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult>'
        f"<Arn>{xml_escape(cred.arn)}</Arn><UserId>{xml_escape(cred.user_id)}</UserId>"
        f"<Account>{cred.account}</Account></GetCallerIdentityResult>"
        f"<ResponseMetadata><RequestId>{new_request_id()}</RequestId></ResponseMetadata>"
        "</GetCallerIdentityResponse>"
    )
    return _finish(record, xml_response(200, body_xml))


# --------------------------------------------------------------------------
# Control API (served on the STS port under /_control)
# --------------------------------------------------------------------------


class ControlNotFound(LookupError):
    """A control request named something that does not exist (-> 404)."""


def control_endpoint(fn: Callable[[FakeState, web.Request], Awaitable[Any]]):
    """Wrap a control handler: JSON in/out, ControlNotFound -> 404, bad input -> 400."""

    async def handler(request: web.Request) -> web.Response:
        try:
            result = await fn(request.app[STATE_KEY], request)
        except ControlNotFound as exc:
            return json_response(404, {"error": str(exc)})
        except (ValueError, KeyError, TypeError) as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, result)

    handler.__doc__ = fn.__doc__
    return handler


async def ctl_sts(state: FakeState, request: web.Request) -> dict:
    """POST /_control/sts: update STS behaviour; returns the new config."""
    data = await read_json(request)
    check_keys(data, set(StsConfig.__dataclass_fields__))
    if "fail_code" in data and data["fail_code"] not in STS_FAIL_STATUS:
        raise ValueError(f"fail_code must be one of {sorted(STS_FAIL_STATUS)}")
    if "accept_tokens" in data and data["accept_tokens"] is not None:
        data["accept_tokens"] = [str(t) for t in data["accept_tokens"]]
    if data.get("fail_action") not in (None, *STS_ISSUING_ACTIONS):
        raise ValueError(f"fail_action must be null or one of {list(STS_ISSUING_ACTIONS)}")
    if "require_external_id" in data:
        required = data["require_external_id"] or {}
        if not isinstance(required, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in required.items()
        ):
            raise ValueError("require_external_id must be an object mapping role ARN -> external id")
        data["require_external_id"] = required
    if "deny_roles" in data:
        denied = data["deny_roles"] or []
        if not isinstance(denied, list) or not all(isinstance(r, str) for r in denied):
            raise ValueError("deny_roles must be a list of role ARNs")
        data["deny_roles"] = denied
    for key, value in data.items():
        setattr(state.sts, key, value)
    return asdict(state.sts)


async def ctl_sts_get(state: FakeState, request: web.Request) -> dict:
    """GET /_control/sts: current STS config."""
    return asdict(state.sts)


async def ctl_sts_calls(state: FakeState, request: web.Request) -> list:
    """GET /_control/sts/calls[?action=..]: recorded STS calls, oldest first."""
    action = request.query.get("action")
    return [c for c in state.sts_calls if action is None or c["action"] == action]


async def ctl_credentials(state: FakeState, request: web.Request) -> list:
    """GET /_control/credentials[?include_secrets=1]: every credential the fakes accept.

    Secrets are left out unless asked for (tests use them to check that the
    broker never leaks them).
    """
    now = time.time()
    with_secrets = request.query.get("include_secrets", "") not in ("", "0", "false")
    out = []
    for c in state.credentials.values():
        item = {
            "access_key_id": c.access_key_id,
            "kind": c.kind,
            "arn": c.arn,
            "role_arn": c.role_arn,
            "expires_at": c.expires_at,
            "expired": c.expired(now),
        }
        if with_secrets:
            item.update(secret_access_key=c.secret_access_key, session_token=c.session_token)
        out.append(item)
    return out


async def ctl_credentials_expire(state: FakeState, request: web.Request) -> dict:
    """POST /_control/credentials/expire {"access_key_id"?}: expire STS creds now."""
    data = await read_json(request)
    check_keys(data, {"access_key_id"})
    target = data.get("access_key_id")
    now = time.time()
    expired = []
    for cred in state.credentials.values():
        if cred.kind == "sts" and target in (None, cred.access_key_id):
            cred.expires_at = min(cred.expires_at or now, now)
            expired.append(cred.access_key_id)
    return {"expired": expired}


async def ctl_static_keys(state: FakeState, request: web.Request) -> dict:
    """POST /_control/static_keys: register a never-expiring static credential."""
    data = await read_json(request)
    check_keys(data, {"access_key_id", "secret_access_key", "session_token", "account", "user_name"})
    account = str(data.get("account", DEFAULT_ACCOUNT))
    user = str(data.get("user_name", "static-user"))
    cred = Credential(
        access_key_id=str(data["access_key_id"]),
        secret_access_key=str(data["secret_access_key"]),
        session_token=data.get("session_token"),
        expires_at=None,
        arn=f"arn:aws:iam::{account}:user/{user}",
        user_id="AIDA" + random_chars(17),
        account=account,
        kind="static",
    )
    state.credentials[cred.access_key_id] = cred
    return {"registered": cred.access_key_id}


async def ctl_bearer_tokens(state: FakeState, request: web.Request) -> dict:
    """POST /_control/bearer_tokens {"tokens": [..]|null}: accepted API keys."""
    data = await read_json(request)
    check_keys(data, {"tokens"})
    tokens = data["tokens"]
    state.bearer_tokens = None if tokens is None else {str(t) for t in tokens}
    return {"tokens": None if tokens is None else sorted(state.bearer_tokens)}


async def ctl_bedrock(state: FakeState, request: web.Request) -> dict:
    """POST /_control/bedrock {"signing_name"?, "models"?}: Bedrock behaviour."""
    data = await read_json(request)
    check_keys(data, set(BedrockConfig.__dataclass_fields__))
    for key, value in data.items():
        setattr(state.bedrock, key, value)
    return asdict(state.bedrock)


async def ctl_bedrock_requests(state: FakeState, request: web.Request) -> list:
    """GET /_control/bedrock/requests[?test_id=..]: recorded Bedrock requests."""
    test_id = request.query.get("test_id")
    return [r for r in state.bedrock_requests if test_id is None or r["x_test_id"] == test_id]


async def ctl_reset(state: FakeState, request: web.Request) -> dict:
    """POST /_control/reset: clear records, restore defaults."""
    state.reset()
    return {"reset": True}


async def ctl_stream_release(state: FakeState, request: web.Request) -> dict:
    """POST /_control/stream/release {"stream_id", "count"?}: release held chunks."""
    data = await read_json(request)
    check_keys(data, {"stream_id", "count"})
    stream = state.stream(str(data["stream_id"]))
    for _ in range(int(data.get("count", 1))):
        stream.release()
    return stream.status()


async def ctl_stream_status(state: FakeState, request: web.Request) -> dict:
    """GET /_control/stream/{id}: progress of one stream."""
    stream_id = request.match_info["stream_id"]
    if stream_id not in state.streams:
        raise ControlNotFound(f"unknown stream {stream_id!r}")
    return state.streams[stream_id].status()


async def ctl_streams(state: FakeState, request: web.Request) -> list:
    """GET /_control/streams: progress of every stream."""
    return [s.status() for s in state.streams.values()]


# --------------------------------------------------------------------------
# Fake EC2 instance metadata service (IMDSv2) and container credentials
# (served on the STS port under /imds/ and /ecs/)
# --------------------------------------------------------------------------


def _text(status: int, text: str, headers: Optional[dict] = None) -> web.Response:
    """A ``text/plain`` response, as IMDS sends (even for the credentials JSON)."""
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


def _take_failure(cfg: Any) -> Optional[int]:
    """Consume one ``fail_next`` of an IMDS/ECS config; the status to fail with, or None."""
    if cfg.fail_next <= 0:
        return None
    cfg.fail_next -= 1
    return cfg.fail_status


def _credential_record_fields(record: dict, cred: Credential) -> None:
    record.update(
        access_key_id=cred.access_key_id,
        principal_arn=cred.arn,
        expiration=iso8601_floor(cred.expires_at or 0),
        expires_at=cred.expires_at,
    )


def _imds_record(state: FakeState, request: web.Request, path: str) -> dict:
    record = {
        "seq": state.next_seq(),
        "time": time.time(),
        "method": request.method,
        "raw_path": request.raw_path,
        "path": path,
        "token_ttl_seconds": request.headers.get(IMDS_TOKEN_TTL_HEADER),
        "token_sent": IMDS_TOKEN_HEADER in request.headers,
        "token_valid": None,
        "user_agent": request.headers.get("User-Agent"),
        "x_test_id": request.headers.get("x-test-id"),
        "status": None,
        "error": None,
        "role_name": None,
        "access_key_id": None,
        "principal_arn": None,
        "expiration": None,
        "expires_at": None,
    }
    state.imds_calls.append(record)
    return record


async def imds_handler(request: web.Request) -> web.Response:
    """IMDSv2 under ``/imds``: ``PUT /latest/api/token`` then token-authenticated GETs."""
    state = request.app[STATE_KEY]
    path = request.path[len(IMDS_PREFIX):] or "/"
    record = _imds_record(state, request, path)
    resp, error = _imds_dispatch(state, request, path, record)
    record["status"], record["error"] = resp.status, error
    log.info("imds %s %s -> %d", request.method, path, resp.status)
    return resp


def _imds_dispatch(state: FakeState, request: web.Request, path: str, record: dict) -> tuple:
    """``(response, error or None)`` for one IMDS request."""
    cfg = state.imds
    if cfg.disabled:
        return _text(403, "Forbidden"), "disabled"
    if path == "/latest/api/token":
        if request.method != "PUT":
            return _text(405, "Method Not Allowed"), "method"
        return _imds_token(state, request)
    if request.method != "GET":
        return _text(405, "Method Not Allowed"), "method"
    token = request.headers.get(IMDS_TOKEN_HEADER)
    expiry = state.imds_tokens.get(token or "")
    record["token_valid"] = expiry is not None and time.time() < expiry
    if not record["token_valid"]:
        problem = "missing token" if token is None else "invalid or expired token"
        return _text(401, "Unauthorized"), problem
    failed = _take_failure(cfg)
    if failed is not None:
        return _text(failed, "injected failure"), f"injected {failed}"
    return _imds_metadata(state, path, record)


def _imds_token(state: FakeState, request: web.Request) -> tuple:
    """``PUT /latest/api/token``: a session token valid for the requested TTL."""
    if "X-Forwarded-For" in request.headers:
        return _text(403, "Forbidden"), "X-Forwarded-For on token request"
    raw_ttl = request.headers.get(IMDS_TOKEN_TTL_HEADER, "")
    if not raw_ttl.isdigit() or not 1 <= int(raw_ttl) <= IMDS_MAX_TOKEN_TTL:
        return _text(400, "Bad Request"), f"bad {IMDS_TOKEN_TTL_HEADER} {raw_ttl!r}"
    token = "AQAEA" + random_chars(51, string.ascii_letters + string.digits + "-_")
    state.imds_tokens[token] = time.time() + int(raw_ttl)
    return _text(200, token, headers={IMDS_TOKEN_TTL_HEADER: raw_ttl}), None


def _imds_metadata(state: FakeState, path: str, record: dict) -> tuple:
    """The token-authenticated metadata GETs."""
    cfg = state.imds
    if path in (IMDS_CREDENTIALS_PATH, IMDS_CREDENTIALS_PATH.rstrip("/")):
        if cfg.role_name is None:
            return _text(404, "Not Found"), "no instance profile"
        return _text(200, cfg.role_name), None
    if path.startswith(IMDS_CREDENTIALS_PATH):
        role = path[len(IMDS_CREDENTIALS_PATH):]
        record["role_name"] = role
        if cfg.role_name is None or role != cfg.role_name:
            return _text(404, "Not Found"), f"no role {role!r}"
        role_arn = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/{role}"
        cred = issue_credential(state, role_arn, IMDS_INSTANCE_ID, None)
        _credential_record_fields(record, cred)
        body = {
            "Code": "Success",
            "LastUpdated": iso8601_floor(time.time()),
            "Type": "AWS-HMAC",
            "AccessKeyId": cred.access_key_id,
            "SecretAccessKey": cred.secret_access_key,
            "Token": cred.session_token,
            "Expiration": iso8601_floor(cred.expires_at or 0),
        }
        return _text(200, json.dumps(body, indent=2)), None
    if path == "/latest/meta-data/placement/region":
        return _text(200, state.region), None
    if path.rstrip("/") == "/latest/meta-data/placement/availability-zone":
        return _text(200, state.region + "a"), None
    if path == "/latest/meta-data/instance-id":
        return _text(200, IMDS_INSTANCE_ID), None
    return _text(404, "Not Found"), "unknown path"


async def ecs_handler(request: web.Request) -> web.Response:
    """Container credentials (ECS / EKS Pod Identity agent): any GET under ``/ecs/``."""
    state = request.app[STATE_KEY]
    cfg = state.ecs
    authz = request.headers.get("Authorization")
    record = {
        "seq": state.next_seq(),
        "time": time.time(),
        "method": request.method,
        "raw_path": request.raw_path,
        "authorization_sent": authz is not None,
        "authorized": None,
        "user_agent": request.headers.get("User-Agent"),
        "x_test_id": request.headers.get("x-test-id"),
        "status": None,
        "error": None,
        "access_key_id": None,
        "principal_arn": None,
        "expiration": None,
        "expires_at": None,
    }
    state.ecs_calls.append(record)
    resp, error = _ecs_dispatch(state, cfg, request.method, authz, record)
    record["status"], record["error"] = resp.status, error
    log.info("ecs %s %s -> %d", request.method, request.path, resp.status)
    return resp


def _ecs_dispatch(state: FakeState, cfg: EcsConfig, method: str, authz: Optional[str], record: dict) -> tuple:
    if method != "GET":
        return json_response(405, {"message": "Method Not Allowed"}), "method"
    record["authorized"] = cfg.token is None or (
        authz is not None and hmac.compare_digest(authz.encode(), cfg.token.encode())
    )
    if not record["authorized"]:
        problem = "missing Authorization" if authz is None else "wrong Authorization"
        return json_response(401, {"message": f"Unauthorized: {problem}"}), problem
    failed = _take_failure(cfg)
    if failed is not None:
        return json_response(failed, {"message": "injected failure"}), f"injected {failed}"
    cred = issue_credential(state, cfg.role_arn, ECS_SESSION_NAME, None)
    _credential_record_fields(record, cred)
    body = {
        "AccessKeyId": cred.access_key_id,
        "SecretAccessKey": cred.secret_access_key,
        "Token": cred.session_token,
        "Expiration": iso8601_floor(cred.expires_at or 0),
        "RoleArn": cfg.role_arn,
    }
    return json_response(200, body), None


def _check_fail_fields(data: dict) -> None:
    if "fail_next" in data and (type(data["fail_next"]) is not int or data["fail_next"] < 0):
        raise ValueError("fail_next must be a non-negative integer")
    if "fail_status" in data and (type(data["fail_status"]) is not int or not 400 <= data["fail_status"] <= 599):
        raise ValueError("fail_status must be an integer 400..599")


async def ctl_imds(state: FakeState, request: web.Request) -> dict:
    """POST /_control/imds {role_name?, fail_next?, fail_status?, disabled?}: IMDS behaviour."""
    data = await read_json(request)
    check_keys(data, set(ImdsConfig.__dataclass_fields__))
    role = data.get("role_name")
    if role is not None and not (isinstance(role, str) and IMDS_ROLE_NAME_RE.match(role)):
        raise ValueError("role_name must be null or a role name matching [\\w+=,.@-]{1,64}")
    if "disabled" in data and not isinstance(data["disabled"], bool):
        raise ValueError("disabled must be a boolean")
    _check_fail_fields(data)
    for key, value in data.items():
        setattr(state.imds, key, value)
    return asdict(state.imds)


async def ctl_imds_get(state: FakeState, request: web.Request) -> dict:
    """GET /_control/imds: current IMDS config."""
    return asdict(state.imds)


async def ctl_imds_calls(state: FakeState, request: web.Request) -> list:
    """GET /_control/imds/calls: recorded IMDS requests, oldest first."""
    return state.imds_calls


async def ctl_ecs(state: FakeState, request: web.Request) -> dict:
    """POST /_control/ecs {token?, role_arn?, fail_next?, fail_status?}: container-credentials behaviour."""
    data = await read_json(request)
    check_keys(data, set(EcsConfig.__dataclass_fields__))
    if "token" in data and data["token"] is not None and not isinstance(data["token"], str):
        raise ValueError("token must be a string or null")
    if "role_arn" in data and not (isinstance(data["role_arn"], str) and ROLE_ARN_RE.match(data["role_arn"])):
        raise ValueError("role_arn must be an IAM role ARN")
    _check_fail_fields(data)
    for key, value in data.items():
        setattr(state.ecs, key, value)
    return asdict(state.ecs)


async def ctl_ecs_get(state: FakeState, request: web.Request) -> dict:
    """GET /_control/ecs: current container-credentials config."""
    return asdict(state.ecs)


async def ctl_ecs_calls(state: FakeState, request: web.Request) -> list:
    """GET /_control/ecs/calls: recorded container-credentials requests, oldest first."""
    return state.ecs_calls


def build_sts_app(state: FakeState) -> web.Application:
    """The STS + control application, plus the fake IMDS (``/imds/``) and container credentials (``/ecs/``)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    routes = [
        ("POST", "/_control/sts", ctl_sts),
        ("GET", "/_control/sts", ctl_sts_get),
        ("GET", "/_control/sts/calls", ctl_sts_calls),
        ("GET", "/_control/credentials", ctl_credentials),
        ("POST", "/_control/credentials/expire", ctl_credentials_expire),
        ("POST", "/_control/static_keys", ctl_static_keys),
        ("POST", "/_control/bearer_tokens", ctl_bearer_tokens),
        ("POST", "/_control/bedrock", ctl_bedrock),
        ("GET", "/_control/bedrock/requests", ctl_bedrock_requests),
        ("POST", "/_control/reset", ctl_reset),
        ("POST", "/_control/stream/release", ctl_stream_release),
        ("GET", "/_control/streams", ctl_streams),
        ("GET", "/_control/stream/{stream_id}", ctl_stream_status),
        ("POST", "/_control/imds", ctl_imds),
        ("GET", "/_control/imds", ctl_imds_get),
        ("GET", "/_control/imds/calls", ctl_imds_calls),
        ("POST", "/_control/ecs", ctl_ecs),
        ("GET", "/_control/ecs", ctl_ecs_get),
        ("GET", "/_control/ecs/calls", ctl_ecs_calls),
    ]
    for method, path, fn in routes:
        app.router.add_route(method, path, control_endpoint(fn))
    app.router.add_route("*", IMDS_PREFIX + "/{tail:.*}", imds_handler)
    app.router.add_route("*", ECS_PREFIX + "/{tail:.*}", ecs_handler)
    app.router.add_route("POST", "/", sts_handler)
    app.router.add_route("GET", "/", sts_handler)
    return app


# --------------------------------------------------------------------------
# Fake Bedrock: authentication and recording
# --------------------------------------------------------------------------


BEDROCK_SIG_ERRORS = {
    "malformed": ("IncompleteSignatureException", None),
    "unknown_key": ("UnrecognizedClientException", "The security token included in the request is invalid."),
    "bad_token": ("UnrecognizedClientException", "The security token included in the request is invalid."),
    "expired": ("ExpiredTokenException", "The security token included in the request is expired"),
    "scope": ("InvalidSignatureException", None),
    "skew": ("InvalidSignatureException", None),
    "signature": (
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
    ),
}


def new_bedrock_record(state: FakeState, request: web.Request, body: bytes) -> dict:
    """Create and store the record of one Bedrock request (HTTP/1.1 listener)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return store_bedrock_record(
        state,
        method=request.method,
        raw_path=request.raw_path,
        headers=request.headers,
        body=body,
        peer_port=peer[1] if peer else None,
        http_version=f"{request.version.major}.{request.version.minor}",
    )


def store_bedrock_record(
    state: FakeState,
    *,
    method: str,
    raw_path: str,
    headers: Any,
    body: bytes,
    peer_port: Optional[int],
    http_version: str,
) -> dict:
    """Create and store the record of one Bedrock request, from either listener."""
    path, _, query = raw_path.partition("?")
    names = [k.lower() for k in headers.keys()]
    record = {
        "seq": state.next_seq(),
        "time": time.time(),
        "method": method,
        "http_version": http_version,
        "raw_path": path,
        "query": query,
        "route": None,
        "model_id": None,
        "auth_kind": "none",
        "auth": "none",
        "access_key_id": None,
        "principal_arn": None,
        "bearer_token": None,
        "verified": False,
        "rejection": None,
        "status": None,
        "error_type": None,
        "header_names": names,
        "headers_present": {h: h in names for h in PRESENCE_HEADERS},
        "x_test_id": headers.get("x-test-id"),
        "user_agent": headers.get("User-Agent"),
        "signed_headers": None,
        "security_token_signed": None,
        "canonical_request": None,
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body": body[:BODY_RECORD_LIMIT].decode("utf-8", "replace"),
        "stream_id": None,
        "bidi": None,  # invoke-with-bidirectional-stream only: per-frame verification
        "peer_port": peer_port,  # same port = same (keep-alive) connection
    }
    state.bedrock_requests.append(record)
    return record


def authenticate_bedrock(state: FakeState, request: web.Request, body: bytes, record: dict) -> Optional[web.Response]:
    """Authenticate a Bedrock request; fills ``record``; returns an error or None."""
    authz = request.headers.get("Authorization", "")
    scheme_word = authz.split(" ", 1)[0].lower() if authz else ""
    if scheme_word == "bearer":
        return _authenticate_bearer(state, authz[len("bearer"):].strip(), record)
    if scheme_word == "aws4-hmac-sha256":
        return _authenticate_sigv4(state, request, body, record)
    record["rejection"] = "no supported Authorization header"
    return aws_json_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")


def _authenticate_bearer(state: FakeState, token: str, record: dict) -> Optional[web.Response]:
    record.update(auth_kind="bearer", auth=f"bearer:{token}", bearer_token=token)
    if token and state.bearer_accepted(token):
        record["verified"] = True
        return None
    record["rejection"] = "bearer token not accepted"
    return aws_json_error(403, "UnrecognizedClientException", "Invalid API key")


def _authenticate_sigv4(state: FakeState, request: web.Request, body: bytes, record: dict) -> Optional[web.Response]:
    check = verify_sigv4(
        state,
        method=request.method,
        scheme="https" if request.secure else "http",
        raw_path=request.raw_path,
        headers=request.headers,
        body=body,
        service=state.bedrock.signing_name,
    )
    record_sigv4_check(record, check)
    if check.ok:
        return None
    return aws_json_error(403, *sigv4_rejection(check))


def record_sigv4_check(record: dict, check: SigCheck) -> None:
    """Store a SigV4 verification outcome in a Bedrock request record."""
    record.update(
        auth_kind="sigv4",
        auth=f"sigv4:{check.access_key_id}",
        access_key_id=check.access_key_id,
        signed_headers=check.signed_headers,
        security_token_signed=check.security_token_signed,
        canonical_request=check.canonical_request,
        principal_arn=check.credential.arn if check.credential is not None else None,
        verified=check.ok,
        rejection=None if check.ok else f"{check.kind}: {check.message}",
    )


def sigv4_rejection(check: SigCheck) -> tuple:
    """``(error type, message)`` of the 403 for a failed Bedrock SigV4 check."""
    error_type, message = BEDROCK_SIG_ERRORS[check.kind]
    if check.kind == "signature":
        message = f"{message} [fake: {check.message}]"
    return error_type, message or check.message


def finalize_record(record: dict, resp: web.StreamResponse) -> None:
    """Store the response status/error type in the record and log one line."""
    record["status"] = resp.status
    record["error_type"] = resp.headers.get("x-amzn-ErrorType")
    log_bedrock_record(record)


def log_bedrock_record(record: dict) -> None:
    """One log line per Bedrock request, once its status is known."""
    log.info(
        "bedrock%s %s %s auth=%s -> %d%s",
        "-h2" if record["http_version"] == "2" else "",
        record["method"],
        record["raw_path"],
        record["auth"] if record["auth_kind"] != "bearer" else "bearer:" + (record["bearer_token"] or "")[:20],
        record["status"],
        f" ({record['rejection']})" if record["rejection"] else "",
    )


def forced_status_error(forced: int) -> tuple:
    """``(status, error type, message)`` for an ``x-fake-status`` of 400 or more."""
    err = BEDROCK_STATUS_ERRORS.get(forced, "InternalServerException" if forced >= 500 else "ValidationException")
    return forced, err, f"fake {err} (x-fake-status {forced})"


# --------------------------------------------------------------------------
# Fake Bedrock: response content
# --------------------------------------------------------------------------


def _text_of_content(content: Any) -> str:
    """Text of a message ``content`` (string, or list of text blocks/parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(block.get("text", "")) for block in content if isinstance(block, dict) and "text" in block
        )
    return ""


def last_user_text(body: dict) -> str:
    """Last user text of a Converse / Anthropic / OpenAI / Titan-style body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _text_of_content(msg.get("content"))
    for key in ("inputText", "prompt"):
        if isinstance(body.get(key), str):
            return body[key]
    return ""


def reply_text(model_id: str, user_text: str) -> str:
    """Deterministic reply text tests can assert on."""
    return f"fake reply from {model_id} to: {user_text}"


def stream_pieces(model_id: str, user_text: str, n: int, pad: int) -> list:
    """The ``n`` text deltas of a streamed reply, each tagged ``<chunk i/n>``."""
    pieces = []
    for i in range(1, n + 1):
        prefix = reply_text(model_id, user_text) + " " if i == 1 else " "
        pieces.append(f"{prefix}<chunk {i}/{n}>" + "x" * pad)
    return pieces


def token_counts(user_text: str, output: str) -> tuple:
    """(input, output) token counts: whitespace-separated words, at least 1."""
    return max(1, len(user_text.split())), max(1, len(output.split()))


def converse_response(model_id: str, user_text: str) -> dict:
    """Converse JSON response."""
    text = reply_text(model_id, user_text)
    inp, out = token_counts(user_text, text)
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out},
        "metrics": {"latencyMs": 1},
    }


def invoke_response(model_id: str, user_text: str) -> dict:
    """Anthropic-messages-like InvokeModel JSON response."""
    text = reply_text(model_id, user_text)
    inp, out = token_counts(user_text, text)
    return {
        "id": "msg_fake_" + random_chars(12).lower(),
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": out},
    }


def openai_completion(model: str, user_text: str) -> dict:
    """OpenAI ``chat.completion`` object."""
    text = reply_text(model, user_text)
    inp, out = token_counts(user_text, text)
    return {
        "id": "chatcmpl-fake" + random_chars(12).lower(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out},
    }


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class StreamPlan:
    """Bytes of a streamed response: preamble + pieces[i] ... + trailer."""

    content_type: str
    preamble: bytes
    pieces: list
    trailer: bytes
    headers: dict = field(default_factory=dict)


def plan_converse_stream(model_id: str, user_text: str, n: int, pad: int) -> StreamPlan:
    """ConverseStream events, as boto3's converse_stream parser expects them."""
    pieces = stream_pieces(model_id, user_text, n, pad)
    inp, out = token_counts(user_text, "".join(pieces))
    ev = eventstream.event
    return StreamPlan(
        content_type="application/vnd.amazon.eventstream",
        preamble=ev("messageStart", _json_bytes({"role": "assistant"})),
        pieces=[
            ev("contentBlockDelta", _json_bytes({"contentBlockIndex": 0, "delta": {"text": p}})) for p in pieces
        ],
        trailer=b"".join(
            [
                ev("contentBlockStop", _json_bytes({"contentBlockIndex": 0})),
                ev("messageStop", _json_bytes({"stopReason": "end_turn"})),
                ev(
                    "metadata",
                    _json_bytes(
                        {
                            "usage": {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out},
                            "metrics": {"latencyMs": 1},
                        }
                    ),
                ),
            ]
        ),
    )


def _invoke_chunk(obj: dict) -> bytes:
    """One ``chunk`` event carrying base64(JSON) in ``bytes``."""
    return eventstream.event("chunk", _json_bytes({"bytes": base64.b64encode(_json_bytes(obj)).decode()}))


def plan_invoke_stream(model_id: str, user_text: str, n: int, pad: int) -> StreamPlan:
    """InvokeModelWithResponseStream: Anthropic-messages streaming events as chunks."""
    pieces = stream_pieces(model_id, user_text, n, pad)
    inp, out = token_counts(user_text, "".join(pieces))
    message = invoke_response(model_id, user_text)
    message.update(content=[], stop_reason=None, usage={"input_tokens": inp, "output_tokens": 0})
    return StreamPlan(
        content_type="application/vnd.amazon.eventstream",
        headers={"x-amzn-bedrock-content-type": "application/json"},
        preamble=_invoke_chunk({"type": "message_start", "message": message})
        + _invoke_chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        pieces=[
            _invoke_chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces
        ],
        trailer=_invoke_chunk({"type": "content_block_stop", "index": 0})
        + _invoke_chunk(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": out}}
        )
        + _invoke_chunk(
            {
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": inp,
                    "outputTokenCount": out,
                    "invocationLatency": 1,
                    "firstByteLatency": 1,
                },
            }
        ),
    )


def plan_openai_stream(model: str, user_text: str, n: int, pad: int, include_usage: bool) -> StreamPlan:
    """OpenAI chat.completion.chunk SSE stream ending in ``data: [DONE]``."""
    pieces = stream_pieces(model, user_text, n, pad)
    inp, out = token_counts(user_text, "".join(pieces))
    base = {"id": "chatcmpl-fake" + random_chars(12).lower(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def sse(choices: list, **extra: Any) -> bytes:
        return b"data: " + _json_bytes({**base, "choices": choices, **extra}) + b"\n\n"

    encoded = []
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        encoded.append(sse([{"index": 0, "delta": delta, "finish_reason": None}]))
    trailer = sse([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        trailer += sse([], usage={"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out})
    return StreamPlan(
        content_type="text/event-stream",
        preamble=b"",
        pieces=encoded,
        trailer=trailer + b"data: [DONE]\n\n",
        headers={"Cache-Control": "no-cache"},
    )


# --------------------------------------------------------------------------
# Fake Bedrock: streaming engine
# --------------------------------------------------------------------------


@dataclass
class StreamControls:
    """Per-request streaming controls taken from ``x-fake-*`` headers."""

    chunks: int
    delay_s: float
    lockstep_id: Optional[str]
    lockstep_timeout_s: float
    abort_after: Optional[int]
    pad: int
    stream_id: Optional[str]

    @classmethod
    def from_request(cls, request: web.Request) -> "StreamControls":
        lockstep = request.headers.get("x-fake-lockstep") or None
        timeout_ms = header_int(request, "x-fake-lockstep-timeout-ms", None)
        return cls(
            chunks=max(0, header_int(request, "x-fake-chunks", DEFAULT_STREAM_CHUNKS) or 0),
            delay_s=(header_int(request, "x-fake-chunk-delay-ms", 0) or 0) / 1000.0,
            lockstep_id=lockstep,
            lockstep_timeout_s=DEFAULT_LOCKSTEP_TIMEOUT_SECONDS if timeout_ms is None else timeout_ms / 1000.0,
            abort_after=header_int(request, "x-fake-abort-after", None),
            pad=max(0, header_int(request, "x-fake-chunk-pad", 0) or 0),
            stream_id=lockstep or request.headers.get("x-fake-stream-id") or None,
        )


async def send_stream(
    state: FakeState, request: web.Request, record: dict, route: str, model_id: str,
    plan: StreamPlan, ctl: StreamControls,
) -> web.StreamResponse:
    """Write ``plan`` chunk by chunk, honouring delay / lockstep / abort controls.

    Chunk 1 is sent together with the preamble; the trailer goes out with the
    last chunk.  Before chunk k+1 the writer sleeps ``delay`` and, in lockstep
    mode, waits for one ``/_control/stream/release``.  Client disconnects
    (write errors or handler cancellation) are recorded on the stream.
    """
    stream = state.new_stream(ctl.stream_id)
    stream.route, stream.model_id, stream.request_seq = route, model_id, record["seq"]
    stream.lockstep, stream.total_chunks = ctl.lockstep_id is not None, len(plan.pieces)
    record["stream_id"] = stream.stream_id
    resp = web.StreamResponse(status=200, headers={"Content-Type": plan.content_type, "x-amzn-RequestId": new_request_id(), **plan.headers})
    resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        finalize_record(record, resp)
        if not plan.pieces:
            await resp.write(plan.preamble + plan.trailer)
        for index, piece in enumerate(plan.pieces):
            if index > 0 and not await _pace(stream, ctl):
                return _abort(request, stream, resp, gave_up=True)
            if ctl.abort_after is not None and index >= ctl.abort_after:
                return _abort(request, stream, resp, gave_up=False)
            data = (plan.preamble if index == 0 else b"") + piece
            if index == len(plan.pieces) - 1:
                data += plan.trailer
            await resp.write(data)
            stream.chunks_sent += 1
        await resp.write_eof()
        stream.finished = True
    except ConnectionError:
        _note_disconnect(stream)
    except asyncio.CancelledError:  # handler_cancellation: the connection was lost
        _note_disconnect(stream)
        raise
    return resp


def _note_disconnect(stream: StreamState) -> None:
    stream.client_disconnected = True
    log.info("stream %s: client disconnected after %d chunk(s)", stream.stream_id, stream.chunks_sent)


async def _pace(stream: StreamState, ctl: StreamControls) -> bool:
    """Delay and/or lockstep wait before the next chunk; False = give up."""
    if ctl.delay_s > 0:
        await asyncio.sleep(ctl.delay_s)  # simulated model latency
    if ctl.lockstep_id is None:
        return True
    return await stream.wait_release(ctl.lockstep_timeout_s)


def _abort(request: web.Request, stream: StreamState, resp: web.StreamResponse, *, gave_up: bool) -> web.StreamResponse:
    """Kill the connection mid-stream (lockstep timeout or ``x-fake-abort-after``)."""
    stream.gave_up = gave_up
    stream.aborted = not gave_up
    log.info("stream %s: %s after %d chunk(s)", stream.stream_id, "gave up" if gave_up else "aborting", stream.chunks_sent)
    if request.transport is not None:
        request.transport.abort()
    return resp


# --------------------------------------------------------------------------
# Fake Bedrock: routing
# --------------------------------------------------------------------------


def parse_json_body(body: bytes) -> Optional[dict]:
    """Body as a JSON object, or None if it is not one."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def bedrock_handler(request: web.Request) -> web.StreamResponse:
    """Every Bedrock request: authenticate, record, then route on the raw path."""
    state = request.app[STATE_KEY]
    body = await request.read()
    record = new_bedrock_record(state, request, body)
    resp = authenticate_bedrock(state, request, body, record)
    if resp is None:
        try:
            resp = await route_bedrock(state, request, body, record)
        except BadFakeHeader as exc:
            resp = aws_json_error(400, "ValidationException", f"fake: {exc}")
    if record["status"] is None:
        finalize_record(record, resp)
    return resp


async def route_bedrock(state: FakeState, request: web.Request, body: bytes, record: dict) -> web.StreamResponse:
    """Dispatch an authenticated request on the raw (undecoded) path."""
    path = record["raw_path"]
    model_match = MODEL_ROUTE_RE.match(path)
    if model_match and request.method == "POST":
        record["route"] = model_match.group("op")
        record["model_id"] = unquote(model_match.group("model"))
    elif path == "/openai/v1/chat/completions" and request.method == "POST":
        record["route"] = "openai-chat"
    elif path == "/openai/v1/models" and request.method == "GET":
        record["route"] = "openai-models"
    elif GUARDRAIL_ROUTE_RE.match(path) and request.method == "POST":
        record["route"] = "apply-guardrail"
    elif ASYNC_INVOKE_ROUTE_RE.match(path.split("?", 1)[0]):
        record["route"] = "async-invoke"
    else:
        return aws_json_error(404, "UnknownOperationException", "UnknownOperationException")

    # Simulated model latency before any response header is sent.
    response_delay_ms = header_int(request, "x-fake-response-delay-ms", 0) or 0
    if response_delay_ms > 0:
        await asyncio.sleep(response_delay_ms / 1000.0)

    forced = header_int(request, "x-fake-status", None)
    if forced is not None and forced >= 400:
        return aws_json_error(*forced_status_error(forced))

    if record["route"] == "async-invoke":
        return handle_async_invoke(request, path, body)
    if record["route"] == "openai-models":
        return json_response(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in state.bedrock.models]})
    data = parse_json_body(body)
    if data is None:
        return aws_json_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
    if record["route"] == "openai-chat":
        return await handle_openai_chat(state, request, record, data)
    if record["route"] == "apply-guardrail":
        return handle_apply_guardrail(data)
    return await handle_model_op(state, request, record, data)


def handle_apply_guardrail(data: dict) -> web.Response:
    """ApplyGuardrail: blocks any text containing the word "forbidden"."""
    texts = [c.get("text", {}).get("text", "") for c in data.get("content", []) if isinstance(c, dict)]
    blocked = any("forbidden" in t for t in texts)
    return json_response(200, {
        "usage": {"topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1,
                  "sensitiveInformationPolicyUnits": 0, "sensitiveInformationPolicyFreeUnits": 0,
                  "contextualGroundingPolicyUnits": 0},
        "action": "GUARDRAIL_INTERVENED" if blocked else "NONE",
        "outputs": [{"text": "blocked by fake guardrail"}] if blocked else [],
        "assessments": [],
    }, headers={"x-amzn-RequestId": new_request_id()})


ASYNC_ARN = "arn:aws:bedrock:us-east-1:123456789012:async-invoke/fake0001"


def handle_async_invoke(request: web.Request, path: str, body: bytes) -> web.Response:
    """StartAsyncInvoke (POST /async-invoke), GetAsyncInvoke, ListAsyncInvokes."""
    rid = {"x-amzn-RequestId": new_request_id()}
    summary = {"invocationArn": ASYNC_ARN, "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-reel-v1:0",
               "status": "InProgress", "submitTime": "2026-01-01T00:00:00Z",
               "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}}}
    if request.method == "POST":
        if parse_json_body(body) is None:
            return aws_json_error(400, "ValidationException", "Malformed input request")
        return json_response(200, {"invocationArn": ASYNC_ARN}, headers=rid)
    match = ASYNC_INVOKE_ROUTE_RE.match(path.split("?", 1)[0])
    if match and match.group("arn"):
        if unquote(match.group("arn")) != ASYNC_ARN:
            return aws_json_error(404, "ResourceNotFoundException", "no such invocation")
        return json_response(200, summary, headers=rid)
    return json_response(200, {"asyncInvokeSummaries": [summary]}, headers=rid)


async def handle_model_op(state: FakeState, request: web.Request, record: dict, data: dict) -> web.StreamResponse:
    """converse / converse-stream / invoke / invoke-with-response-stream."""
    op, model_id = record["route"], record["model_id"]
    user_text = last_user_text(data)
    rid = {"x-amzn-RequestId": new_request_id()}
    if op == "converse":
        return json_response(200, converse_response(model_id, user_text), headers=rid)
    if op == "count-tokens":
        text = json.dumps(data.get("input", {}))
        return json_response(200, {"inputTokens": max(1, len(text.split()))}, headers=rid)
    if op == "invoke":
        out = invoke_response(model_id, user_text)
        headers = {
            **rid,
            "X-Amzn-Bedrock-Input-Token-Count": str(out["usage"]["input_tokens"]),
            "X-Amzn-Bedrock-Output-Token-Count": str(out["usage"]["output_tokens"]),
            "X-Amzn-Bedrock-Invocation-Latency": "1",
        }
        return json_response(200, out, headers=headers)
    ctl = StreamControls.from_request(request)
    planner = plan_converse_stream if op == "converse-stream" else plan_invoke_stream
    plan = planner(model_id, user_text, ctl.chunks, ctl.pad)
    return await send_stream(state, request, record, op, model_id, plan, ctl)


async def handle_openai_chat(state: FakeState, request: web.Request, record: dict, data: dict) -> web.StreamResponse:
    """OpenAI-compatible chat completions (JSON or SSE)."""
    model = str(data.get("model") or "unknown-model")
    record["model_id"] = model
    user_text = last_user_text(data)
    if not data.get("stream"):
        return json_response(200, openai_completion(model, user_text), headers={"x-amzn-RequestId": new_request_id()})
    ctl = StreamControls.from_request(request)
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    plan = plan_openai_stream(model, user_text, ctl.chunks, ctl.pad, include_usage)
    return await send_stream(state, request, record, "openai-chat-stream", model, plan, ctl)


def build_bedrock_app(state: FakeState) -> web.Application:
    """The Bedrock application: one catch-all handler routing on the raw path."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_route("*", "/{tail:.*}", bedrock_handler)
    return app


# --------------------------------------------------------------------------
# Event-stream request signing: independent verifier (hashlib/hmac only)
# --------------------------------------------------------------------------
#
# InvokeModelWithBidirectionalStream sends a body of "outer" event-stream
# messages, each with a ``:date`` (timestamp) and a ``:chunk-signature``
# (32-byte array) header around an encoded "inner" message.  Each signature
# is chained to the one before it, starting from the initial request's
# SigV4 signature; an outer message with an empty payload ends the stream.


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


# --------------------------------------------------------------------------
# Fake Bedrock: InvokeModelWithBidirectionalStream (served on the HTTP/2 port)
# --------------------------------------------------------------------------


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
    }


async def handle_h2_request(state: FakeState, stream: "H2Stream") -> None:
    """Every request on the HTTP/2 listener: route, authenticate, then stream.

    Routing comes first here (unlike the HTTP/1.1 listener): other operations'
    bodies are not event streams, so checking them as one would only mislead.
    """
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


def authenticate_bidi(state: FakeState, stream: "H2Stream", record: dict) -> tuple:
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
        return check, None
    if check.kind == "payload_hash":
        return None, (400, "ValidationException", check.message)
    return None, (403, *sigv4_rejection(check))


def bidi_request_problem(stream: "H2Stream") -> Optional[tuple]:
    """``(status, type, message)`` for an authenticated request the fake will not stream."""
    content_type = stream.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != EVENTSTREAM_CONTENT_TYPE:
        return 400, "ValidationException", f"content-type must be {EVENTSTREAM_CONTENT_TYPE}, got {content_type!r}"
    forced = header_int(stream, "x-fake-status", None)  # header_int only needs .headers
    if forced is not None and forced >= 400:
        return forced_status_error(forced)
    return None


async def run_bidi_session(stream: "H2Stream", record: dict, verifier: EventStreamVerifier,
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


async def answer_frames(stream: "H2Stream", bidi: dict, verifier: EventStreamVerifier, decoder: eventstream.MessageDecoder) -> None:
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
            await stream.send_data(_invoke_chunk({"seq": bidi["data_frames"], "echo": text}))
            bidi["events_sent"] += 1
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


async def send_bidi_exception(stream: "H2Stream", bidi: dict, message: str) -> None:
    """Send a modeled ``validationException`` event and end the response."""
    bidi.update(error=message, exception_type="validationException")
    # The SDKs match :exception-type against the output union's member
    # names, which are lowerCamelCase (validationException, not ValidationException).
    event = eventstream.exception("validationException", _json_bytes({"message": message}))
    try:
        await stream.send_data(event, end_stream=True)
    except StreamGone:
        bidi["client_disconnected"] = True


async def h2_json_error(stream: "H2Stream", record: dict, status: int, error_type: str, message: str) -> None:
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


# --------------------------------------------------------------------------
# HTTP/2 server (h2 library on asyncio streams)
# --------------------------------------------------------------------------
#
# A small server of our own rather than an ASGI server: a stream's response
# may end (say, after an exception event) while the client is still sending,
# and those late DATA frames must be acknowledged and ignored.  hypercorn
# 0.18 forgets a stream once its response ends, and a later DATA frame for it
# then raises KeyError in its connection loop, dropping the whole connection
# (and maybe the exception event the client has not read yet).


class StreamGone(Exception):
    """The client reset the HTTP/2 stream, or the connection is gone."""


_BODY_END = object()  # queued when the client ends its side of the stream


class H2Stream:
    """One request on the HTTP/2 listener, as a handler sees it."""

    def __init__(self, conn: "H2ServerConnection", stream_id: int, headers: list) -> None:
        self._conn = conn
        self.stream_id = stream_id
        pseudo = {name: value for name, value in headers if name.startswith(":")}
        self.method = pseudo.get(":method", "")
        self.raw_path = pseudo.get(":path", "")
        self.scheme = pseudo.get(":scheme", "")
        self.headers = CIMultiDict((name, value) for name, value in headers if not name.startswith(":"))
        # HTTP/2 carries the host as :authority, while SigV4 signs it as `host`.
        if "host" not in self.headers and ":authority" in pseudo:
            self.headers["Host"] = pseudo[":authority"]
        self.peer_port = conn.peer_port
        self._body: asyncio.Queue = asyncio.Queue()

    def deliver(self, item: Any) -> None:
        """Queue a body chunk, ``_BODY_END`` or a ``StreamGone`` for ``receive``."""
        self._body.put_nowait(item)

    async def receive(self, timeout: float) -> Optional[bytes]:
        """The next request body chunk, or None once the client has ended its side.

        Raises ``StreamGone`` if the client reset the stream or disconnected,
        and ``asyncio.TimeoutError`` if nothing arrives within ``timeout``.
        """
        item = await asyncio.wait_for(self._body.get(), timeout)
        if isinstance(item, StreamGone):
            raise StreamGone(str(item))
        return None if item is _BODY_END else item

    async def send_headers(self, status: int, headers: list) -> None:
        await self._conn.send_headers(self.stream_id, [(":status", str(status)), *headers])

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        await self._conn.send_data(self.stream_id, data, end_stream)


class H2ServerConnection:
    """One HTTP/2 connection: a read loop feeding h2, one handler task per request.

    Responses can start and continue while request bodies are still arriving.
    Inbound data is acknowledged as soon as it is queued; outbound data waits
    for the peer's flow-control window.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Callable[[H2Stream], Awaitable[None]]) -> None:
        self.reader, self.writer, self.handler = reader, writer, handler
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        peer = writer.get_extra_info("peername")
        self.peer_port = peer[1] if peer else None
        self.streams: dict[int, H2Stream] = {}
        self.tasks: set[asyncio.Task] = set()
        self._window_waiters: list[asyncio.Future] = []
        self.closed = False

    async def run(self, initial: bytes) -> None:
        """Serve until the peer goes away; ``initial`` is what was read while sniffing the preface."""
        self.h2.initiate_connection()
        await self._flush()
        data = initial
        try:
            while data and await self._receive(data):
                data = await self.reader.read(H2_READ_SIZE)
        except OSError:
            pass  # reset or TLS failure: the same as the peer going away
        finally:
            self._mark_closed()
            self.writer.close()

    def close(self) -> None:
        """Server shutdown: GOAWAY, then close (the read loop then ends)."""
        if not self.closed:
            self.h2.close_connection()
            self.writer.write(self.h2.data_to_send())
        self._mark_closed()
        self.writer.close()
        for task in self.tasks:
            task.cancel()

    async def _receive(self, data: bytes) -> bool:
        """Feed bytes to h2 and act on its events; False once the connection is over."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("h2 connection (port %s): protocol error: %s", self.peer_port, exc)
            await self._flush()  # h2 has queued a GOAWAY
            return False
        for event in events:
            self._on_event(event)
        await self._flush()
        return not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id, event.headers)
            task = asyncio.create_task(self._run_handler(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.DataReceived):
            # Acknowledge even for streams whose response has ended: the
            # client may still be sending, and the connection window must not leak.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._deliver(event.stream_id, event.data)
        elif isinstance(event, h2.events.StreamEnded):
            self._deliver(event.stream_id, _BODY_END)
        elif isinstance(event, h2.events.StreamReset):
            self._deliver(event.stream_id, StreamGone(f"stream reset by client (error code {event.error_code})"))
            self._wake_window_waiters()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake_window_waiters()

    def _deliver(self, stream_id: int, item: Any) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.deliver(item)

    async def _run_handler(self, stream: H2Stream) -> None:
        try:
            await self.handler(stream)
        except StreamGone:
            pass
        except Exception:  # a bug in the fake: make it loud, and do not leave the client hanging
            log.exception("h2 handler failed on stream %d", stream.stream_id)
            if not self.closed:
                self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                await self._flush()
        finally:
            self.streams.pop(stream.stream_id, None)

    async def send_headers(self, stream_id: int, headers: list) -> None:
        self._check_open()
        try:
            self.h2.send_headers(stream_id, headers)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(str(exc)) from None
        await self._flush()

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send ``data`` in frames the peer's flow-control windows allow."""
        while True:
            self._check_open()
            try:
                window = self.h2.local_flow_control_window(stream_id)
                size = min(len(data), window, self.h2.max_outbound_frame_size)
                if data and size <= 0:
                    await self._window_opened()
                    continue
                chunk, data = data[:size], data[size:]
                self.h2.send_data(stream_id, chunk, end_stream=end_stream and not data)
            except h2.exceptions.ProtocolError as exc:
                raise StreamGone(str(exc)) from None
            await self._flush()
            if not data:
                return

    def _check_open(self) -> None:
        if self.closed:
            raise StreamGone("connection closed")

    async def _window_opened(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._window_waiters.append(waiter)
        await waiter

    def _wake_window_waiters(self) -> None:
        for waiter in self._window_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._window_waiters.clear()

    async def _flush(self) -> None:
        data = self.h2.data_to_send()
        if not data or self.closed:
            return
        self.writer.write(data)
        try:
            await self.writer.drain()
        except OSError:
            self._mark_closed()

    def _mark_closed(self) -> None:
        """Connection over: every open stream's handler sees ``StreamGone``."""
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream.deliver(StreamGone("connection closed"))
        self._wake_window_waiters()


class H2Listener:
    """The HTTP/2 port: TLS with ALPN h2 (offered with http/1.1), or cleartext h2c with prior knowledge.

    A connection that does not start with the HTTP/2 preface (an HTTP/1.1
    client, with or without TLS) gets a 505 JSON error and is closed.
    """

    def __init__(self, handler: Callable[[H2Stream], Awaitable[None]]) -> None:
        self.handler = handler
        self.connections: set[H2ServerConnection] = set()
        self.connection_tasks: set[asyncio.Task] = set()
        self.server: Optional[asyncio.Server] = None

    async def start(self, sock: socket.socket, ssl_ctx: Optional[ssl.SSLContext]) -> None:
        self.server = await asyncio.start_server(self._on_connection, sock=sock, ssl=ssl_ctx, backlog=1024)

    async def close(self) -> None:
        """Stop accepting, GOAWAY every connection, and let their tasks finish."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        # Connection tasks left for asyncio.run to cancel make asyncio log
        # their CancelledError, so wait for them (closing ends their reads).
        if self.connection_tasks:
            await asyncio.wait(self.connection_tasks, timeout=1.0)
        if self.server is not None:
            await self.server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connection_tasks.add(task)
        task.add_done_callback(self.connection_tasks.discard)
        try:
            initial = await read_h2_preface(reader)
        except OSError:
            writer.close()
            return
        if not initial.startswith(H2_PREFACE):
            refuse_non_h2(writer, initial)
            return
        conn = H2ServerConnection(reader, writer, self.handler)
        self.connections.add(conn)
        try:
            await conn.run(initial)
        finally:
            self.connections.discard(conn)


async def read_h2_preface(reader: asyncio.StreamReader) -> bytes:
    """The connection's first bytes: enough to tell the HTTP/2 preface from anything else."""
    data = b""
    while len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
        chunk = await reader.read(H2_READ_SIZE)
        if not chunk:
            break
        data += chunk
    return data


def refuse_non_h2(writer: asyncio.StreamWriter, initial: bytes) -> None:
    """Answer a non-HTTP/2 client (for example HTTP/1.1 after ALPN) with a 505 and close."""
    if initial:
        log.info("h2 listener: refusing a non-HTTP/2 connection (%r...)", initial[:16])
        body = json.dumps({"message": "fake: this port speaks HTTP/2 only (ALPN h2, or h2c with prior knowledge)"}).encode()
        writer.write(
            b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: application/json\r\n"
            b"x-amzn-errortype: HttpVersionNotSupported\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode() + body
        )
    writer.close()


# --------------------------------------------------------------------------
# Process entry point
# --------------------------------------------------------------------------


def bind_loopback(port: int) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1:port (0 = ephemeral)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def tls_context(cert: str, key: str, alpn: tuple = ("http/1.1",)) -> ssl.SSLContext:
    """Server TLS context offering ``alpn`` (HTTP/1.1 only by default)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def write_ready_file(path: str, payload: str) -> None:
    """Atomically write the ready JSON (tmp file + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(payload + "\n")
    os.replace(tmp, path)


async def start_site(app: web.Application, sock: socket.socket, ssl_ctx: Optional[ssl.SSLContext]) -> web.AppRunner:
    """Run ``app`` on ``sock``; handler cancellation lets streams see disconnects."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_ctx, backlog=1024).start()
    return runner


async def start_h2_listener(state: FakeState, args: argparse.Namespace) -> tuple:
    """``(listener, base URL)`` of the HTTP/2 port: TLS + ALPN with ``--tls-cert``, else h2c."""
    sock = bind_loopback(args.h2_port)
    ssl_ctx = tls_context(args.tls_cert, args.tls_key, alpn=("h2", "http/1.1")) if args.tls_cert else None
    listener = H2Listener(lambda stream: handle_h2_request(state, stream))
    await listener.start(sock, ssl_ctx)
    return listener, f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{sock.getsockname()[1]}"


async def serve(args: argparse.Namespace) -> None:
    """Start the servers, announce readiness, run until SIGTERM/SIGINT."""
    if args.ready_file and os.path.exists(args.ready_file):
        os.unlink(args.ready_file)  # never let a poller see a previous run's ports
    state = FakeState(region=args.region)
    ssl_ctx = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    sts_sock, bedrock_sock = bind_loopback(args.sts_port), bind_loopback(args.bedrock_port)
    runners = [
        await start_site(build_sts_app(state), sts_sock, None),
        await start_site(build_bedrock_app(state), bedrock_sock, ssl_ctx),
    ]
    sts_url = f"http://127.0.0.1:{sts_sock.getsockname()[1]}"
    scheme = "https" if ssl_ctx else "http"
    urls = {
        "sts": sts_url,
        "bedrock": f"{scheme}://127.0.0.1:{bedrock_sock.getsockname()[1]}",
        "control": f"{sts_url}/_control",
    }
    h2_listener = None
    if args.h2_port is not None:
        h2_listener, urls["bedrock_h2"] = await start_h2_listener(state, args)
    ready = json.dumps(urls)
    print(ready, flush=True)
    if args.ready_file:
        write_ready_file(args.ready_file, ready)
    log.info("ready: %s (region %s)", ready, args.region)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(watch_parent(stop)) if args.exit_with_parent else None
    await stop.wait()
    if watchdog:
        watchdog.cancel()
    log.info("shutting down")
    if h2_listener is not None:
        await h2_listener.close()
    for runner in runners:
        await runner.cleanup()


async def watch_parent(stop: asyncio.Event) -> None:
    """Set ``stop`` once the process that started us has gone (we got reparented)."""
    parent = STARTING_PARENT_PID
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    log.info("parent %d exited; stopping", parent)
    stop.set()


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sts-port", type=int, default=0)
    p.add_argument("--bedrock-port", type=int, default=0)
    p.add_argument(
        "--h2-port", type=int, default=None,
        help="also serve invoke-with-bidirectional-stream over HTTP/2 on this port (0 = ephemeral; "
        "TLS + ALPN with --tls-cert, else h2c with prior knowledge)",
    )
    p.add_argument("--tls-cert", help="PEM certificate chain: serve Bedrock over HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--ready-file", help="also write the ready JSON here (atomically)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO (one line per request), WARNING")
    p.add_argument("--log-file", help="append logs here instead of stderr")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the process that started this one dies")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return args


def main(argv: Optional[list] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="fake_aws %(asctime)s %(levelname)s %(message)s",
        **({"filename": args.log_file} if args.log_file else {"stream": sys.stderr}),
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
