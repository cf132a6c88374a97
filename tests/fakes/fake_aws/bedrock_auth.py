"""Authentication of Bedrock requests, which comes before anything else: API keys (bearer tokens) or SigV4."""

from __future__ import annotations

from typing import Optional

from aiohttp import web

from .bedrock_errors import aws_json_error
from .common import json_response
from .sigv4 import SigCheck, expected_signing_text, verify_sigv4
from .state import FakeState


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
        # One AWS clock: STS's and Bedrock's agree.
        clock_offset=state.sts.clock_offset_seconds,
    )
    if check.ok and request.headers.get("x-fake-sigv4-mismatch"):
        # A correct signature answered as a wrong one, with the body AWS
        # sends then (the canonical request, security token and all), so
        # tests can see what the client gets to read.
        check.kind, check.message = "signature", "forced by x-fake-sigv4-mismatch"
    record_sigv4_check(record, check)
    if check.ok:
        refusal = region_refusal(state, record)
        return refusal and aws_json_error(403, *refusal)
    error_type, message = sigv4_rejection(check)
    if request.headers.get("x-fake-sigv4-mismatch") == "type-in-body":
        # Some front ends name the error only in the body.
        return json_response(403, {"__type": error_type, "message": message})
    return aws_json_error(403, error_type, message)


def region_refusal(state: FakeState, record: dict) -> Optional[tuple]:
    """``(error type, message)`` for a valid signature refused because the
    account has not enabled the region (``region_enabled`` off), else None."""
    if state.bedrock.region_enabled:
        return None
    record["rejection"] = "region not enabled for the account"
    return BEDROCK_SIG_ERRORS["unknown_key"]


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
        message += expected_signing_text(check)
    return error_type, message or check.message
