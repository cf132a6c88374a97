"""SigV4 verification of Bedrock requests: what botocore's canonicalisation accepts, and each way a signature fails."""

from __future__ import annotations

import datetime as dt
import json
from typing import Callable

import pytest

from harness import (
    MODEL,
    PROFILE_ARN,
    Fake,
    assume,
    bedrock_requests,
    control,
    converse_body,
    runtime_client,
    send,
    sign,
    wait_until,
)


def test_inference_profile_arn_is_percent_encoded_in_path(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds)
    out = client.converse(modelId=PROFILE_ARN, messages=[{"role": "user", "content": [{"text": "arn"}]}])
    assert PROFILE_ARN in out["output"]["message"]["content"][0]["text"]
    rec = bedrock_requests(fake)[-1]
    assert rec["raw_path"] == "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert rec["model_id"] == PROFILE_ARN and rec["verified"]
    # botocore double-encodes '%' in the canonical URI (non-S3 SigV4 rule).
    assert "%253Aaws%253Abedrock" in rec["canonical_request"].split("\n")[1]


def test_raw_colon_in_path_is_accepted(fake: Fake, sts_creds: dict):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = converse_body()
    resp = send(url, body, sign(url, body, sts_creds))
    assert resp.status == 200, resp.data
    rec = bedrock_requests(fake)[-1]
    assert rec["raw_path"] == f"/model/{MODEL}/converse" and rec["model_id"] == MODEL
    assert rec["canonical_request"].split("\n")[1] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"


def test_unencoded_arn_slash_is_not_a_route(fake: Fake, sts_creds: dict):
    url = f"{fake.bedrock}/model/{PROFILE_ARN}/converse"
    body = converse_body()
    resp = send(url, body, sign(url, body, sts_creds))
    assert resp.status == 404
    assert resp.headers["x-amzn-ErrorType"] == "UnknownOperationException"


def test_query_string_is_signed(fake: Fake, static_creds: dict):
    url = f"{fake.bedrock}/openai/v1/models?b=2&a=1"
    resp = send(url, b"", sign(url, b"", static_creds, method="GET"), method="GET")
    assert resp.status == 200, resp.data
    assert json.loads(resp.data)["object"] == "list"
    rec = bedrock_requests(fake)[-1]
    assert rec["query"] == "b=2&a=1" and rec["auth"] == f"sigv4:{static_creds['AccessKeyId']}"


def test_unsigned_security_token_is_accepted_and_recorded(fake: Fake, sts_creds: dict):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = converse_body()
    headers = sign(url, body, {**sts_creds, "SessionToken": None})
    headers["X-Amz-Security-Token"] = sts_creds["SessionToken"]
    assert send(url, body, headers).status == 200
    assert bedrock_requests(fake)[-1]["security_token_signed"] is False


def test_static_key_with_session_token(fake: Fake):
    creds = {"AccessKeyId": "AKIASTATICWITHTOKEN1", "SecretAccessKey": "s" * 40, "SessionToken": "static-token"}
    control(fake, "POST", "/static_keys", {"access_key_id": creds["AccessKeyId"], "secret_access_key": creds["SecretAccessKey"],
                                           "session_token": creds["SessionToken"]})
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    assert send(url, converse_body(), sign(url, converse_body(), creds)).status == 200
    assert send(url, converse_body(), sign(url, converse_body(), {**creds, "SessionToken": None})).status == 403


def test_double_slash_path_verifies_but_does_not_route(fake: Fake, static_creds: dict):
    # botocore (both when signing and in the fake) collapses '//' in the canonical URI,
    # so the signature verifies; routing is on the raw path, so it is not a model route.
    url = f"{fake.bedrock}//model/{MODEL}/converse"
    resp = send(url, converse_body(), sign(url, converse_body(), static_creds))
    assert resp.status == 404
    rec = bedrock_requests(fake)[-1]
    assert rec["verified"] and rec["raw_path"].startswith("//model/")
    assert rec["canonical_request"].split("\n")[1].startswith("/model/")


