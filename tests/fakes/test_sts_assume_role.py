"""Fake STS: AssumeRole (role chaining), session policies, and the principal each credential shows Bedrock."""

from __future__ import annotations

import html
import json
import time
import urllib.parse
from typing import Any

import pytest
from botocore.exceptions import ClientError

from harness import (
    MODEL,
    ROLE_ARN,
    Fake,
    assume,
    bedrock_requests,
    control,
    control_status,
    converse_body,
    error_code,
    raw_sts,
    runtime_client,
    send,
    sign,
    sts_client,
)


TARGET_ROLE_ARN = "arn:aws:iam::210987654321:role/path/target-role"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "bedrock:InvokeModel", "Resource": "*"}]}
POLICY_ARNS = ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::123456789012:policy/team/bedrock-invoke"]


def test_assume_role_chained_from_web_identity_with_boto3(fake: Fake, sts_creds: dict):
    t0 = time.time()
    resp = sts_client(fake, sts_creds).assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="chain-1", DurationSeconds=1800)
    creds = resp["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and creds["AccessKeyId"] != sts_creds["AccessKeyId"]
    assert len(creds["SecretAccessKey"]) == 40 and creds["SessionToken"]
    assert resp["AssumedRoleUser"]["Arn"] == "arn:aws:sts::210987654321:assumed-role/target-role/chain-1"
    assert resp["AssumedRoleUser"]["AssumedRoleId"].startswith("AROA")
    assert resp["AssumedRoleUser"]["AssumedRoleId"].endswith(":chain-1")
    assert resp["PackedPolicySize"] == 0
    ident = sts_client(fake, creds).get_caller_identity()
    assert ident["Arn"] == resp["AssumedRoleUser"]["Arn"] and ident["Account"] == "210987654321"

    # Chain once more, signed with the AssumeRole-issued credentials.
    again = sts_client(fake, creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="chain-2")
    assert again["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/chain-2"

    calls = control(fake, "GET", "/sts/calls?action=AssumeRole")
    assert len(calls) == 2
    first, second = calls
    assert first["signed"] is True and first["result"] == "ok" and first["status"] == 200
    assert first["source_access_key_id"] == sts_creds["AccessKeyId"]
    assert first["source_arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/sess-1"
    assert first["access_key_id"] == creds["AccessKeyId"]
    assert first["assumed_role_arn"] == resp["AssumedRoleUser"]["Arn"]
    assert first["role_arn"] == TARGET_ROLE_ARN and first["role_session_name"] == "chain-1"
    assert first["duration_seconds"] == "1800" and abs(first["expires_at"] - (t0 + 1800)) < 5
    assert first["external_id"] is None and first["policy"] is None and first["policy_arns"] == []
    assert creds["Expiration"].timestamp() == int(first["expires_at"])
    assert second["source_access_key_id"] == creds["AccessKeyId"]
    listed = {c["access_key_id"]: c for c in control(fake, "GET", "/credentials")}
    assert listed[creds["AccessKeyId"]]["role_arn"] == TARGET_ROLE_ARN
    assert listed[creds["AccessKeyId"]]["arn"] == resp["AssumedRoleUser"]["Arn"]


def test_assume_role_response_xml_shape(fake: Fake, sts_creds: dict):
    resp = raw_sts(fake, {"Action": "AssumeRole", "RoleArn": TARGET_ROLE_ARN, "RoleSessionName": "xml"}, sts_creds)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/xml")
    text = resp.data.decode()
    assert text.startswith('<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials>')
    order = ["<AccessKeyId>", "<SecretAccessKey>", "<SessionToken>", "<Expiration>", "</Credentials>", "<AssumedRoleUser>",
             "<AssumedRoleId>", "<Arn>", "</AssumedRoleUser>", "<PackedPolicySize>0</PackedPolicySize>",
             "</AssumeRoleResult>", "<ResponseMetadata><RequestId>", "</AssumeRoleResponse>"]
    positions = [text.index(tag) for tag in order]
    assert positions == sorted(positions)


def test_assume_role_with_static_key(fake: Fake, static_creds: dict):
    resp = sts_client(fake, static_creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="from-static")
    assert resp["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-broker/from-static"
    call = control(fake, "GET", "/sts/calls")[-1]
    assert call["source_access_key_id"] == static_creds["AccessKeyId"]
    assert call["source_arn"] == "arn:aws:iam::123456789012:user/static-user"


def test_assume_role_lifetime_override(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/sts", {"lifetime_seconds": 2.5})
    t0 = time.time()
    sts_client(fake, sts_creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="short", DurationSeconds=3600)
    call = control(fake, "GET", "/sts/calls?action=AssumeRole")[-1]
    assert t0 + 2.5 <= call["expires_at"] <= time.time() + 2.5


def test_assume_role_signature_rejections(fake: Fake, sts_creds: dict):
    form = {"Action": "AssumeRole", "RoleArn": ROLE_ARN, "RoleSessionName": "sig"}
    unsigned = raw_sts(fake, form)
    assert unsigned.status == 403 and error_code(unsigned) == "MissingAuthenticationToken"
    wrong_secret = {**sts_creds, "SecretAccessKey": "x" * 40}
    bad = raw_sts(fake, form, wrong_secret)
    assert bad.status == 403 and error_code(bad) == "SignatureDoesNotMatch"
    # As AWS does, the message quotes the canonical request it expected,
    # the session token's header line included.
    message = html.unescape(bad.data.decode().split("<Message>", 1)[1].split("</Message>", 1)[0])
    assert "The Canonical String for this request should have been" in message
    assert f"x-amz-security-token:{sts_creds['SessionToken']}\n" in message
    unknown = raw_sts(fake, form, {**sts_creds, "AccessKeyId": "ASIAUNKNOWNKEY000000"})
    assert unknown.status == 403 and error_code(unknown) == "InvalidClientTokenId"
    wrong_service = send(fake.sts + "/", urllib.parse.urlencode(form).encode(),
                         sign(fake.sts + "/", urllib.parse.urlencode(form).encode(), sts_creds, service="bedrock",
                              headers={"Content-Type": "application/x-www-form-urlencoded"}))
    assert wrong_service.status == 403 and error_code(wrong_service) == "SignatureDoesNotMatch"
    control(fake, "POST", "/credentials/expire", {"access_key_id": sts_creds["AccessKeyId"]})
    with pytest.raises(ClientError) as exc:
        sts_client(fake, sts_creds).assume_role(RoleArn=ROLE_ARN, RoleSessionName="sig")
    assert exc.value.response["Error"]["Code"] == "ExpiredToken"
    calls = control(fake, "GET", "/sts/calls?action=AssumeRole")
    assert [c["error_code"] for c in calls] == [
        "MissingAuthenticationToken", "SignatureDoesNotMatch", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"]
    assert calls[0]["source_access_key_id"] is None and calls[0]["signed"] is False
    assert calls[1]["source_access_key_id"] == sts_creds["AccessKeyId"] and calls[1]["rejection"]
    assert all(c["access_key_id"] is None for c in calls)


@pytest.mark.parametrize(
    "extra, code, message_part",
    [
        ({"RoleArn": "arn:aws:iam::12345:role/x"}, "ValidationError", "roleArn"),
        ({"RoleArn": "arn:aws:iam::123456789012:user/x"}, "ValidationError", "roleArn"),
        ({"RoleSessionName": "s"}, "ValidationError", "roleSessionName"),
        ({"RoleSessionName": "bad session!"}, "ValidationError", "roleSessionName"),
        ({"DurationSeconds": "899"}, "ValidationError", "durationSeconds"),
        ({"DurationSeconds": "43201"}, "ValidationError", "durationSeconds"),
        ({"ExternalId": "x"}, "ValidationError", "externalId"),
        ({"ExternalId": "bad id!"}, "ValidationError", "externalId"),
        ({"Policy": "{not json"}, "MalformedPolicyDocument", "valid JSON"),
        ({"Policy": "[1, 2]"}, "MalformedPolicyDocument", "valid JSON"),
        ({"Policy": ""}, "ValidationError", "policy"),
        ({"Policy": json.dumps({"Statement": [], "pad": "x" * 2048})}, "ValidationError", "policy"),
        ({f"PolicyArns.member.{i}.arn": f"arn:aws:iam::aws:policy/P{i:02d}xxxxxxxx" for i in range(1, 12)},
         "ValidationError", "policyArns"),
        ({"PolicyArns.member.1.arn": "arn:aws:iam::123456789012:role/not-a-policy"}, "ValidationError", "policyArns.1"),
        ({"PolicyArns.member.2.arn": POLICY_ARNS[0]}, "ValidationError", "PolicyArns"),
    ],
)
def test_assume_role_validation_like_aws(fake: Fake, sts_creds: dict, extra: dict, code: str, message_part: str):
    form = {"Action": "AssumeRole", "RoleArn": ROLE_ARN, "RoleSessionName": "valid", **extra}
    resp = raw_sts(fake, form, sts_creds)
    assert resp.status == 400 and error_code(resp) == code
    assert message_part in resp.data.decode()
    call = control(fake, "GET", "/sts/calls")[-1]
    assert call["result"] == "error" and call["error_code"] == code and call["access_key_id"] is None
    if "Policy" in extra:
        assert call["policy"] == recorded_policy_of(extra["Policy"])


def recorded_policy_of(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def test_web_identity_validates_session_policies(fake: Fake):
    base = {"Action": "AssumeRoleWithWebIdentity", "RoleArn": ROLE_ARN, "RoleSessionName": "wi", "WebIdentityToken": "tok1"}
    bad_json = raw_sts(fake, {**base, "Policy": "{nope"})
    assert bad_json.status == 400 and error_code(bad_json) == "MalformedPolicyDocument"
    bad_arn = raw_sts(fake, {**base, "PolicyArns.member.1.arn": "arn:aws:s3:::bucket-not-policy"})
    assert bad_arn.status == 400 and error_code(bad_arn) == "ValidationError"
    too_many = raw_sts(fake, {**base, **{f"PolicyArns.member.{i}.arn": POLICY_ARNS[1] for i in range(1, 12)}})
    assert too_many.status == 400 and "policyArns" in too_many.data.decode()
    calls = control(fake, "GET", "/sts/calls")
    assert calls[0]["policy"] == "{nope"
    assert calls[1]["policy_arns"] == ["arn:aws:s3:::bucket-not-policy"]
    assert len(calls[2]["policy_arns"]) == 11


def test_session_policies_recorded_for_both_actions(fake: Fake):
    web = assume(fake, session="wi-pol", Policy=json.dumps(POLICY), PolicyArns=[{"arn": a} for a in POLICY_ARNS])
    assert 0 < web["PackedPolicySize"] <= 100
    chained = sts_client(fake, web["Credentials"]).assume_role(
        RoleArn=TARGET_ROLE_ARN, RoleSessionName="ar-pol", ExternalId="ext-123",
        Policy=json.dumps(POLICY, indent=2), PolicyArns=[{"arn": POLICY_ARNS[1]}])
    assert 0 < chained["PackedPolicySize"] <= 100
    plain = assume(fake)
    assert "PackedPolicySize" not in plain, "no session policies: element omitted, as AWS does"
    wi_call, ar_call, plain_call = control(fake, "GET", "/sts/calls")
    assert wi_call["action"] == "AssumeRoleWithWebIdentity"
    assert wi_call["policy"] == POLICY and wi_call["policy_arns"] == POLICY_ARNS
    assert wi_call["external_id"] is None and wi_call["source_access_key_id"] is None
    assert ar_call["action"] == "AssumeRole" and ar_call["policy"] == POLICY
    assert ar_call["policy_arns"] == [POLICY_ARNS[1]] and ar_call["external_id"] == "ext-123"
    assert plain_call["policy"] is None and plain_call["policy_arns"] == []


def test_policy_arns_recorded_in_member_order(fake: Fake, sts_creds: dict):
    arns = [f"arn:aws:iam::123456789012:policy/p{i}" for i in range(1, 11)]
    form = {"Action": "AssumeRole", "RoleArn": ROLE_ARN, "RoleSessionName": "order"}
    form.update({f"PolicyArns.member.{i}.arn": arns[i - 1] for i in range(10, 0, -1)})  # sent out of order
    assert raw_sts(fake, form, sts_creds).status == 200
    assert control(fake, "GET", "/sts/calls")[-1]["policy_arns"] == arns


def test_require_external_id(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/sts", {"require_external_id": {TARGET_ROLE_ARN: "ext-secret"}})
    client = sts_client(fake, sts_creds)
    for extra in ({}, {"ExternalId": "ext-wrong"}):
        with pytest.raises(ClientError) as exc:
            client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="ext", **extra)
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert "sts:AssumeRole" in exc.value.response["Error"]["Message"]
    assert client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="ext", ExternalId="ext-secret")["Credentials"]
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="other")["Credentials"], "other roles need no id"
    calls = control(fake, "GET", "/sts/calls?action=AssumeRole")
    assert [(c["external_id"], c["error_code"]) for c in calls] == [
        (None, "AccessDenied"), ("ext-wrong", "AccessDenied"), ("ext-secret", None), (None, None)]
    assert calls[0]["access_key_id"] is None and calls[2]["access_key_id"]
    assert control(fake, "GET", "/sts")["require_external_id"] == {TARGET_ROLE_ARN: "ext-secret"}


def test_deny_roles(fake: Fake, sts_creds: dict):
    control(fake, "POST", "/sts", {"deny_roles": [TARGET_ROLE_ARN]})
    client = sts_client(fake, sts_creds)
    with pytest.raises(ClientError) as exc:
        client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="denied")
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="allowed")["Credentials"]
    assert assume(fake, session="wi-unaffected")["Credentials"], "deny_roles applies to AssumeRole only"
    control(fake, "POST", "/reset", {})
    assert control(fake, "GET", "/sts")["deny_roles"] == []
    assert client.assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="after-reset")["Credentials"]


def test_fail_action_targets_one_action(fake: Fake, sts_creds: dict):
    client = sts_client(fake, sts_creds)
    control(fake, "POST", "/sts", {"fail_always": True, "fail_code": "Throttling", "fail_action": "AssumeRole"})
    assert assume(fake)["Credentials"]
    with pytest.raises(ClientError) as exc:
        client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x1")
    assert exc.value.response["Error"]["Code"] == "Throttling"

    # fail_next is consumed only by the targeted action.
    control(fake, "POST", "/sts", {"fail_always": False, "fail_next": 1, "fail_code": "IDPCommunicationError",
                                   "fail_action": "AssumeRoleWithWebIdentity"})
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x2")["Credentials"]
    assert control(fake, "GET", "/sts")["fail_next"] == 1
    with pytest.raises(ClientError) as exc:
        assume(fake)
    assert exc.value.response["Error"]["Code"] == "IDPCommunicationError"
    assert assume(fake)["Credentials"]

    # null targets both (the default).
    control(fake, "POST", "/sts", {"fail_next": 2, "fail_code": "InternalFailure", "fail_action": None})
    for call in (lambda: assume(fake), lambda: client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x3")):
        with pytest.raises(ClientError) as exc:
            call()
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert client.assume_role(RoleArn=ROLE_ARN, RoleSessionName="x4")["Credentials"]
    assert sts_client(fake, sts_creds).get_caller_identity()["Arn"], "GetCallerIdentity is never injected"

    results = [(c["action"], c["error_code"]) for c in control(fake, "GET", "/sts/calls")]
    assert results == [
        ("AssumeRoleWithWebIdentity", None),  # the sts_creds fixture
        ("AssumeRoleWithWebIdentity", None), ("AssumeRole", "Throttling"),
        ("AssumeRole", None), ("AssumeRoleWithWebIdentity", "IDPCommunicationError"), ("AssumeRoleWithWebIdentity", None),
        ("AssumeRoleWithWebIdentity", "InternalFailure"), ("AssumeRole", "InternalFailure"), ("AssumeRole", None),
        ("GetCallerIdentity", None),
    ]


def test_sts_control_validates_new_keys(fake: Fake):
    assert control_status(fake, "POST", "/sts", {"fail_action": "GetCallerIdentity"}) == 400
    assert control_status(fake, "POST", "/sts", {"require_external_id": ["x"]}) == 400
    assert control_status(fake, "POST", "/sts", {"require_external_id": {ROLE_ARN: 5}}) == 400
    assert control_status(fake, "POST", "/sts", {"deny_roles": ROLE_ARN}) == 400
    cfg = control(fake, "POST", "/sts", {"require_external_id": None, "deny_roles": None, "fail_action": "AssumeRole"})
    assert cfg["require_external_id"] == {} and cfg["deny_roles"] == [] and cfg["fail_action"] == "AssumeRole"
    control(fake, "POST", "/reset", {})
    assert control(fake, "GET", "/sts")["fail_action"] is None


def test_bedrock_records_principal_arn(fake: Fake, sts_creds: dict, static_creds: dict):
    chained = sts_client(fake, sts_creds).assume_role(RoleArn=TARGET_ROLE_ARN, RoleSessionName="invoker")
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    runtime_client(fake, chained["Credentials"], {"x-test-id": "p-chained"}).converse(modelId=MODEL, messages=messages)
    runtime_client(fake, sts_creds, {"x-test-id": "p-web"}).converse(modelId=MODEL, messages=messages)
    runtime_client(fake, static_creds, {"x-test-id": "p-static"}).converse(modelId=MODEL, messages=messages)
    send(f"{fake.bedrock}/model/{MODEL}/converse", converse_body(), {"Authorization": "Bearer ABSK1", "x-test-id": "p-bearer"})
    bad = {**chained["Credentials"], "SecretAccessKey": "y" * 40}
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    send(url, converse_body(), {**sign(url, converse_body(), bad), "x-test-id": "p-badsig"})
    unknown = {**sts_creds, "AccessKeyId": "ASIAUNKNOWNKEY000000"}
    send(url, converse_body(), {**sign(url, converse_body(), unknown), "x-test-id": "p-unknown"})

    def principal(test_id: str) -> tuple:
        (rec,) = bedrock_requests(fake, test_id=test_id)
        return rec["principal_arn"], rec["verified"]

    assert principal("p-chained") == ("arn:aws:sts::210987654321:assumed-role/target-role/invoker", True)
    assert principal("p-web") == ("arn:aws:sts::123456789012:assumed-role/bedrock-broker/sess-1", True)
    assert principal("p-static") == ("arn:aws:iam::123456789012:user/static-user", True)
    assert principal("p-bearer") == (None, True)
    assert principal("p-badsig") == ("arn:aws:sts::210987654321:assumed-role/target-role/invoker", False)
    assert principal("p-unknown") == (None, False)
