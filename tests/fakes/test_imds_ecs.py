"""Fake IMDSv2 and container-credentials endpoint (both on the STS port), through botocore's own providers."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Optional

import boto3
import pytest
import urllib3

from harness import (
    HTTP,
    MODEL,
    REGION,
    Fake,
    assume,
    bedrock_requests,
    control,
    control_status,
    raw_sts,
    runtime_client,
    wait_until,
)


NODE_ROLE_ARN = "arn:aws:sts::123456789012:assumed-role/node-role/i-0123456789abcdef0"
POD_ROLE_ARN = "arn:aws:sts::123456789012:assumed-role/pod-identity-role/eks-pod"
AWS_ENV_TO_CLEAR = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_EC2_METADATA_V1_DISABLED", "AWS_BEARER_TOKEN_BEDROCK",
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
)


def imds_url(fake: Fake) -> str:
    """The value for AWS_EC2_METADATA_SERVICE_ENDPOINT (a path prefix on the STS port)."""
    return fake.sts + "/imds/"


def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the environment or from files, so the SDK chain reaches IMDS / container."""
    for name in AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def imds_token(fake: Fake, ttl: str = "21600") -> str:
    resp = HTTP.request("PUT", imds_url(fake) + "latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert resp.status == 200 and resp.headers["X-aws-ec2-metadata-token-ttl-seconds"] == ttl
    return resp.data.decode()


def imds_get(fake: Fake, path: str, token: Optional[str]) -> urllib3.BaseHTTPResponse:
    headers = {} if token is None else {"X-aws-ec2-metadata-token": token}
    return HTTP.request("GET", imds_url(fake) + path, headers=headers)


def converse_as(fake: Fake, creds: dict, test_id: str) -> dict:
    """Converse signed (botocore SigV4) with ``creds``; returns the fake's record of it."""
    out = runtime_client(fake, creds, {"x-test-id": test_id}).converse(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "from " + test_id}]}]
    )
    assert out["output"]["message"]["content"][0]["text"].endswith("to: from " + test_id)
    (rec,) = bedrock_requests(fake, test_id=test_id)
    return rec


def test_imds_with_botocore_fetcher_then_bedrock(fake: Fake):
    from botocore.utils import InstanceMetadataRegionFetcher, InstanceMetadataFetcher

    before = time.time()
    got = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=imds_url(fake)).retrieve_iam_role_credentials()
    assert got["role_name"] == "node-role" and got["access_key"].startswith("ASIA")
    expiry = calendar_epoch(got["expiry_time"])
    assert before + 3600 - 2 <= expiry <= time.time() + 3600
    creds = {"AccessKeyId": got["access_key"], "SecretAccessKey": got["secret_key"], "SessionToken": got["token"]}
    rec = converse_as(fake, creds, "imds-fetcher")
    assert rec["verified"] and rec["principal_arn"] == NODE_ROLE_ARN

    calls = control(fake, "GET", "/imds/calls")
    assert [(c["method"], c["path"], c["status"]) for c in calls] == [
        ("PUT", "/latest/api/token", 200),
        ("GET", "/latest/meta-data/iam/security-credentials/", 200),
        ("GET", "/latest/meta-data/iam/security-credentials/node-role", 200),
    ]
    assert calls[0]["token_ttl_seconds"] == "21600" and calls[0]["raw_path"] == "/imds/latest/api/token"
    assert all(c["token_sent"] and c["token_valid"] for c in calls[1:])
    assert calls[2]["access_key_id"] == got["access_key"] and calls[2]["principal_arn"] == NODE_ROLE_ARN
    assert calls[2]["user_agent"]  # recorded (the bare fetcher sends urllib3's)
    (listed,) = [c for c in control(fake, "GET", "/credentials") if c["access_key_id"] == got["access_key"]]
    assert listed["role_arn"] == "arn:aws:iam::123456789012:role/node-role" and listed["kind"] == "sts"

    # botocore's IMDS region lookup (placement/availability-zone/) and the region path the Rust SDK uses.
    assert InstanceMetadataRegionFetcher(timeout=5, num_attempts=1, base_url=imds_url(fake)).retrieve_region() == REGION
    assert imds_get(fake, "latest/meta-data/placement/region", imds_token(fake)).data.decode() == REGION


