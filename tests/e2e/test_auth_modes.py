"""The four auth rules, alone and mixed concurrently."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
BODY = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


def post(sidecar, headers: dict, path: str = CONVERSE) -> tuple[str, requests.Response]:
    tid = uuid.uuid4().hex
    r = requests.post(sidecar.url(path), data=BODY, headers={"content-type": "application/json", "x-test-id": tid, **headers}, timeout=30)
    return tid, r


@pytest.fixture
def sidecar(start_sidecar, irsa_env):
    return start_sidecar(irsa_env)


def test_provider_data_bearer_override_wins(sidecar, fake_aws):
    token = "bedrock-api-key-" + uuid.uuid4().hex
    tid, r = post(sidecar, {
        "x-llamastack-provider-data": json.dumps({"aws_bearer_token_bedrock": token}),
        "authorization": "Bearer ABSKclientkey",
    })
    assert r.status_code == 200, r.text
    rec = fake_aws.request_for(tid)
    assert rec["auth_kind"] == "bearer" and rec["bearer_token"] == token
    assert "x-llamastack-provider-data" not in rec["header_names"], "the token-bearing header must not be forwarded"
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse", "code": "200", "auth": "provider_data"}) == 1


@pytest.mark.parametrize("value", ['{"aws_bearer_token_bedrock": ""}', '{"aws_bearer_token_bedrock": "   "}', '{"aws_bearer_token_bedrock": null}', '{}', '', 'null'])
def test_empty_provider_data_falls_back_to_sigv4(sidecar, fake_aws, value):
    tid, r = post(sidecar, {"x-llamastack-provider-data": value})
    assert r.status_code == 200, r.text
    rec = fake_aws.request_for(tid)
    assert rec["auth_kind"] == "sigv4" and rec["verified"]


@pytest.mark.parametrize("path,shape", [(CONVERSE, "aws"), ("/openai/v1/chat/completions", "openai")])
def test_malformed_provider_data_is_rejected_in_the_clients_dialect(sidecar, fake_aws, path, shape):
    tid, r = post(sidecar, {"x-llamastack-provider-data": '{"aws_bearer_token_bedrock": "ABSKsecret",'}, path)
    assert r.status_code == 400
    assert r.headers["x-bedrock-broker-error"] == "invalid_provider_data"
    body = r.json()
    if shape == "openai":
        assert body["error"]["code"] == "invalid_provider_data"
        assert "x-llamastack-provider-data" in body["error"]["message"]
    else:
        assert "x-llamastack-provider-data" in body["message"]
        assert r.headers["x-amzn-errortype"] == "ValidationException"
    assert "ABSKsecret" not in r.text
    assert fake_aws.get(f"/bedrock/requests?test_id={tid}") == []


@pytest.mark.parametrize("key", ["bedrock-api-key-abc123", "ABSKlongtermkey42"])
def test_client_bedrock_api_key_passes_through(sidecar, fake_aws, key):
    tid, r = post(sidecar, {"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    rec = fake_aws.request_for(tid)
    assert rec["auth_kind"] == "bearer" and rec["bearer_token"] == key


def test_an_anthropic_style_x_api_key_is_a_key_or_a_placeholder(sidecar, fake_aws):
    """Anthropic's clients (and AWS's Mantle examples) send the key as
    ``x-api-key``: a Bedrock API key there is used as the bearer; anything
    else is a placeholder, never forwarded (Mantle reads the header as a
    key, so a placeholder beside the signature would be refused)."""
    tid, r = post(sidecar, {"x-api-key": "sk-ant-placeholder"})
    assert r.status_code == 200, r.text
    rec = fake_aws.request_for(tid)
    assert rec["auth_kind"] == "sigv4" and rec["verified"]
    assert rec["headers_present"]["x-api-key"] is False
    tid, r = post(sidecar, {"x-api-key": "ABSKlongtermkey42"})
    assert r.status_code == 200, r.text
    rec = fake_aws.request_for(tid)
    assert rec["auth_kind"] == "bearer" and rec["bearer_token"] == "ABSKlongtermkey42"
    assert rec["headers_present"]["x-api-key"] is False
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse", "code": "200", "auth": "api_key_passthrough"}) == 1


@pytest.mark.parametrize("auth", ["Bearer sk-dummy", "AWS4-HMAC-SHA256 Credential=AKIDOTHER/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00"])
def test_other_client_authorization_is_stripped_and_replaced_by_sigv4(sidecar, fake_aws, auth):
    tid, r = post(sidecar, {"authorization": auth, "x-amz-date": "20200101T000000Z", "x-amz-security-token": "client-token"})
    assert r.status_code == 200, r.text
    rec = fake_aws.request_for(tid)
    assert rec["auth_kind"] == "sigv4" and rec["verified"]
    assert rec["access_key_id"] != "AKIDOTHER"


def test_configured_api_key_mode(start_sidecar, fake_aws):
    sidecar = start_sidecar({
        "AWS_REGION": "us-east-1",
        "AWS_BEARER_TOKEN_BEDROCK": "ABSKconfiguredkey",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    })
    tid, r = post(sidecar, {"authorization": "Bearer sk-dummy"})
    assert r.status_code == 200
    assert fake_aws.request_for(tid)["bearer_token"] == "ABSKconfiguredkey"
    # A client API key still wins over the configured one.
    tid, r = post(sidecar, {"authorization": "Bearer bedrock-api-key-client"})
    assert fake_aws.request_for(tid)["bearer_token"] == "bedrock-api-key-client"
    assert fake_aws.sts_calls() == []
    assert "ABSKconfiguredkey" not in sidecar.log_text()


def test_concurrent_requests_of_different_modes_never_mix_credentials(sidecar, fake_aws):
    def one(i: int):
        kind = i % 3
        if kind == 0:
            token = f"bedrock-api-key-pd-{i}-{uuid.uuid4().hex}"
            tid, r = post(sidecar, {"x-llamastack-provider-data": json.dumps({"aws_bearer_token_bedrock": token})})
            return tid, r.status_code, ("bearer", token)
        if kind == 1:
            token = f"ABSKpass{i}{uuid.uuid4().hex}"
            tid, r = post(sidecar, {"authorization": f"Bearer {token}"})
            return tid, r.status_code, ("bearer", token)
        tid, r = post(sidecar, {"authorization": "Bearer sk-dummy"})
        return tid, r.status_code, ("sigv4", None)

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(120)))
    assert all(status == 200 for _, status, _ in results)
    by_id = {r["x_test_id"]: r for r in fake_aws.requests()}
    for tid, _, (kind, token) in results:
        rec = by_id[tid]
        assert rec["auth_kind"] == kind, rec
        if kind == "bearer":
            assert rec["bearer_token"] == token
        else:
            assert rec["verified"] and rec["bearer_token"] is None
