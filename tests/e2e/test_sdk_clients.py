"""Real SDKs (OpenAI Python, boto3) through the sidecar to the fake Bedrock.

The fake Bedrock recomputes every SigV4 signature with botocore, so a green
test here means an independent implementation accepted what we signed.
"""

from __future__ import annotations

import json
import time
import uuid

import boto3
import openai
import pytest
from botocore.config import Config

from conftest import REGION, Collector, wait_for

MODEL_WITH_COLON = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0"


def openai_client(sidecar) -> openai.OpenAI:
    # The SDK insists on an API key; the sidecar strips this placeholder.
    return openai.OpenAI(base_url=sidecar.url("/openai/v1"), api_key="sk-placeholder", max_retries=0, timeout=30)


def bedrock_client(sidecar, read_timeout: float = 30):
    """boto3 pointed at the sidecar, signing with throwaway keys the sidecar replaces."""
    client = boto3.client(
        "bedrock-runtime",
        region_name=REGION,
        endpoint_url=sidecar.proxy,
        aws_access_key_id="AKIDCLIENTPLACEHOLDER",
        aws_secret_access_key="client-placeholder-secret",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout),
    )
    return client


def tag(client, test_id: str):
    """Adds x-test-id to every request the boto3 client sends."""

    def add(request, **_):
        request.headers["x-test-id"] = test_id

    client.meta.events.register_first("before-sign.bedrock-runtime.*", add)
    return client


def assert_signed_by_sidecar(fake_aws, record: dict) -> None:
    assert record["auth_kind"] == "sigv4", record
    assert record["verified"] is True, record
    assert record["status"] == 200, record
    issued = {c["access_key_id"] for c in fake_aws.get("/credentials") if c["kind"] == "sts"}
    assert record["access_key_id"] in issued, "signed with STS-issued credentials, not the client's"
    assert record["access_key_id"] != "AKIDCLIENTPLACEHOLDER"


@pytest.fixture
def sidecar(start_sidecar, irsa_env):
    return start_sidecar(irsa_env)


class TestOpenAISdk:
    def test_chat_completion(self, sidecar, fake_aws):
        tid = uuid.uuid4().hex
        resp = openai_client(sidecar).chat.completions.create(
            model="openai.gpt-oss-20b-1:0",
            messages=[{"role": "user", "content": "hello there"}],
            extra_headers={"x-test-id": tid},
        )
        assert resp.choices[0].message.content
        assert "hello there" in resp.choices[0].message.content
        record = fake_aws.request_for(tid)
        assert_signed_by_sidecar(fake_aws, record)
        assert record["raw_path"] == "/openai/v1/chat/completions"
        assert "authorization" in record["header_names"]

    def test_models_list(self, sidecar, fake_aws):
        models = openai_client(sidecar).models.list(extra_headers={"x-test-id": "models-" + uuid.uuid4().hex})
        assert [m.id for m in models.data]

    def test_streaming_chat_arrives_chunk_by_chunk(self, sidecar, fake_aws):
        """Lockstep: the fake sends chunk k+1 only after the client saw chunk k."""
        sid = "oa-" + uuid.uuid4().hex
        chunks = 4
        stream = openai_client(sidecar).chat.completions.create(
            model="openai.gpt-oss-20b-1:0",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            extra_headers={"x-fake-lockstep": sid, "x-fake-chunks": str(chunks)},
        )
        reader = Collector(stream)
        reader.start()
        for k in range(1, chunks + 1):
            reader.wait_count(k, timeout=10)
            if k < chunks:
                # The client holds chunk k while the fake has not sent chunk k+1:
                # nothing between them buffered.
                assert fake_aws.stream(sid)["chunks_sent"] == k
                fake_aws.release(sid)
        reader.join(timeout=10)
        assert reader.error is None, reader.error
        text = "".join(c.choices[0].delta.content or "" for _, c in reader.items if c.choices)
        assert text
        assert fake_aws.stream(sid)["finished"] is True

    def test_stream_chunks_keep_their_spacing(self, sidecar):
        delay = 0.3
        stream = openai_client(sidecar).chat.completions.create(
            model="openai.gpt-oss-20b-1:0",
            messages=[{"role": "user", "content": "paced"}],
            stream=True,
            extra_headers={"x-fake-chunks": "4", "x-fake-chunk-delay-ms": str(int(delay * 1000))},
        )
        arrivals = [time.monotonic() for _ in stream]
        assert len(arrivals) >= 4
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        # Each of the three paced gaps is visible to the client (none collapsed by buffering).
        assert sum(1 for g in gaps if g >= delay * 0.7) >= 3, gaps