def calendar_epoch(iso: str) -> float:
    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def test_imds_credentials_json_shape(fake: Fake):
    control(fake, "POST", "/sts", {"lifetime_seconds": 120})
    token = imds_token(fake)
    listing = imds_get(fake, "latest/meta-data/iam/security-credentials/", token)
    assert listing.status == 200 and listing.data == b"node-role"
    resp = imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token)
    body = json.loads(resp.data)
    assert list(body) == ["Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"]
    assert body["Code"] == "Success" and body["Type"] == "AWS-HMAC"
    assert abs(calendar_epoch(body["LastUpdated"]) - time.time()) < 5
    assert 115 <= calendar_epoch(body["Expiration"]) - time.time() <= 120  # lifetime_seconds, rounded down
    again = json.loads(imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token).data)
    assert again["AccessKeyId"] != body["AccessKeyId"], "every credentials GET issues a fresh credential"
    assert imds_get(fake, "latest/meta-data/iam/security-credentials/other-role", token).status == 404
    assert imds_get(fake, "latest/meta-data/instance-id", token).data == b"i-0123456789abcdef0"
    assert imds_get(fake, "latest/meta-data/nothing-here", token).status == 404


def test_imds_with_boto3_session_from_env(fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolated_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url(fake))
    session = boto3.Session(region_name=REGION)
    resolved = session.get_credentials()
    assert resolved is not None and resolved.method == "iam-role"
    frozen = resolved.get_frozen_credentials()
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    rec = converse_as(fake, creds, "imds-env")
    assert rec["verified"] and rec["principal_arn"] == NODE_ROLE_ARN and rec["security_token_signed"] is True
    assert [c["path"] for c in control(fake, "GET", "/imds/calls")][0] == "/latest/api/token"


def test_imds_token_rules(fake: Fake):
    creds_path = "latest/meta-data/iam/security-credentials/node-role"
    assert imds_get(fake, creds_path, None).status == 401
    assert imds_get(fake, creds_path, "AQAEAnot-a-token").status == 401
    url = imds_url(fake) + "latest/api/token"
    assert HTTP.request("PUT", url).status == 400
    for bad in ("0", "21601", "abc"):
        assert HTTP.request("PUT", url, headers={"X-aws-ec2-metadata-token-ttl-seconds": bad}).status == 400
    forwarded = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"}
    assert HTTP.request("PUT", url, headers=forwarded).status == 403
    assert HTTP.request("GET", url).status == 405
    short = imds_token(fake, ttl="1")
    assert imds_get(fake, creds_path, short).status == 200
    wait_until(lambda: imds_get(fake, "latest/meta-data/placement/region", short).status == 401, timeout=5,
               interval=0.2, what="IMDS token to expire")
    calls = control(fake, "GET", "/imds/calls")
    assert [c["status"] for c in calls[:2]] == [401, 401]
    assert calls[0]["token_sent"] is False and calls[0]["error"] == "missing token"
    assert calls[1]["token_sent"] is True and calls[1]["token_valid"] is False
    assert calls[-1]["status"] == 401 and calls[-1]["token_valid"] is False


