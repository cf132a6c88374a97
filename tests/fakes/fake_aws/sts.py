"""Fake STS: ``POST /`` (or GET with a query) on the STS port, dispatching on ``Action``.

``AssumeRoleWithWebIdentity`` is unsigned.  ``AssumeRole`` (role chaining) and
``GetCallerIdentity`` must be SigV4-signed (service ``sts``) by a credential the
fake accepts, and are verified exactly like Bedrock requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from typing import Optional
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape as xml_escape

from aiohttp import web

from .common import iso8601_floor
from .credentials import issue_credential
from .sigv4 import expected_signing_text, verify_sigv4
from .state import STATE_KEY, Credential, FakeState, StsConfig
from .sts_params import (
    STS_VERSION,
    has_session_policies,
    packed_policy_size,
    policy_arn_params,
    recorded_policy,
    validate_assume_role,
)
from .sts_xml import (
    assume_role_response_xml,
    caller_identity_response_xml,
    chained_role_response_xml,
    sts_error,
    xml_response,
)

log = logging.getLogger(__name__)

# Actions whose failures can be injected (``fail_action``); None targets both.
STS_ISSUING_ACTIONS = ("AssumeRoleWithWebIdentity", "AssumeRole")

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
    # The time an SDK reads clock skew from, as STS's clock has it.
    resp.headers["Date"] = formatdate(time.time() + state.sts.clock_offset_seconds, usegmt=True)
    log.info("sts %s -> %d", action, resp.status)
    return resp


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
    if state.sts.html_answer:
        page = web.Response(status=200, text="<html><body>Sign in to the proxy</body></html>", content_type="text/html")
        return _finish(record, page, "html_answer")
    problem = validate_assume_role(params, "AssumeRoleWithWebIdentity")
    if problem:
        code, message = problem
        return _finish(record, sts_error(400, code, message), code)
    token = params["WebIdentityToken"]
    if state.sts.accept_tokens is not None and token not in state.sts.accept_tokens:
        msg = "Couldn't retrieve verification key from your identity provider, or token not accepted"
        if state.sts.quote_refused_tokens:
            msg += f": {token}"
        return _finish(record, sts_error(400, "InvalidIdentityToken", msg), "InvalidIdentityToken")
    cred = issue_credential(state, params["RoleArn"], params["RoleSessionName"], params.get("DurationSeconds"))
    _record_issued(record, cred)
    packed = packed_policy_size(params) if has_session_policies(params) else None
    answer = assume_role_response_xml(cred, token, packed)
    if state.sts.garbled_secret:
        secret = xml_escape(cred.secret_access_key)
        answer = answer.replace(f"<SecretAccessKey>{secret}<", f"<SecretAccessKey>&#x{secret};<", 1)
    if state.sts.pad_answer_bytes > 0:
        record["status"], record["result"] = 200, "ok"
        return await _padded(request, answer, state.sts.pad_answer_bytes)
    return _finish(record, xml_response(200, answer))


async def _padded(request: web.Request, answer: str, pad: int) -> web.StreamResponse:
    """``answer`` followed by ``pad`` bytes of whitespace, streamed chunked."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/xml"})
    await resp.prepare(request)
    await resp.write(answer.encode())
    chunk = b" " * 65536
    try:
        while pad > 0:
            await resp.write(chunk[:pad])
            pad -= len(chunk)
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client stopped reading: what a bounded reader does
    return resp


def _verify_sts_signature(state: FakeState, request: web.Request, body: bytes, record: dict) -> tuple:
    """``(credential, None)`` for a valid SigV4 (service ``sts``) request, else ``(None, error)``."""
    if state.sts.quote_security_token:
        code = "InvalidClientTokenId"
        quoted = request.headers.get("X-Amz-Security-Token", "")
        message = f"The security token '{quoted}' included in the request is invalid."
        return None, _finish(record, sts_error(403, code, message), code)
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
        clock_offset=state.sts.clock_offset_seconds,
    )
    record["source_access_key_id"] = check.access_key_id
    if check.credential is not None:
        record["source_arn"] = check.credential.arn
    if not check.ok:
        code = STS_SIG_ERRORS[check.kind]
        record["rejection"] = check.message
        message = check.message + expected_signing_text(check)
        return None, _finish(record, sts_error(403, code, message), code)
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
    problem = validate_assume_role(params, "AssumeRole")
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
    return _finish(record, xml_response(200, caller_identity_response_xml(cred)))
