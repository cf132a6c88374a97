"""Fake STS: AssumeRoleWithWebIdentity, GetCallerIdentity and injected failures."""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
from typing import Callable, Optional

import pytest
from botocore.exceptions import ClientError

from harness import HTTP, ROLE_ARN, Fake, assume, control, sts_client


def test_assume_role_response_parses_with_boto3(fake: Fake):
    before = dt.datetime.now(dt.timezone.utc)
    resp = assume(fake, token="tok-123", session="pod-a")
    creds = resp["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["AccessKeyId"]) == 20
    assert creds["AccessKeyId"][4:].isalnum() and creds["AccessKeyId"][4:].upper() == creds["AccessKeyId"][4:]
    assert len(creds["SecretAccessKey"]) == 40 and creds["SessionToken"]
    assert dt.timedelta(seconds=3590) < creds["Expiration"] - before <= dt.timedelta(seconds=3601)
    assert resp["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/pod-a"
    assert resp["AssumedRoleUser"]["AssumedRoleId"].endswith(":pod-a")
    assert resp["Audience"] and resp["Provider"] and resp["SubjectFromWebIdentityToken"]
    second = assume(fake, token="tok-123", session="pod-a")["Credentials"]
    assert second["AccessKeyId"] != creds["AccessKeyId"], "fresh credentials on every call"
    calls = control(fake, "GET", "/sts/calls")
    assert [c["token"] for c in calls] == ["tok-123", "tok-123"]
    assert calls[0]["role_arn"] == ROLE_ARN and calls[0]["role_session_name"] == "pod-a"
    assert calls[0]["result"] == "ok" and calls[0]["access_key_id"] == creds["AccessKeyId"]
    assert calls[0]["signed"] is False


def test_assume_role_lifetime_rounds_expiration_down(fake: Fake):
    control(fake, "POST", "/sts", {"lifetime_seconds": 2.5})
    t0 = time.time()
    creds = assume(fake)["Credentials"]
    call = control(fake, "GET", "/sts/calls")[-1]
    assert t0 + 2.5 <= call["expires_at"] <= time.time() + 2.5
    assert creds["Expiration"].timestamp() == int(call["expires_at"]) <= call["expires_at"]


def test_duration_seconds_used_when_lifetime_not_configured(fake: Fake):
    t0 = time.time()
    assume(fake, DurationSeconds=900)
    call = control(fake, "GET", "/sts/calls")[-1]
    assert call["duration_seconds"] == "900"
    assert abs(call["expires_at"] - (t0 + 900)) < 5


@pytest.mark.parametrize(
    "role_arn, session, message_part",
    [
        ("arn:aws:iam::12345:role/x", "sess", "roleArn"),
        ("arn:aws:iam::123456789012:user/x", "sess", "roleArn"),
        (ROLE_ARN, "s", "roleSessionName"),
        (ROLE_ARN, "bad session!", "roleSessionName"),
    ],
)
def test_assume_role_validation(fake: Fake, role_arn: str, session: str, message_part: str):
    # Raw form post: boto3 would reject some of these client-side.
    form = urllib.parse.urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role_arn,
                                   "RoleSessionName": session, "WebIdentityToken": "tok1"})
    resp = HTTP.request("POST", fake.sts + "/", body=form.encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400
    assert "<Code>ValidationError</Code>" in resp.data.decode() and message_part in resp.data.decode()


def test_accept_tokens(fake: Fake):
    control(fake, "POST", "/sts", {"accept_tokens": ["good-token"]})
    assert assume(fake, token="good-token")["Credentials"]["AccessKeyId"].startswith("ASIA")
    with pytest.raises(ClientError) as exc:
        assume(fake, token="bad-token")
    assert exc.value.response["Error"]["Code"] == "InvalidIdentityToken"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    control(fake, "POST", "/sts", {"accept_tokens": None})
    assume(fake, token="anything")
    results = [(c["token"], c["result"], c["error_code"]) for c in control(fake, "GET", "/sts/calls")]
    assert results == [("good-token", "ok", None), ("bad-token", "error", "InvalidIdentityToken"), ("anything", "ok", None)]


def test_a_refused_token_can_be_quoted_in_the_error(fake: Fake):
    control(fake, "POST", "/sts", {"accept_tokens": ["good-token"]})
    with pytest.raises(ClientError) as exc:
        assume(fake, token="bad-token")
    assert "bad-token" not in exc.value.response["Error"]["Message"]
    control(fake, "POST", "/sts", {"quote_refused_tokens": True})
    with pytest.raises(ClientError) as exc:
        assume(fake, token="bad-token")
    assert exc.value.response["Error"]["Message"].endswith(": bad-token")


def test_fail_next_then_recover(fake: Fake):
    control(fake, "POST", "/sts", {"fail_next": 2, "fail_code": "IDPCommunicationError"})
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            assume(fake)
        assert exc.value.response["Error"]["Code"] == "IDPCommunicationError"
    assert assume(fake)["Credentials"]["AccessKeyId"].startswith("ASIA")


@pytest.mark.parametrize(
    "code, status, expected_status",
    [("InternalFailure", None, 500), ("AccessDenied", None, 403), ("Throttling", 503, 503), ("ExpiredTokenException", None, 400)],
)
def test_fail_always_codes_and_status(fake: Fake, code: str, status: Optional[int], expected_status: int):
    cfg: dict = {"fail_always": True, "fail_code": code}
    if status:
        cfg["fail_status"] = status
    control(fake, "POST", "/sts", cfg)
    for _ in range(2):
        resp = HTTP.request("POST", fake.sts + "/", body=b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status == expected_status
        assert f"<Code>{code}</Code>" in resp.data.decode()
        assert ("<Type>Receiver</Type>" if expected_status >= 500 else "<Type>Sender</Type>") in resp.data.decode()


def test_sts_delay_is_applied(fake: Fake):
    control(fake, "POST", "/sts", {"delay_seconds": 0.3})
    t0 = time.monotonic()
    assume(fake)
    assert time.monotonic() - t0 >= 0.3


def test_get_caller_identity(fake: Fake, sts_creds: dict, static_creds: dict):
    ident = sts_client(fake, sts_creds).get_caller_identity()
    assert ident["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/sess-1"
    assert ident["Account"] == "123456789012" and ident["UserId"].endswith(":sess-1")
    assert sts_client(fake, static_creds).get_caller_identity()["Arn"] == "arn:aws:iam::123456789012:user/static-user"


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda c: {**c, "SecretAccessKey": "wrong" + c["SecretAccessKey"][5:]}, "SignatureDoesNotMatch"),
        (lambda c: {**c, "AccessKeyId": "ASIAUNKNOWNKEY000000"}, "InvalidClientTokenId"),
        (lambda c: {**c, "SessionToken": "not-the-issued-token"}, "InvalidClientTokenId"),
    ],
)
def test_get_caller_identity_rejections(fake: Fake, sts_creds: dict, mutate: Callable, code: str):
    with pytest.raises(ClientError) as exc:
        sts_client(fake, mutate(sts_creds)).get_caller_identity()
    assert exc.value.response["Error"]["Code"] == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_get_caller_identity_expired(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/credentials/expire", {"access_key_id": sts_creds["AccessKeyId"]})
    with pytest.raises(ClientError) as exc:
        sts_client(fake, sts_creds).get_caller_identity()
    assert exc.value.response["Error"]["Code"] == "ExpiredToken"


def test_unknown_action(fake: Fake):
    resp = HTTP.request("POST", fake.sts + "/", body=b"Action=Nope&Version=2011-06-15")
    assert resp.status == 400 and b"<Code>InvalidAction</Code>" in resp.data


def test_a_padded_answer_is_still_a_valid_answer(fake: Fake):
    control(fake, "POST", "/sts", {"pad_answer_bytes": 300_000})
    assert assume(fake)["Credentials"]["AccessKeyId"].startswith("ASIA")
