"""Fake container-credentials endpoint (ECS / EKS Pod Identity agent): any GET under ``/ecs/`` on the STS port.

For example ``AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:P1/ecs/v1/credentials``.
The credentials it hands out are minted like STS ones, so fake Bedrock
accepts them.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Optional

from aiohttp import web

from .common import iso8601_floor, json_response
from .credentials import credential_record_fields, issue_credential
from .state import STATE_KEY, EcsConfig, FakeState, take_failure

log = logging.getLogger(__name__)

ECS_PREFIX = "/ecs"
ECS_SESSION_NAME = "eks-pod"


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
    failed = take_failure(cfg)
    if failed is not None:
        return json_response(failed, {"message": "injected failure"}), f"injected {failed}"
    if cfg.quote_authorization:
        # The protocol's error shape, which SDKs read from a 200 answer.
        body = {"Code": "AccessDenied", "Message": f"Authorization {authz} may not assume {cfg.role_arn}"}
        return json_response(200, body), "quoted the Authorization"
    cred = issue_credential(state, cfg.role_arn, ECS_SESSION_NAME, None)
    credential_record_fields(record, cred)
    body = {
        "AccessKeyId": cred.access_key_id,
        "SecretAccessKey": cred.secret_access_key,
        "Token": cred.session_token,
        "Expiration": iso8601_floor(cred.expires_at or 0),
        "RoleArn": cfg.role_arn,
    }
    return json_response(200, body), None
