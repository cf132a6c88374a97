"""The control API tests script the fake with, under ``/_control`` on the STS port.

Every endpoint takes and returns JSON.  ``tests/fakes/README.md`` documents
each one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any, Awaitable, Callable

from aiohttp import web

from .common import json_response, random_chars
from .credentials import ROLE_ARN_RE
from .imds import IMDS_ROLE_NAME_RE
from .state import DEFAULT_ACCOUNT, STATE_KEY, BedrockConfig, Credential, EcsConfig, FakeState, ImdsConfig, StsConfig
from .sts import STS_FAIL_STATUS, STS_ISSUING_ACTIONS


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
    """POST /_control/bedrock {"signing_name"?, "models"?, "compress"?, "region_enabled"?}: Bedrock behaviour."""
    data = await read_json(request)
    check_keys(data, set(BedrockConfig.__dataclass_fields__))
    for flag in ("compress", "region_enabled"):
        if flag in data and not isinstance(data[flag], bool):
            raise ValueError(f"{flag} must be true or false")
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


def _check_fail_fields(data: dict) -> None:
    if "fail_next" in data and (type(data["fail_next"]) is not int or data["fail_next"] < 0):
        raise ValueError("fail_next must be a non-negative integer")
    if "fail_status" in data and (type(data["fail_status"]) is not int or not 400 <= data["fail_status"] <= 599):
        raise ValueError("fail_status must be an integer 400..599")


async def ctl_imds(state: FakeState, request: web.Request) -> dict:
    """POST /_control/imds {role_name?, fail_next?, fail_status?, disabled?, quote_token?, error_code?}: IMDS behaviour."""
    data = await read_json(request)
    check_keys(data, set(ImdsConfig.__dataclass_fields__))
    role = data.get("role_name")
    if role is not None and not (isinstance(role, str) and IMDS_ROLE_NAME_RE.match(role)):
        raise ValueError("role_name must be null or a role name matching [\\w+=,.@-]{1,64}")
    for flag in ("disabled", "quote_token"):
        if flag in data and not isinstance(data[flag], bool):
            raise ValueError(f"{flag} must be a boolean")
    if data.get("error_code") is not None and not (isinstance(data["error_code"], str) and data["error_code"]):
        raise ValueError("error_code must be null or a non-empty string")
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
    """POST /_control/ecs {token?, role_arn?, fail_next?, fail_status?, quote_authorization?}: container-credentials behaviour."""
    data = await read_json(request)
    check_keys(data, set(EcsConfig.__dataclass_fields__))
    if "token" in data and data["token"] is not None and not isinstance(data["token"], str):
        raise ValueError("token must be a string or null")
    if "role_arn" in data and not (isinstance(data["role_arn"], str) and ROLE_ARN_RE.match(data["role_arn"])):
        raise ValueError("role_arn must be an IAM role ARN")
    if "quote_authorization" in data and not isinstance(data["quote_authorization"], bool):
        raise ValueError("quote_authorization must be a boolean")
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


CONTROL_ROUTES = [
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


def add_control_routes(app: web.Application) -> None:
    """Serve the control API on ``app`` (whose ``STATE_KEY`` is the state to control)."""
    for method, path, fn in CONTROL_ROUTES:
        app.router.add_route(method, path, control_endpoint(fn))