class TestBoto3:
    @pytest.mark.parametrize("model_id", [MODEL_WITH_COLON, PROFILE_ARN])
    def test_converse(self, sidecar, fake_aws, model_id):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        resp = client.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": "hi boto"}]}])
        assert resp["output"]["message"]["content"][0]["text"]
        assert resp["usage"]["inputTokens"] >= 0
        record = fake_aws.request_for(tid)
        assert_signed_by_sidecar(fake_aws, record)
        assert record["model_id"] == model_id
        # botocore's attempt headers reach AWS, unsigned: a new invocation
        # id on every call would otherwise cost each call a whole re-hash.
        for name in ["amz-sdk-invocation-id", "amz-sdk-request"]:
            assert name in record["header_names"], record["header_names"]
            assert name not in record["signed_headers"], record["signed_headers"]
        # The path went through byte for byte (botocore percent-encodes the ARN).
        assert record["raw_path"].endswith("/converse")
        if "/" in model_id:
            assert "%2F" in record["raw_path"] or "%2f" in record["raw_path"]

    @pytest.mark.parametrize("model_id", [MODEL_WITH_COLON, PROFILE_ARN])
    def test_converse_stream(self, sidecar, fake_aws, model_id):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        resp = client.converse_stream(modelId=model_id, messages=[{"role": "user", "content": [{"text": "stream"}]}])
        events = list(resp["stream"])
        kinds = [next(iter(e)) for e in events]
        assert kinds[0] == "messageStart"
        assert "contentBlockDelta" in kinds
        assert "messageStop" in kinds
        assert kinds[-1] == "metadata"
        assert_signed_by_sidecar(fake_aws, fake_aws.request_for(tid))

    def test_converse_stream_is_incremental(self, sidecar, fake_aws):
        sid = "cs-" + uuid.uuid4().hex
        client = bedrock_client(sidecar)

        def add(request, **_):
            request.headers["x-fake-lockstep"] = sid
            request.headers["x-fake-chunks"] = "3"

        client.meta.events.register_first("before-sign.bedrock-runtime.*", add)
        resp = client.converse_stream(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
        reader = Collector(resp["stream"])
        reader.start()
        # The first event reached the client while the fake still holds the rest.
        reader.wait_count(1, timeout=10)
        status = fake_aws.stream(sid)
        assert status["finished"] is False
        sent_before = status["chunks_sent"]
        wait_for(lambda: fake_aws.release(sid) or fake_aws.stream(sid)["finished"], timeout=15, interval=0.05, what="stream to finish")
        reader.join(timeout=10)
        assert reader.error is None
        assert len(reader.items) > sent_before

    @pytest.mark.parametrize("model_id", [MODEL_WITH_COLON, PROFILE_ARN])
    def test_invoke_model(self, sidecar, fake_aws, model_id):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": [{"role": "user", "content": "invoke me"}]}
        resp = client.invoke_model(modelId=model_id, body=json.dumps(body), contentType="application/json", accept="application/json")
        payload = json.loads(resp["body"].read())
        assert payload
        record = fake_aws.request_for(tid)
        assert_signed_by_sidecar(fake_aws, record)
        assert json.loads(record["body"]) == body

    @pytest.mark.parametrize("model_id", [MODEL_WITH_COLON, PROFILE_ARN])
    def test_invoke_model_with_response_stream(self, sidecar, fake_aws, model_id):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        resp = client.invoke_model_with_response_stream(
            modelId=model_id, body=json.dumps({"prompt": "go"}), contentType="application/json"
        )
        chunks = [json.loads(e["chunk"]["bytes"]) for e in resp["body"] if "chunk" in e]
        assert len(chunks) >= 2
        assert_signed_by_sidecar(fake_aws, fake_aws.request_for(tid))

    def test_upstream_errors_pass_through_unchanged(self, sidecar, fake_aws):
        client = bedrock_client(sidecar)

        def add(request, **_):
            request.headers["x-fake-status"] = "429"

        client.meta.events.register_first("before-sign.bedrock-runtime.*", add)
        with pytest.raises(client.exceptions.ThrottlingException) as e:
            client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
        headers = e.value.response["ResponseMetadata"]["HTTPHeaders"]
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert "x-bedrock-broker-error" not in headers


class TestOtherRuntimeOperations:
    """Pass-through of the rest of the runtime API, each signed and labelled."""

    def test_count_tokens(self, sidecar, fake_aws):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        out = client.count_tokens(
            modelId=MODEL_WITH_COLON,
            input={"converse": {"messages": [{"role": "user", "content": [{"text": "count these words"}]}]}},
        )
        assert out["inputTokens"] > 0
        assert_signed_by_sidecar(fake_aws, fake_aws.request_for(tid))
        assert sidecar.metric("bedrock_broker_requests_total", {"operation": "count_tokens", "code": "200", "auth": "sigv4"}) == 1

    def test_apply_guardrail(self, sidecar, fake_aws):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        out = client.apply_guardrail(
            guardrailIdentifier="gr-abc123", guardrailVersion="1", source="INPUT",
            content=[{"text": {"text": "something forbidden"}}],
        )
        assert out["action"] == "GUARDRAIL_INTERVENED"
        rec = fake_aws.request_for(tid)
        assert_signed_by_sidecar(fake_aws, rec)
        assert rec["raw_path"] == "/guardrail/gr-abc123/version/1/apply"
        assert sidecar.metric("bedrock_broker_requests_total", {"operation": "apply_guardrail", "code": "200", "auth": "sigv4"}) == 1

    def test_async_invoke_start_get_and_list(self, sidecar, fake_aws):
        tid = uuid.uuid4().hex
        client = tag(bedrock_client(sidecar), tid)
        started = client.start_async_invoke(
            modelId="amazon.nova-reel-v1:0",
            modelInput={"taskType": "TEXT_VIDEO", "textToVideoParams": {"text": "a cat"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}},
        )
        arn = started["invocationArn"]
        assert client.get_async_invoke(invocationArn=arn)["status"] == "InProgress"
        assert client.list_async_invokes()["asyncInvokeSummaries"][0]["invocationArn"] == arn
        recs = fake_aws.get(f"/bedrock/requests?test_id={tid}")
        assert [r["method"] for r in recs] == ["POST", "GET", "GET"]
        assert all(r["verified"] and r["status"] == 200 for r in recs), recs
        assert sidecar.metric("bedrock_broker_requests_total", {"operation": "async_invoke", "code": "200", "auth": "sigv4"}) == 3


def test_apps_with_more_pooled_connections_than_the_limit_lose_no_request(start_sidecar, irsa_env, fake_aws):
    # Three OpenAI clients (three workers of one app, each with its own
    # pool) keep a connection each to a proxy that allows two: the third
    # was reset on arrival. Each newcomer now takes the slot of the
    # connection idle the longest (a second at least), and the client
    # whose connection went opens a new one on its next request. No
    # retries, so nothing hides.
    sidecar = start_sidecar(irsa_env, ["--max-connections", "2"])
    clients = [openai_client(sidecar) for _ in range(3)]
    for round_ in range(2):
        for i, client in enumerate(clients):
            if round_ or i == 2:
                # Reclaiming takes a connection idle a second: the time is
                # what is tested, so it is slept.
                time.sleep(1.1)
            resp = client.chat.completions.create(
                model="openai.gpt-oss-20b-1:0",
                messages=[{"role": "user", "content": f"round {round_} worker {i}"}],
            )
            assert f"round {round_} worker {i}" in resp.choices[0].message.content
    assert sidecar.metric("bedrock_broker_connections_reclaimed_total", {"listener": "proxy"}) == 4
    assert sidecar.metric("bedrock_broker_connections_refused_total", {"listener": "proxy"}) == 0
