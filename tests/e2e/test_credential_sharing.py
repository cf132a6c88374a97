"""Credential depth: sharing with other SDKs in the pod, role chaining, session options."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid

import pytest
import requests

from conftest import BINARY, ROLE_ARN, wait_for
from test_credentials import FAST, converse

CHAIN_ROLE = "arn:aws:iam::210987654321:role/bedrock-cross-account"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BOTO3_WHOAMI = """
import json, boto3
session = boto3.Session()
creds = session.get_credentials().get_frozen_credentials()
ident = session.client("sts").get_caller_identity()
print(json.dumps({"access_key_id": creds.access_key, "arn": ident["Arn"], "method": session.get_credentials().method}))
"""


def test_other_sdks_in_the_pod_share_the_credentials_through_the_container_endpoint(start_sidecar, irsa_env, fake_aws, tmp_path):
    port = free_port()
    token_file = tmp_path / "shared" / "cc-token"
    token_file.parent.mkdir()
    sidecar = start_sidecar(irsa_env, ["--credentials-listen", f"127.0.0.1:{port}", "--credentials-token-file", str(token_file)])
    assert len(token_file.read_text()) == 64
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{port}/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_STS": fake_aws.sts,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    out = subprocess.run([sys.executable, "-c", BOTO3_WHOAMI], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    who = json.loads(out.stdout)
    assert who["method"] == "container-role"
    assert who["arn"].endswith(":assumed-role/chat-app/e2e-session")
    issued = [c["access_key_id"] for c in fake_aws.get("/credentials") if c["kind"] == "sts"]
    assert who["access_key_id"] in issued
    # Exactly one STS exchange: boto3 reused the sidecar's cached credentials.
    assert [c["action"] for c in fake_aws.sts_calls()] == ["AssumeRoleWithWebIdentity", "GetCallerIdentity"]
    # No token, no credentials.
    r = requests.get(f"http://127.0.0.1:{port}/v1/credentials", headers={"authorization": "wrong"}, timeout=5)
    assert r.status_code == 401 and "SecretAccessKey" not in r.text
    assert sidecar.ready().status_code == 200


def test_role_chaining_signs_with_the_second_role(start_sidecar, irsa_env, fake_aws):
    fake_aws.configure_sts(lifetime_seconds=4, require_external_id={CHAIN_ROLE: "tenant-42"})
    env = dict(irsa_env, BEDROCK_BROKER_CHAIN_ROLE_ARN=CHAIN_ROLE, BEDROCK_BROKER_CHAIN_EXTERNAL_ID="tenant-42")
    sidecar = start_sidecar(env, FAST)
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    rec = fake_aws.request_for(tid)
    assert rec["verified"] and rec["principal_arn"].startswith("arn:aws:sts::210987654321:assumed-role/bedrock-cross-account/")
    # Both hops are refreshed together, as the short lifetime forces.
    wait_for(lambda: sum(c["action"] == "AssumeRole" for c in fake_aws.sts_calls()) >= 3, timeout=15, what="chained refreshes")
    calls = fake_aws.sts_calls()
    assume = [c for c in calls if c["action"] == "AssumeRole"]
    assert all(c["external_id"] == "tenant-42" and c["result"] == "ok" for c in assume)
    assert sum(c["action"] == "AssumeRoleWithWebIdentity" for c in calls) >= len(assume)
    converse(sidecar, uuid.uuid4().hex)


def test_wrong_external_id_is_a_fatal_refresh_error(start_sidecar, irsa_env, fake_aws):
    fake_aws.configure_sts(require_external_id={CHAIN_ROLE: "tenant-42"})
    env = dict(irsa_env, BEDROCK_BROKER_CHAIN_ROLE_ARN=CHAIN_ROLE, BEDROCK_BROKER_CHAIN_EXTERNAL_ID="tenant-43")
    sidecar = start_sidecar(env, FAST, wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "fatal"}) or 0) >= 1, what="fatal error")
    body = sidecar.ready().json()
    assert body["ready"] is False and "AssumeRole" in body["last_error"] and "AccessDenied" in body["last_error"]


def test_a_signature_error_from_sts_never_shows_the_session_token(start_sidecar, fake_aws, tmp_path):
    # STS, like Bedrock, quotes the canonical request it expected in a
    # signature error, x-amz-security-token line included. Static keys with
    # a wrong secret, chained to a role: the AssumeRole hop gets that error.
    token = "IQoJb3JpZ2luX2VjEE2E-static-session-token-never-shown"
    fake_aws.post("/static_keys", {"access_key_id": "AKIDCHAINSIG", "secret_access_key": "right-secret", "session_token": token})
    env = {
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDCHAINSIG",
        "AWS_SECRET_ACCESS_KEY": "wrong-secret",
        "AWS_SESSION_TOKEN": token,
        "AWS_ENDPOINT_URL_STS": fake_aws.sts,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
        "BEDROCK_BROKER_CHAIN_ROLE_ARN": CHAIN_ROLE,
    }
    sidecar = start_sidecar(env, FAST, wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) or 0) >= 1,
             what="a failed refresh")
    assert [c["error_code"] for c in fake_aws.sts_calls()][:1] == ["SignatureDoesNotMatch"]
    ready = sidecar.ready()
    assert ready.status_code == 503
    # The message is kept, the token's value blanked.
    assert "x-amz-security-token:** redacted **" in ready.json()["last_error"]
    assert token not in ready.text
    assert "SignatureDoesNotMatch" in sidecar.log_text() and token not in sidecar.log_text()
    sidecar.stop()
    # The one-shot diagnosis reports the same failure, without the token.
    out = subprocess.run([str(BINARY), "credentials"], env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "SignatureDoesNotMatch" in out.stderr, out.stderr
    assert token not in out.stdout + out.stderr


def test_session_policy_duration_and_policy_arns_reach_sts(start_sidecar, irsa_env, fake_aws):
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"], "Resource": "*"}]}
    env = dict(
        irsa_env,
        BEDROCK_BROKER_SESSION_DURATION="2h",
        BEDROCK_BROKER_SESSION_POLICY=json.dumps(policy),
        BEDROCK_BROKER_SESSION_POLICY_ARNS="arn:aws:iam::aws:policy/AmazonBedrockLimitedAccess",
    )
    start_sidecar(env)
    call = fake_aws.sts_calls()[0]
    assert call["duration_seconds"] in ("7200", 7200)
    assert call["policy"] == policy
    assert call["policy_arns"] == ["arn:aws:iam::aws:policy/AmazonBedrockLimitedAccess"]


def test_default_session_name_names_the_pod(start_sidecar, irsa_env, fake_aws):
    env = {k: v for k, v in irsa_env.items() if k != "AWS_ROLE_SESSION_NAME"}
    env.update(POD_NAMESPACE="team-a", POD_NAME="chat-api-6d8f9-xk2p1")
    start_sidecar(env)
    assert fake_aws.sts_calls()[0]["role_session_name"] == "team-a.chat-api-6d8f9-xk2p1"
    assert fake_aws.sts_calls()[0]["role_arn"] == ROLE_ARN


def test_profile_with_role_arn_and_source_profile(start_sidecar, fake_aws, tmp_path):
    fake_aws.post("/static_keys", {"access_key_id": "AKIDPROFILEBASE", "secret_access_key": "profile-base-secret"})
    sidecar = start_sidecar(_profile_env(fake_aws, tmp_path, "dev", (
        "[profile dev]\n"
        f"role_arn = {ROLE_ARN}\n"
        "source_profile = base\n"
        "role_session_name = from-profile\n"
        "[profile base]\n"
        "aws_access_key_id = AKIDPROFILEBASE\n"
        "aws_secret_access_key = profile-base-secret\n"
    )))
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    rec = fake_aws.request_for(tid)
    assert rec["verified"] and rec["principal_arn"].endswith(":assumed-role/chat-app/from-profile")
    call = [c for c in fake_aws.sts_calls() if c["action"] == "AssumeRole"][0]
    assert call["source_access_key_id"] == "AKIDPROFILEBASE"


def _profile_env(fake_aws, tmp_path, profile: str, profiles: str) -> dict[str, str]:
    """The environment of a sidecar reading `profile` from a config file
    holding `profiles` (and nothing else of the machine's)."""
    config = tmp_path / "aws-config"
    config.write_text(profiles)
    return {
        "AWS_REGION": "us-east-1",
        "AWS_PROFILE": profile,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_ENDPOINT_URL_STS": fake_aws.sts,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
        "HOME": str(tmp_path),
    }


def test_a_profile_fixed_after_a_failure_is_read_again(start_sidecar, fake_aws, tmp_path):
    """aws-config's profile provider hands out the error of its first build
    once: every later attempt read "initialization error already taken"
    (transient, the cause gone from /readyz), and a fixed file was never
    read again without a restart."""
    fake_aws.post("/static_keys", {"access_key_id": "AKIDPROFILEBASE", "secret_access_key": "profile-base-secret"})
    env = _profile_env(fake_aws, tmp_path, "dev", "[profile other]\nregion = us-east-1\n")
    sidecar = start_sidecar(env, ["--refresh-max-backoff", "1s"], wait_ready=False)
    fatal = {"class": "fatal"}
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", fatal) or 0) >= 3,
             timeout=20, what="three failed attempts")
    last_error = sidecar.ready().json()["last_error"]
    assert "dev" in last_error and "already taken" not in last_error, last_error
    assert sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "transient"}) in (None, 0)

    (tmp_path / "aws-config").write_text(ROLE_FROM_STATIC_PROFILE)
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=20, what="the fixed profile read")
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    assert fake_aws.request_for(tid)["verified"]


