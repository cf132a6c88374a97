"""STS query-protocol responses: the XML of each action's result, and ``<ErrorResponse>`` errors."""

from __future__ import annotations

import base64
import json
from typing import Optional
from xml.sax.saxutils import escape as xml_escape

from aiohttp import web

from .common import iso8601_floor, new_request_id
from .state import Credential

STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


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


def caller_identity_response_xml(cred: Credential) -> str:
    """The GetCallerIdentity success XML."""
    return (
        f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult>'
        f"<Arn>{xml_escape(cred.arn)}</Arn><UserId>{xml_escape(cred.user_id)}</UserId>"
        f"<Account>{cred.account}</Account></GetCallerIdentityResult>"
        f"<ResponseMetadata><RequestId>{new_request_id()}</RequestId></ResponseMetadata>"
        "</GetCallerIdentityResponse>"
    )
