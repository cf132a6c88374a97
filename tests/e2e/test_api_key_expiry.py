"""Short-term Bedrock API keys, minted by AWS's own token generator: the
expiry they carry reaches the metrics, readiness, the proxy and the
`credentials` command; nothing can renew them, so past it nothing goes out."""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import uuid
from unittest import mock

import botocore.auth
import pytest
import requests
from aws_bedrock_token_generator import provide_token
from botocore.credentials import Credentials

from conftest import BINARY

CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
BODY = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


class _Keys:
    """A credential provider as the generator takes one."""

    def load(self) -> Credentials:
        return Credentials("ASIAEXAMPLEMINTER", "minter-secret", "minter-session-token")


def mint(lifetime: datetime.timedelta, minted_ago: datetime.timedelta = datetime.timedelta(0)) -> str:
    """A key minted `minted_ago` (the generator's clock is botocore's)."""
    at = datetime.datetime.now(datetime.timezone.utc) - minted_ago
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=at):
        return provide_token(region="us-east-1", aws_credentials_provider=_Keys(), expiry=lifetime)


def env_with(key: str, fake_aws) -> dict[str, str]:
    return {
        "AWS_REGION": "us-east-1",
        "AWS_BEARER_TOKEN_BEDROCK": key,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    }


def post(sidecar, path: str = CONVERSE, headers: dict | None = None) -> tuple[str, requests.Response]:
    tid = uuid.uuid4().hex
    r = requests.post(sidecar.url(path), data=BODY, timeout=30,
                      headers={"content-type": "application/json", "x-test-id": tid, **(headers or {})})
    return tid, r


def test_a_fresh_key_s_expiry_is_exposed_and_the_key_is_used(start_sidecar, fake_aws):
    before = int(time.time())
    key = mint(datetime.timedelta(hours=2))
    after = int(time.time()) + 1
    sidecar = start_sidecar(env_with(key, fake_aws))
    # The generator signs at whole seconds: the expiry is two hours after
    # some second within the minting.
    expiry = sidecar.metric("bedrock_broker_credentials_expiry_timestamp_seconds")
    assert before + 7200 <= expiry <= after + 7200, expiry
    assert sidecar.metric("bedrock_broker_credentials_lifetime_seconds") == 7200
    assert sidecar.ready().json()["ready"] is True
    tid, r = post(sidecar)
    assert r.status_code == 200, r.text
    assert fake_aws.request_for(tid)["bearer_token"] == key
    logs = [json.loads(line) for line in sidecar.log_text().splitlines() if line.startswith("{")]
    start = next(line for line in logs if "short-term Bedrock API key" in line.get("message", ""))
    assert start["expires_at"].endswith("Z"), start
    assert key not in sidecar.log_text()


def test_an_expired_key_is_refused_before_bedrock_and_named(start_sidecar, fake_aws):
    key = mint(datetime.timedelta(hours=1), minted_ago=datetime.timedelta(hours=1, minutes=5))
    sidecar = start_sidecar(env_with(key, fake_aws), wait_ready=False)
    ready = sidecar.ready()
    assert ready.status_code == 503, ready.text
    assert "expired at" in ready.json()["reason"] and "AWS_BEARER_TOKEN_BEDROCK" in ready.json()["reason"]

    tid, r = post(sidecar)
    assert r.status_code == 503, r.text
    assert r.headers["x-bedrock-broker-error"] == "credentials_expired"
    # Nothing renews a short-term key: a retry would get the same answer.
    assert "retry-after" not in r.headers
    assert "set a fresh key" in r.json()["message"], r.text
    assert fake_aws.get(f"/bedrock/requests?test_id={tid}") == []
    # In the OpenAI dialect too.
    _, r = post(sidecar, "/openai/v1/chat/completions")
    assert r.status_code == 503 and r.json()["error"]["code"] == "credentials_expired", r.text
    assert sidecar.metric("bedrock_broker_requests_total",
                          {"operation": "converse", "auth": "api_key", "code": "503"}) == 1
    # A client's own key is not the configured one: it still goes out.
    tid, r = post(sidecar, headers={"authorization": "Bearer ABSKclientkey"})
    assert r.status_code == 200, r.text
    assert fake_aws.request_for(tid)["bearer_token"] == "ABSKclientkey"
    logs = sidecar.log_text()
    assert "expired at" in logs and key not in logs


def run_credentials(key: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BINARY), "credentials"],
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "AWS_BEARER_TOKEN_BEDROCK": key},
        capture_output=True, text=True, timeout=30,
    )


def test_the_credentials_command_says_when_a_key_expires():
    fresh = run_credentials(mint(datetime.timedelta(hours=12)))
    assert fresh.returncode == 0, fresh.stderr
    expires = next(line for line in fresh.stdout.splitlines() if line.startswith("expires:"))
    assert "(in 11h 59m" in expires or "(in 12h" in expires, expires
    assert "not checked" in fresh.stdout

    key = mint(datetime.timedelta(minutes=15), minted_ago=datetime.timedelta(minutes=20))
    expired = run_credentials(key)
    assert expired.returncode == 1, expired.stdout
    assert "EXPIRED 5m" in expired.stderr, expired.stderr
    assert "set a fresh key" in expired.stderr and "error: credentials do not work" in expired.stderr
    assert key not in expired.stdout + expired.stderr


@pytest.mark.parametrize("key, says", [("ABSKbG9uZy10ZXJta2V5", "service-specific credential"),
                                       ("bedrock-api-key-bm90IGEgcHJlc2lnbmVkIHVybA==", "unknown")])
def test_the_credentials_command_says_when_it_cannot_tell_the_expiry(key, says):
    # It said nothing of the expiry, as if none could come.
    out = run_credentials(key)
    assert out.returncode == 0, out.stderr
    expires = next((line for line in out.stdout.splitlines() if line.startswith("expires:")), None)
    assert expires is not None and says in expires, out.stdout
    assert key not in out.stdout + out.stderr


@pytest.mark.parametrize("key", ["ABSKbG9uZy10ZXJta2V5", "bedrock-api-key-bm90IGEgcHJlc2lnbmVkIHVybA=="])
def test_keys_that_carry_no_expiry_are_never_refused_for_it(start_sidecar, fake_aws, key):
    sidecar = start_sidecar(env_with(key, fake_aws))
    assert sidecar.metric("bedrock_broker_credentials_expiry_timestamp_seconds") == float("inf")
    tid, r = post(sidecar)
    assert r.status_code == 200, r.text
    assert fake_aws.request_for(tid)["bearer_token"] == key