def _tamper_cases():
    """(name, builder(url, body, creds) -> (body, headers), error type, rejection substring)."""

    def body_changed(url, body, creds):
        return body + b" ", sign(url, body, creds)

    def signed_header_changed(url, body, creds):
        headers = sign(url, body, creds, headers={"x-test-id": "a"})
        headers["x-test-id"] = "b"
        return body, headers

    def wrong_secret(url, body, creds):
        return body, sign(url, body, {**creds, "SecretAccessKey": "x" * 40})

    def unknown_key(url, body, creds):
        return body, sign(url, body, {**creds, "AccessKeyId": "ASIAUNKNOWN000000000"})

    def missing_token(url, body, creds):
        headers = sign(url, body, creds)
        del headers["X-Amz-Security-Token"]
        return body, headers

    def wrong_token(url, body, creds):
        return body, sign(url, body, {**creds, "SessionToken": "forged"})

    def wrong_region(url, body, creds):
        return body, sign(url, body, creds, region="eu-west-1")

    def wrong_service(url, body, creds):
        return body, sign(url, body, creds, service="bedrock-runtime")

    def stale_date(url, body, creds):
        old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=6)
        return body, sign(url, body, creds, when=old)

    def content_sha_lie(url, body, creds):
        return body, sign(url, body, creds, headers={"X-Amz-Content-SHA256": "0" * 64})

    def user_agent_signed(url, body, creds):
        headers = sign(url, body, creds)
        headers["Authorization"] = headers["Authorization"].replace(
            "SignedHeaders=content-type;host;", "SignedHeaders=content-type;host;user-agent;")
        headers["User-Agent"] = "ua"
        return body, headers

    def host_not_signed(url, body, creds):
        headers = sign(url, body, creds)
        headers["Authorization"] = headers["Authorization"].replace(";host;", ";")
        return body, headers

    return [
        ("body_changed", body_changed, "InvalidSignatureException", "signature mismatch"),
        ("signed_header_changed", signed_header_changed, "InvalidSignatureException", "signature mismatch"),
        ("wrong_secret", wrong_secret, "InvalidSignatureException", "signature mismatch"),
        ("unknown_key", unknown_key, "UnrecognizedClientException", "unknown access key"),
        ("missing_token", missing_token, "UnrecognizedClientException", "missing"),
        ("wrong_token", wrong_token, "UnrecognizedClientException", "does not match"),
        ("wrong_region", wrong_region, "InvalidSignatureException", "region"),
        ("wrong_service", wrong_service, "InvalidSignatureException", "service"),
        ("stale_date", stale_date, "InvalidSignatureException", "Signature expired"),
        ("content_sha_lie", content_sha_lie, "InvalidSignatureException", "X-Amz-Content-SHA256"),
        ("user_agent_signed", user_agent_signed, "InvalidSignatureException", "user-agent"),
        ("host_not_signed", host_not_signed, "InvalidSignatureException", "'host'"),
    ]


@pytest.mark.parametrize("name, build, error_type, reason", _tamper_cases(), ids=[c[0] for c in _tamper_cases()])
def test_tampered_sigv4_rejected(fake: Fake, sts_creds: dict, name: str, build: Callable, error_type: str, reason: str):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body, headers = build(url, converse_body(), sts_creds)
    resp = send(url, body, headers)
    assert resp.status == 403, resp.data
    assert resp.headers["x-amzn-ErrorType"] == error_type
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "message" in json.loads(resp.data)
    rec = bedrock_requests(fake)[-1]
    assert rec["auth_kind"] == "sigv4" and rec["verified"] is False and rec["status"] == 403
    assert reason in rec["rejection"], rec["rejection"]
    if error_type == "InvalidSignatureException" and "mismatch" in reason:
        assert json.loads(resp.data)["message"].startswith("The request signature we calculated does not match")
        assert "canonical request" in fake.stderr()


def test_expired_sts_credentials_rejected_after_lifetime(fake: Fake):
    control(fake, "POST", "/sts", {"lifetime_seconds": 1.0})
    creds = assume(fake)["Credentials"]
    url = f"{fake.bedrock}/model/{MODEL}/converse"

    def status() -> int:
        return send(url, converse_body(), sign(url, converse_body(), creds)).status

    assert status() == 200
    wait_until(lambda: status() == 403, timeout=10, interval=0.2, what="credentials to expire")
    rec = bedrock_requests(fake)[-1]
    assert rec["error_type"] == "ExpiredTokenException" and rec["rejection"].startswith("expired")


def test_missing_or_foreign_auth(fake: Fake):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        resp = send(url, converse_body(), headers)
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert json.loads(resp.data) == {"message": "Missing Authentication Token"}
    assert [r["auth_kind"] for r in bedrock_requests(fake)] == ["none", "none"]


def test_auth_checked_before_routing(fake: Fake):
    resp = send(f"{fake.bedrock}/no/such/path", b"", {}, method="GET")
    assert resp.status == 403
    resp = send(f"{fake.bedrock}/no/such/path", b"", {"Authorization": "Bearer ABSK-x"}, method="GET")
    assert resp.status == 404 and json.loads(resp.data) == {"message": "UnknownOperationException"}


def test_signing_name_configurable(fake: Fake, static_creds: dict):
    control(fake, "POST", "/bedrock", {"signing_name": "bedrock-runtime"})
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    assert send(url, converse_body(), sign(url, converse_body(), static_creds)).status == 403
    assert send(url, converse_body(), sign(url, converse_body(), static_creds, service="bedrock-runtime")).status == 200