# Profile `dev` assumes the role from profile `base`'s static keys.
ROLE_FROM_STATIC_PROFILE = (
    "[profile dev]\n"
    f"role_arn = {ROLE_ARN}\n"
    "source_profile = base\n"
    "[profile base]\n"
    "aws_access_key_id = AKIDPROFILEBASE\n"
    "aws_secret_access_key = profile-base-secret\n"
)


def _profile_sidecar(start_sidecar, fake_aws, tmp_path, args: list[str], wait_ready: bool = True):
    """A sidecar on the profile source, whose profile assumes a role from
    static keys (an STS call of aws-config's making, not the sidecar's)."""
    fake_aws.post("/static_keys", {"access_key_id": "AKIDPROFILEBASE", "secret_access_key": "profile-base-secret"})
    env = _profile_env(fake_aws, tmp_path, "dev", ROLE_FROM_STATIC_PROFILE)
    return start_sidecar(env, args, wait_ready=wait_ready)


def test_a_profiles_sts_calls_keep_the_sidecars_timeout_and_retries(start_sidecar, fake_aws, tmp_path):
    """A profile's role is assumed by aws-config's own STS client, which had
    neither ``--sts-timeout`` (a stalled STS stalled the refresher for good)
    nor retries off (three STS calls were counted as one attempt)."""
    fake_aws.post("/sts", {"delay_seconds": 30})
    sidecar = _profile_sidecar(start_sidecar, fake_aws, tmp_path, ["--sts-timeout", "1s"], wait_ready=False)
    failures = {"result": "failure"}
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refreshes_total", failures) or 0) >= 1, timeout=10,
             what="the stalled STS call given up at --sts-timeout")
    assert sidecar.ready().status_code == 503
    sidecar.stop()

    fake_aws.post("/reset")
    fake_aws.post("/sts", {"fail_next": 2, "fail_code": "InternalFailure"})
    sidecar = _profile_sidecar(start_sidecar, fake_aws, tmp_path, [], wait_ready=True)
    calls = [c for c in fake_aws.sts_calls() if c["action"] == "AssumeRole"]
    attempts = {r: sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": r}) for r in ("failure", "success")}
    assert attempts == {"failure": 2, "success": 1}, (attempts, len(calls))
    assert len(calls) == 3


def test_a_token_quoted_by_sts_reaches_no_log_on_the_profile_source(start_sidecar, irsa_env, fake_aws, tmp_path):
    """An STS (or a relay in its place) quoting the refused web identity
    token in its error: the sidecar blanks it in its own lines, but
    aws-config's warnings printed the body whole, token and all (and
    did again under a RUST_LOG that could not be read, whose fallback
    lost the cap)."""
    token = open(irsa_env["AWS_WEB_IDENTITY_TOKEN_FILE"]).read().strip()
    fake_aws.post("/sts", {"accept_tokens": ["another-token"], "quote_refused_tokens": True})
    env = _profile_env(fake_aws, tmp_path, "wi", (
        f"[profile wi]\nrole_arn = {ROLE_ARN}\nweb_identity_token_file = {irsa_env['AWS_WEB_IDENTITY_TOKEN_FILE']}\n"
    ))
    env["BEDROCK_BROKER_CREDENTIAL_SOURCE"] = "profile"
    for rust_log in ("info", "debug", "bedrock_broker=loud"):
        sidecar = start_sidecar(env, wait_ready=False, rust_log=rust_log)
        wait_for(lambda: sidecar.ready().json().get("last_error"), timeout=20, what="the refused token reported")
        sidecar.stop()
        calls = [c for c in fake_aws.sts_calls() if c["action"] == "AssumeRoleWithWebIdentity"]
        assert calls and calls[-1]["error_code"] == "InvalidIdentityToken"
        payload = token.split(".")[1]
        assert payload not in sidecar.log_text(), rust_log
        assert "Couldn't retrieve verification key" in sidecar.log_text(), "the error itself is still logged"


def test_container_credentials_source_reads_another_sidecars_endpoint(start_sidecar, irsa_env, fake_aws, tmp_path):
    port = free_port()
    token_file = tmp_path / "cc-token"
    start_sidecar(irsa_env, ["--credentials-listen", f"127.0.0.1:{port}", "--credentials-token-file", str(token_file)])
    consumer = start_sidecar({
        "AWS_REGION": "us-east-1",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{port}/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    })
    tid = uuid.uuid4().hex
    converse(consumer, tid)
    rec = fake_aws.request_for(tid)
    assert rec["verified"] and rec["principal_arn"].endswith(":assumed-role/chat-app/e2e-session")
    assert consumer.metric("bedrock_broker_credentials_expiry_timestamp_seconds") > 0


def imds_env(fake_aws) -> dict[str, str]:
    """A sidecar pinned to the instance metadata source, the fake's IMDS."""
    return {
        "AWS_REGION": "us-east-1",
        "BEDROCK_BROKER_CREDENTIAL_SOURCE": "imds",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": fake_aws.sts + "/imds/",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    }


def test_imds_source_when_pinned(start_sidecar, fake_aws):
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(imds_env(fake_aws), FAST)
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    assert fake_aws.request_for(tid)["principal_arn"].endswith(":assumed-role/node-role/i-0123456789abcdef0")
    # Short-lived IMDS credentials are refreshed like any other source.
    wait_for(lambda: sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "success"}) >= 3, timeout=15, what="imds refreshes")


