"""State shared by every listener of the fake: credentials, behaviour knobs, records and streams.

One ``FakeState`` lives for the whole process.  The aiohttp apps reach it
through ``STATE_KEY``; the HTTP/2 listener is handed it directly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import web

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_SIGNING_NAME = "bedrock"
DEFAULT_BEARER_PREFIXES = ("bedrock-api-key-", "ABSK")
DEFAULT_OPENAI_MODELS = (
    "openai.gpt-oss-20b-1:0",
    "openai.gpt-oss-120b-1:0",
)
IMDS_DEFAULT_ROLE_NAME = "node-role"
ECS_DEFAULT_TOKEN = "ecs-test-token"
ECS_DEFAULT_ROLE_ARN = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/pod-identity-role"


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
    # STS's clock minus this machine's: its answers' Date header and the
    # expirations it issues (negative: the caller's clock is ahead).
    clock_offset_seconds: float = 0.0
    # A token refused (``accept_tokens``) is quoted in the error's message,
    # as a relay or a misbehaving identity provider may.
    quote_refused_tokens: bool = False
    # Bytes of whitespace after a successful answer's XML (still valid
    # XML), streamed: an answer larger than any STS sends.
    pad_answer_bytes: int = 0
    # A 200 that is no STS answer (a proxy's login page): what
    # AssumeRoleWithWebIdentity answers while set.
    html_answer: bool = False
    # AssumeRoleWithWebIdentity answers 200 with credentials whose secret
    # key holds a broken XML escape (`&#x` + the secret + `;`): an answer
    # the SDK cannot read, whose parser quotes that field.
    garbled_secret: bool = False
    # Signed calls (AssumeRole, GetCallerIdentity) are refused with their
    # X-Amz-Security-Token quoted in the message, as a relay may.
    quote_security_token: bool = False


@dataclass
class BedrockConfig:
    """Behaviour knobs of the fake Bedrock (``POST /_control/bedrock``)."""

    signing_name: str = DEFAULT_SIGNING_NAME
    models: list = field(default_factory=lambda: list(DEFAULT_OPENAI_MODELS))
    # Compress answers (gzip or deflate, as the request's Accept-Encoding
    # allows), as a server or a proxy in front of Bedrock may.
    compress: bool = False
    # False: every correctly signed request is refused with
    # UnrecognizedClientException, as Bedrock answers the keys of an
    # account that has not enabled this (opt-in) region: fresh keys too.
    region_enabled: bool = True


@dataclass
class ImdsConfig:
    """Behaviour knobs of the fake IMDS (``POST /_control/imds``)."""

    role_name: Optional[str] = IMDS_DEFAULT_ROLE_NAME  # None: no instance profile (404)
    fail_next: int = 0  # fail the next N metadata GETs (token PUTs are not affected)
    fail_status: int = 500
    disabled: bool = False  # every IMDS request gets 403, as when IMDS is turned off
    quote_token: bool = False  # failures and error_code answers quote the request's session token, as a relay may
    error_code: Optional[str] = None  # the role's credentials GET answers 200 {"Code": it, "Message": ...}


@dataclass
class EcsConfig:
    """Behaviour knobs of the fake container-credentials endpoint (``POST /_control/ecs``)."""

    token: Optional[str] = ECS_DEFAULT_TOKEN  # None: no Authorization required
    role_arn: str = ECS_DEFAULT_ROLE_ARN
    fail_next: int = 0  # fail the next N authorized requests
    quote_authorization: bool = False  # answer 200 with an error quoting the Authorization sent, as a relay may
    fail_status: int = 500


def take_failure(cfg: Any) -> Optional[int]:
    """Consume one ``fail_next`` of an IMDS/ECS config; the status to fail with, or None."""
    if cfg.fail_next <= 0:
        return None
    cfg.fail_next -= 1
    return cfg.fail_status


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
        #: A chunk's write waits for the reader: everything on the way
        #: (the proxy's buffers included) is full.
        self.blocked_on_write = False
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
            "blocked_on_write": self.blocked_on_write,
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
        # With --h2-port: forwards ordinary operations to the HTTP/1.1 app (h2relay.H2Relay).
        self.h2_relay: Optional[Any] = None

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
