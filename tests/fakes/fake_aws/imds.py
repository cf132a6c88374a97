"""Fake EC2 instance metadata service (IMDSv2), served under ``/imds/`` on the STS port.

Point ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` at ``http://127.0.0.1:P1/imds/``.
The credentials it hands out are minted like STS ones, so fake Bedrock
accepts them.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
from typing import Optional

from aiohttp import web

from .common import iso8601_floor, random_chars
from .credentials import credential_record_fields, issue_credential
from .state import DEFAULT_ACCOUNT, STATE_KEY, FakeState, take_failure

log = logging.getLogger(__name__)

IMDS_PREFIX = "/imds"
IMDS_INSTANCE_ID = "i-0123456789abcdef0"
IMDS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
IMDS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
IMDS_MAX_TOKEN_TTL = 21600
IMDS_CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
IMDS_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)


def _text(status: int, text: str, headers: Optional[dict] = None) -> web.Response:
    """A ``text/plain`` response, as IMDS sends (even for the credentials JSON)."""
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


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
    failed = take_failure(cfg)
    if failed is not None:
        text = f"injected failure for {IMDS_TOKEN_HEADER}: {token}" if cfg.quote_token else "injected failure"
        return _text(failed, text), f"injected {failed}"
    return _imds_metadata(state, path, record, token or "")


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


def _imds_metadata(state: FakeState, path: str, record: dict, token: str) -> tuple:
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
        if cfg.error_code is not None:
            # IMDS's own error shape, in a 200 (as when EC2 cannot assume the role).
            message = f"refused for {IMDS_TOKEN_HEADER}: {token}" if cfg.quote_token else "refused"
            body = {"Code": cfg.error_code, "LastUpdated": iso8601_floor(time.time()), "Message": message}
            return _text(200, json.dumps(body, indent=2)), f"answered {cfg.error_code}"
        role_arn = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/{role}"
        cred = issue_credential(state, role_arn, IMDS_INSTANCE_ID, None)
        credential_record_fields(record, cred)
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
