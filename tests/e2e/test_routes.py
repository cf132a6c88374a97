"""Agents runtime and Mantle through the same sidecar, by path prefix."""

from __future__ import annotations

import json
import uuid

import requests

import pytest


@pytest.fixture
def sidecar(start_sidecar, irsa_env, fake_aws):
    env = dict(irsa_env, BEDROCK_BROKER_MANTLE_UPSTREAM=fake_aws.bedrock, AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME=fake_aws.bedrock)
    return start_sidecar(env)


def test_mantle_requests_are_signed_as_bedrock_mantle_with_the_prefix_removed(sidecar, fake_aws):
    fake_aws.post("/bedrock", {"signing_name": "bedrock-mantle"})
    tid = uuid.uuid4().hex
    r = requests.post(sidecar.url("/mantle/v1/chat/completions"), json={"model": "m", "messages": []}, headers={"x-test-id": tid}, timeout=10)
    rec = fake_aws.request_for(tid)
    assert rec["raw_path"] == "/v1/chat/completions"
    assert rec["verified"] is True, rec["rejection"]
    # The fake has no Mantle API: its 404 passes through untouched.
    assert r.status_code == 404 and "x-bedrock-broker-error" not in r.headers
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "chat_completions", "code": "404", "auth": "sigv4"}) == 1


def test_agent_runtime_requests_go_to_their_endpoint_signed_as_bedrock(sidecar, fake_aws):
    tid = uuid.uuid4().hex
    r = requests.post(
        sidecar.url("/agent-runtime/knowledgebases/KB123/retrieve"),
        data=json.dumps({"retrievalQuery": {"text": "q"}}),
        headers={"x-test-id": tid, "content-type": "application/json"},
        timeout=10,
    )
    rec = fake_aws.request_for(tid)
    assert rec["raw_path"] == "/knowledgebases/KB123/retrieve"
    assert rec["verified"] is True, rec["rejection"]
    assert r.status_code == 404
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "retrieve", "code": "404", "auth": "sigv4"}) == 1


def test_a_wrong_signing_name_is_caught_by_the_independent_verifier(sidecar, fake_aws):
    """Control: the fake really checks the service in the credential scope."""
    fake_aws.post("/bedrock", {"signing_name": "bedrock-mantle"})
    tid = uuid.uuid4().hex
    requests.post(sidecar.url("/model/m/converse"), data="{}", headers={"x-test-id": tid}, timeout=10)
    rec = fake_aws.request_for(tid)
    assert rec["verified"] is False and rec["status"] == 403


def test_unconfigured_route_is_a_clear_404(start_sidecar, fake_aws):
    sidecar = start_sidecar({
        "AWS_BEARER_TOKEN_BEDROCK": "ABSKexample",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    })
    r = requests.post(sidecar.url("/mantle/v1/chat/completions"), json={}, timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "route_not_configured"


def test_api_keys_are_refused_for_the_agents_runtime_but_not_for_mantle(start_sidecar, fake_aws):
    # AWS: API keys are limited to Bedrock and the Bedrock runtime; the
    # Agents runtime answers them with 403, so the sidecar says why up front.
    sidecar = start_sidecar({
        "AWS_REGION": "us-east-1",
        "AWS_BEARER_TOKEN_BEDROCK": "ABSKexample",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
        "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME": fake_aws.bedrock,
        "BEDROCK_BROKER_MANTLE_UPSTREAM": fake_aws.bedrock,
    })
    tid = uuid.uuid4().hex
    r = requests.post(sidecar.url("/agent-runtime/retrieveAndGenerate"), json={}, headers={"x-test-id": tid}, timeout=10)
    assert r.status_code == 400
    assert r.headers["x-bedrock-broker-error"] == "api_key_unsupported"
    assert "Agents runtime" in r.json()["message"]
    assert fake_aws.get(f"/bedrock/requests?test_id={tid}") == []

    mantle = uuid.uuid4().hex
    requests.post(sidecar.url("/mantle/v1/chat/completions"), json={"model": "m", "messages": []}, headers={"x-test-id": mantle}, timeout=10)
    assert fake_aws.request_for(mantle)["auth_kind"] == "bearer"


def test_a_client_api_key_on_the_agents_runtime_is_told_to_drop_it(sidecar, fake_aws):
    # The sidecar has SigV4 credentials: the fix is to send no key at all.
    tid = uuid.uuid4().hex
    r = requests.post(
        sidecar.url("/agent-runtime/retrieveAndGenerate"),
        json={},
        headers={"x-test-id": tid, "authorization": "Bearer ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"},
        timeout=10,
    )
    assert r.status_code == 400
    assert r.headers["x-bedrock-broker-error"] == "api_key_unsupported"
    assert "without the API key" in r.json()["message"]
    assert "ABSK" not in r.text
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "retrieve_and_generate", "code": "400", "auth": "api_key_passthrough"}) == 1


def test_an_agent_answer_that_reads_like_usage_is_not_counted_as_tokens(sidecar, fake_aws):
    # InvokeAgent's `chunk` events carry the agent's answer, not a model's
    # JSON: an agent asked for a JSON report with a usage object in it
    # added its made-up numbers to the token counters.
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    client = boto3.client("bedrock-agent-runtime", region_name="us-east-1",
                          endpoint_url=sidecar.url("/agent-runtime"), config=Config(signature_version=UNSIGNED))
    answer = json.dumps({"report": "monthly", "usage": {"input_tokens": 123456, "output_tokens": 654321}})
    out = client.invoke_agent(agentId="AGENT1", agentAliasId="ALIAS1", sessionId="s1", inputText=answer)
    text = b"".join(e["chunk"]["bytes"] for e in out["completion"] if "chunk" in e)
    assert text.decode() == answer
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "invoke_agent", "code": "200", "auth": "sigv4"}) == 1
    counted = [line for line in sidecar.metrics().splitlines() if line.startswith("bedrock_broker_tokens_total{")]
    assert counted == []