def test_imds_controls(fake: Fake):
    from botocore.utils import InstanceMetadataFetcher

    def fetch(attempts: int = 1) -> dict:
        return InstanceMetadataFetcher(timeout=5, num_attempts=attempts, base_url=imds_url(fake)).retrieve_iam_role_credentials()

    assert control(fake, "GET", "/imds") == {"role_name": "node-role", "fail_next": 0, "fail_status": 500, "disabled": False,
                                             "quote_token": False, "error_code": None}
    control(fake, "POST", "/imds", {"role_name": "worker-role"})
    got = fetch()
    assert got["role_name"] == "worker-role"
    creds = {"AccessKeyId": got["access_key"], "SecretAccessKey": got["secret_key"], "SessionToken": got["token"]}
    assert converse_as(fake, creds, "imds-worker")["principal_arn"] == (
        "arn:aws:sts::123456789012:assumed-role/worker-role/i-0123456789abcdef0"
    )
    token = imds_token(fake)
    assert imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token).status == 404

    control(fake, "POST", "/imds", {"role_name": None})  # no instance profile attached
    assert imds_get(fake, "latest/meta-data/iam/security-credentials/", token).status == 404
    assert fetch() == {}

    control(fake, "POST", "/reset", {})  # back to node-role, and a clean call record
    control(fake, "POST", "/imds", {"fail_next": 1, "fail_status": 503})
    assert fetch(attempts=2)["role_name"] == "node-role"  # botocore retries the failed GET
    assert [(c["method"], c["status"]) for c in control(fake, "GET", "/imds/calls")] == [
        ("PUT", 200), ("GET", 503), ("GET", 200), ("GET", 200)]  # token PUTs are never failed
    assert control(fake, "GET", "/imds")["fail_next"] == 0

    control(fake, "POST", "/imds", {"disabled": True})
    assert HTTP.request("PUT", imds_url(fake) + "latest/api/token",
                        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}).status == 403
    assert imds_get(fake, "latest/meta-data/placement/region", token).status == 403
    assert fetch() == {}
    control(fake, "POST", "/imds", {"disabled": False})
    assert fetch()["role_name"] == "node-role"

    # A relay's failure quoting the session token the request sent.
    control(fake, "POST", "/imds", {"fail_next": 1, "fail_status": 500, "quote_token": True})
    failed = imds_get(fake, "latest/meta-data/placement/region", token)
    assert failed.status == 500 and token in failed.data.decode()
    assert imds_get(fake, "latest/meta-data/placement/region", token).status == 200
    control(fake, "POST", "/imds", {"error_code": "AssumeRoleUnauthorizedAccess"})
    answer = imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token)
    assert answer.status == 200
    body = json.loads(answer.data)
    assert body["Code"] == "AssumeRoleUnauthorizedAccess" and token in body["Message"]
    control(fake, "POST", "/imds", {"error_code": None, "quote_token": False})
    assert "AccessKeyId" in json.loads(imds_get(fake, "latest/meta-data/iam/security-credentials/node-role", token).data)

    for bad in ({"role": "x"}, {"role_name": ""}, {"role_name": "a/b"}, {"fail_next": -1}, {"fail_next": "1"},
                {"fail_status": 200}, {"disabled": "yes"}, {"quote_token": 1}, {"error_code": ""}, {"error_code": 5}):
        assert control_status(fake, "POST", "/imds", bad) == 400, bad


def test_container_provider_then_bedrock(fake: Fake):
    from botocore.credentials import ContainerProvider

    url = fake.sts + "/ecs/v1/credentials"
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ecs-test-token"}
    resolved = ContainerProvider(environ=env).load()
    assert resolved.method == "container-role"
    frozen = resolved.get_frozen_credentials()
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    rec = converse_as(fake, creds, "ecs-provider")
    assert rec["verified"] and rec["principal_arn"] == POD_ROLE_ARN

    (call,) = control(fake, "GET", "/ecs/calls")
    assert call["raw_path"] == "/ecs/v1/credentials" and call["status"] == 200
    assert call["authorization_sent"] and call["authorized"] and call["access_key_id"] == frozen.access_key
    assert call["principal_arn"] == POD_ROLE_ARN

    resp = HTTP.request("GET", url, headers={"Authorization": "ecs-test-token"})
    body = json.loads(resp.data)
    assert list(body) == ["AccessKeyId", "SecretAccessKey", "Token", "Expiration", "RoleArn"]
    assert body["RoleArn"] == "arn:aws:iam::123456789012:role/pod-identity-role"
    assert body["AccessKeyId"] != frozen.access_key
    assert 3595 <= calendar_epoch(body["Expiration"]) - time.time() <= 3600


def test_container_credentials_from_env_session(fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolated_aws_env(monkeypatch, tmp_path)
    control(fake, "POST", "/ecs", {"token": "pod-identity-token"})
    token_file = tmp_path / "token"
    token_file.write_text("pod-identity-token")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", fake.sts + "/ecs/v1/credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))  # as EKS Pod Identity sets it
    resolved = boto3.Session(region_name=REGION).get_credentials()
    assert resolved is not None and resolved.method == "container-role"
    frozen = resolved.get_frozen_credentials()
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    assert converse_as(fake, creds, "ecs-env")["principal_arn"] == POD_ROLE_ARN


