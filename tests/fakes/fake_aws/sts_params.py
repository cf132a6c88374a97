"""STS request parameters: AWS's validation rules, and the session policies the fake records."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from .credentials import ROLE_ARN_RE

STS_VERSION = "2011-06-15"
SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}$", re.ASCII)
POLICY_ARN_RE = re.compile(r"^arn:aws:iam::(?:\d{12}|aws):policy/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,128}$", re.ASCII)
POLICY_ARN_PARAM_RE = re.compile(r"^PolicyArns\.member\.(\d+)\.arn$")
MAX_POLICY_ARNS = 10
MAX_POLICY_CHARS = 2048


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


def _validation(message: str) -> tuple:
    return "ValidationError", f"1 validation error detected: {message}"


def validate_assume_role(params: dict, action: str) -> Optional[tuple]:
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
