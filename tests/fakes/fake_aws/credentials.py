"""Temporary credentials minted the way STS does, for STS itself, the fake IMDS and the container endpoint."""

from __future__ import annotations

import re
import string
import time
from typing import Optional

from .common import iso8601_floor, random_chars
from .state import Credential, FakeState

ROLE_ARN_RE = re.compile(r"^arn:aws:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$", re.ASCII)
DEFAULT_LIFETIME_SECONDS = 3600.0


def session_token() -> str:
    """A token shaped like STS's: base64, so with ``+``, ``/`` and ``=``
    in it (each at least once), which encoders of error bodies escape,
    and the run of slashes real ones have (``EPT//////////wE`` in AWS's
    documented example), which ordinary text may hold too. Twelve here
    (a run is as long as the bytes it encodes, and a neighbour may be a
    slash too): a piece of 8 with four different characters reaches five
    slashes into a run from either end, so blanking by pieces alone would
    leave the middle of every token's run."""
    b64 = string.ascii_letters + string.digits + "+/"
    return (
        "IQoJb3JpZ2luX2VjE" + random_chars(20, b64) + "x////////////w" + random_chars(40, b64)
        + "+" + random_chars(30, b64) + "/" + random_chars(28, b64) + "=="
    )


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
        session_token=session_token(),
        expires_at=time.time() + state.sts.clock_offset_seconds + lifetime,
        arn=f"arn:aws:sts::{account}:assumed-role/{role_name}/{session}",
        user_id=f"{role_id}:{session}",
        account=account,
        kind="sts",
        role_arn=role_arn,
    )
    state.credentials[cred.access_key_id] = cred
    return cred


def credential_record_fields(record: dict, cred: Credential) -> None:
    """Note in an IMDS or container-credentials call record the credential it handed out."""
    record.update(
        access_key_id=cred.access_key_id,
        principal_arn=cred.arn,
        expiration=iso8601_floor(cred.expires_at or 0),
        expires_at=cred.expires_at,
    )
