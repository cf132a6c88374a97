"""SigV4 verification, independent of the broker's Rust signer: botocore recomputes every signature.

botocore's ``SigV4Auth.canonical_request`` / ``string_to_sign`` / ``signature``
run over the *raw* request path, query, the headers named in ``SignedHeaders``
and the raw body, so that the broker's signer is checked by a different
implementation.  The bidirectional stream's initial request goes through the
same check, with the signed payload hash ``STREAMING-AWS4-HMAC-SHA256-EVENTS``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .state import Credential, FakeState

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW_SECONDS = 300.0
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EVENTS_PAYLOAD_HASH = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
AUTH_SIGV4_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(?P<params>.+)$", re.S)


def parse_amz_date(value: str) -> Optional[float]:
    """Parse an ``X-Amz-Date`` (``YYYYMMDDTHHMMSSZ``) to epoch seconds."""
    try:
        return float(calendar.timegm(time.strptime(value, AMZ_DATE_FORMAT)))
    except (ValueError, TypeError):
        return None


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
    clock_offset: float = 0.0,
) -> SigCheck:
    """Verify a SigV4 ``Authorization`` header against the fake's credentials.

    Checks, in order: header syntax, access key known, credential not expired,
    session token matches, scope region/service, X-Amz-Date skew, the
    SignedHeaders list, the payload hash, then the signature recomputed by
    botocore.  With ``event_stream`` the payload hash must be the signed
    literal ``STREAMING-AWS4-HMAC-SHA256-EVENTS`` (the body is a stream of
    separately signed frames, not known up front) and ``body`` is ignored.
    ``clock_offset`` is the verifier's clock minus this machine's (STS's
    ``clock_offset_seconds``): the 5-minute skew check uses that clock.
    """
    now = time.time() + clock_offset
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


def expected_signing_text(check: SigCheck) -> str:
    """What AWS appends to a signature mismatch's message (Bedrock and STS
    alike): the canonical request and string to sign it expected, header
    values, ``x-amz-security-token`` too, included. Empty for other failures."""
    if check.kind != "signature" or check.canonical_request is None:
        return ""
    return (
        f"\n\nThe Canonical String for this request should have been\n'{check.canonical_request}'"
        f"\n\nThe String-to-Sign should have been\n'{check.string_to_sign}'\n"
    )


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