def test_an_imds_outage_is_a_failed_refresh_not_the_old_credentials_again(start_sidecar, fake_aws):
    # aws-config's IMDS provider answers an IMDS error with the credentials
    # it fetched last: taken as a success, an outage showed as refreshes
    # that worked until the credentials expired, then as a clock problem.
    fake_aws.configure_sts(lifetime_seconds=12)
    sidecar = start_sidecar(imds_env(fake_aws), FAST)
    fake_aws.post("/imds", {"disabled": True})
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_consecutive_failures") or 0) >= 1,
             timeout=15, what="the outage seen as a failed refresh")
    failed = next(line for line in sidecar.log_text().splitlines() if "credential refresh failed" in line)
    # Seen at the first scheduled refresh, while the credentials still work.
    assert '"still_serving":true' in failed, failed
    assert "the imds credential source failed" in failed and "forbidden" in failed, failed
    assert "hop limit" in failed, failed
    assert "clock" not in failed, failed
    fake_aws.post("/imds", {"disabled": False})
    wait_for(lambda: sidecar.metric("bedrock_broker_credential_refresh_consecutive_failures") == 0,
             timeout=10, what="recovery once IMDS answers")
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    assert fake_aws.request_for(tid)["verified"]


def test_an_unreachable_imds_is_a_transient_failure(start_sidecar, fake_aws):
    # aws-config reports a connection it could not make to IMDS as
    # "credentials not loaded", which is also its word for a node without
    # a role: taken as fatal, an IMDS blip got the slow backoff meant for
    # an IAM fix.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = dict(imds_env(fake_aws), AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}/")
    sidecar = start_sidecar(env, FAST, wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "transient"}) or 0) >= 1,
             timeout=15, what="the refused connection counted as transient")
    assert (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "fatal"}) or 0) == 0


