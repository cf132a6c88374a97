"""`bedrock-broker credentials`: one-shot diagnosis against the fake STS."""

from __future__ import annotations

import os
import subprocess

from conftest import BINARY, ROLE_ARN


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BINARY), "credentials"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_prints_who_we_are_and_when_it_expires(irsa_env, fake_aws, token_dir):
    out = run(irsa_env)
    assert out.returncode == 0, out.stderr
    assert f"role:     {ROLE_ARN}" in out.stdout
    assert "account:  123456789012" in out.stdout
    assert "assumed-role/chat-app/e2e-session" in out.stdout
    assert "expires:" in out.stdout and "(in " in out.stdout
    assert "sub=system:serviceaccount:default:chat-app" in out.stdout
    # GetCallerIdentity was signed with the STS credentials and verified by botocore.
    calls = fake_aws.sts_calls()
    assert [c["action"] for c in calls] == ["AssumeRoleWithWebIdentity", "GetCallerIdentity"]
    assert calls[1]["result"] == "ok"
    issued = fake_aws.get("/credentials?include_secrets=1")
    for c in issued:
        for secret in (c.get("secret_access_key"), c.get("session_token")):
            if secret:
                assert secret not in out.stdout + out.stderr
    assert token_dir.path.read_text() not in out.stdout + out.stderr


def test_access_denied_explains_the_trust_policy(irsa_env, fake_aws):
    fake_aws.configure_sts(fail_always=True, fail_code="AccessDenied")
    out = run(irsa_env)
    assert out.returncode == 1
    assert "AccessDenied" in out.stderr
    assert "trust policy" in out.stderr
    assert "system:serviceaccount" in out.stderr


def test_invalid_token_explains_the_oidc_provider(irsa_env, fake_aws):
    fake_aws.configure_sts(accept_tokens=["only-this-token"])
    out = run(irsa_env)
    assert out.returncode == 1
    assert "InvalidIdentityToken" in out.stderr
    assert "OIDC" in out.stderr


def test_missing_configuration_exits_2():
    out = run({})
    assert out.returncode == 2
    assert "AWS_ROLE_ARN" in out.stderr and "AWS_ACCESS_KEY_ID" in out.stderr