def test_container_credentials_auth_and_controls(fake: Fake):
    from botocore.credentials import ContainerProvider
    from botocore.exceptions import CredentialRetrievalError
    from botocore.utils import ContainerMetadataFetcher

    url = fake.sts + "/ecs/v1/credentials"
    assert HTTP.request("GET", url).status == 401
    assert HTTP.request("GET", url, headers={"Authorization": "wrong"}).status == 401
    no_sleep = ContainerMetadataFetcher(sleep=lambda _: None)
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong"}
    with pytest.raises(CredentialRetrievalError):
        ContainerProvider(environ=env, fetcher=no_sleep).load()
    calls = control(fake, "GET", "/ecs/calls")
    assert [c["status"] for c in calls] == [401] * 5 and not any(c["authorized"] for c in calls)
    assert calls[0]["authorization_sent"] is False and calls[0]["error"] == "missing Authorization"
    assert calls[1]["error"] == "wrong Authorization" and calls[1]["access_key_id"] is None

    control(fake, "POST", "/ecs", {"token": "rotated", "fail_next": 1,
                                   "role_arn": "arn:aws:iam::210987654321:role/team-role"})
    assert HTTP.request("GET", url, headers={"Authorization": "ecs-test-token"}).status == 401
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "rotated"
    frozen = ContainerProvider(environ=env, fetcher=no_sleep).load().get_frozen_credentials()  # 500, then retried
    creds = {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "SessionToken": frozen.token}
    assert converse_as(fake, creds, "ecs-team")["principal_arn"] == "arn:aws:sts::210987654321:assumed-role/team-role/eks-pod"
    assert [c["status"] for c in control(fake, "GET", "/ecs/calls")][-3:] == [401, 500, 200]

    control(fake, "POST", "/ecs", {"token": None})  # no Authorization required (like the ECS relative URI)
    assert HTTP.request("GET", fake.sts + "/ecs/anything", headers={}).status == 200
    assert HTTP.request("POST", url, headers={"Authorization": "rotated"}).status == 405
    # The protocol's error shape in a 200, quoting the token sent.
    control(fake, "POST", "/ecs", {"token": "quoted-token", "quote_authorization": True})
    quoted = HTTP.request("GET", url, headers={"Authorization": "quoted-token"})
    assert quoted.status == 200
    body = json.loads(quoted.data)
    assert body["Code"] == "AccessDenied" and "quoted-token" in body["Message"]
    assert HTTP.request("GET", url, headers={"Authorization": "wrong"}).status == 401
    assert [c["error"] for c in control(fake, "GET", "/ecs/calls")][-2:] == ["quoted the Authorization", "wrong Authorization"]
    for bad in ({"tok": "x"}, {"token": 5}, {"role_arn": "arn:aws:iam::1:role/x"}, {"fail_next": -2},
                {"quote_authorization": "yes"}):
        assert control_status(fake, "POST", "/ecs", bad) == 400, bad


def test_reset_restores_imds_and_ecs(fake: Fake):
    token = imds_token(fake)
    control(fake, "POST", "/imds", {"role_name": "other", "fail_next": 3, "disabled": True})
    control(fake, "POST", "/ecs", {"token": "t2", "fail_next": 2})
    HTTP.request("GET", fake.sts + "/ecs/v1/credentials")
    control(fake, "POST", "/reset", {})
    assert control(fake, "GET", "/imds") == {"role_name": "node-role", "fail_next": 0, "fail_status": 500, "disabled": False,
                                             "quote_token": False, "error_code": None}
    assert control(fake, "GET", "/ecs") == {"token": "ecs-test-token", "role_arn": "arn:aws:iam::123456789012:role/pod-identity-role",
                                            "fail_next": 0, "fail_status": 500, "quote_authorization": False}
    assert control(fake, "GET", "/imds/calls") == [] and control(fake, "GET", "/ecs/calls") == []
    assert imds_get(fake, "latest/meta-data/placement/region", token).status == 200, "tokens survive a reset"


def test_imds_and_ecs_do_not_disturb_sts(fake: Fake):
    assert assume(fake)["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert HTTP.request("GET", fake.sts + "/imds").status == 404  # the prefix needs its slash: /imds/...
    assert raw_sts(fake, {"Action": "Nope", "Version": "2011-06-15"}).status == 400