def test_ecs_or_pod_identity_container_source(start_sidecar, fake_aws, pod_identity_env):
    sidecar = start_sidecar(pod_identity_env)
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    assert fake_aws.request_for(tid)["principal_arn"].endswith(":assumed-role/pod-identity-role/eks-pod")


@pytest.mark.parametrize("how", ["inline", "file", "profile"])
def test_a_container_endpoint_quoting_its_token_reaches_no_log(start_sidecar, fake_aws, tmp_path, how):
    """A relay in the Pod Identity agent's place (or a broken agent)
    quoting the Authorization token it was sent in its error: aws-config
    repeats the error's message, and the sidecar printed it whole into
    its log and /readyz. A profile whose role is assumed from the
    container's credentials (`credential_source = EcsContainer`) calls
    the same endpoint with the same token."""
    token = "pod-identity-" + "k9Qz7wLm" * 6
    fake_aws.post("/ecs", {"token": token, "quote_authorization": True})
    env = {
        "AWS_REGION": "us-east-1",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": fake_aws.sts + "/ecs/v1/credentials",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    }
    if how == "profile":
        env.update(_profile_env(fake_aws, tmp_path, "chained", (
            f"[profile chained]\nrole_arn = {CHAIN_ROLE}\ncredential_source = EcsContainer\n"
        )))
        env["BEDROCK_BROKER_CREDENTIAL_SOURCE"] = "profile"
    if how == "file":
        (tmp_path / "token").write_text(token)
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(tmp_path / "token")
    else:
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
    sidecar = start_sidecar(env, FAST, wait_ready=False)
    wait_for(lambda: sidecar.ready().json().get("last_error"), timeout=20, what="the refusal reported")
    ready = json.dumps(sidecar.ready().json())
    sidecar.stop()
    calls = fake_aws.get("/ecs/calls")
    assert calls and calls[-1]["error"] == "quoted the Authorization", calls[-1]
    for text in (sidecar.log_text(), ready):
        assert "AccessDenied" in text, text
        assert "k9Qz7wLm" not in text, text


@pytest.mark.parametrize("answer", [
    {"fail_next": 1000},  # an error status: aws-config quotes the whole answer
    {"error_code": "AssumeRoleUnauthorizedAccess"},  # IMDS's error shape in a 200
    {"error_code": "Failure"},
])
def test_an_imds_quoting_its_session_token_reaches_no_log(start_sidecar, fake_aws, answer):
    """The same from instance metadata, whose session token is fetched
    inside aws-config: the sidecar never sees it to blank, so what IMDS
    says beyond its status or code is not repeated."""
    fake_aws.post("/imds", {**answer, "quote_token": True})
    sidecar = start_sidecar(imds_env(fake_aws), FAST, wait_ready=False)
    wait_for(lambda: sidecar.ready().json().get("last_error"), timeout=20, what="the failure reported")
    ready = json.dumps(sidecar.ready().json())
    sidecar.stop()
    calls = fake_aws.get("/imds/calls")
    assert any(c["error"] in ("injected 500", f"answered {answer.get('error_code')}") for c in calls), calls
    for text in (sidecar.log_text(), ready):
        assert answer.get("error_code", "500") in text, text
        # The fake's tokens: AQAEA and 51 more characters.
        assert not re.search(r"AQAEA[A-Za-z0-9_-]{8}", text), text


def test_imds_is_never_used_unless_pinned(start_sidecar, fake_aws):
    out = subprocess.run(
        [str(BINARY), "sidecar"],
        env={"PATH": os.environ.get("PATH", ""), "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_SERVICE_ENDPOINT": fake_aws.sts + "/imds/"},
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 2 and "no credentials configured" in out.stderr
    assert fake_aws.get("/imds/calls") == []
