"""Timeouts answered in the client's dialect, and token usage metrics."""

from __future__ import annotations

import http.client
import urllib.parse
import uuid

import boto3
import botocore.exceptions
from botocore.config import Config
import openai
import pytest

from conftest import wait_for
from test_sdk_clients import MODEL_WITH_COLON, PROFILE_ARN, bedrock_client, openai_client


def with_headers(client, headers: dict):
    def add(request, **_):
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register_first("before-sign.bedrock-runtime.*", add)
    return client


def test_response_header_timeout_is_a_504_in_each_dialect(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, ["--response-header-timeout", "300ms"])
    with pytest.raises(openai.APIStatusError) as e:
        openai_client(sidecar).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-response-delay-ms": "3000"}
        )
    assert e.value.status_code == 504
    assert e.value.body["code"] == "upstream_timeout"
    client = with_headers(bedrock_client(sidecar), {"x-fake-response-delay-ms": "3000"})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 504
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-bedrock-broker-error"] == "upstream_timeout"


def test_requests_a_client_gives_up_on_are_counted_as_499(start_sidecar, irsa_env, fake_aws):
    # boto3's read timeout (60 s by default) on a slow Converse, retried:
    # Bedrock got every attempt, and each must show in requests_total and
    # in the duration histogram, not vanish with the client's connection.
    sidecar = start_sidecar(irsa_env)
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=sidecar.proxy,
        aws_access_key_id="AKIDCLIENTPLACEHOLDER", aws_secret_access_key="placeholder",
        config=Config(retries={"total_max_attempts": 2, "mode": "standard"}, read_timeout=0.5),
    )
    client = with_headers(client, {"x-fake-response-delay-ms": "3000"})
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    abandoned = {"operation": "converse", "code": "499", "auth": "sigv4"}
    wait_for(lambda: sidecar.metric("bedrock_broker_requests_total", abandoned) == 2, timeout=10,
             what="two abandoned requests counted")
    durations = {"operation": "converse"}
    assert sidecar.metric("bedrock_broker_request_duration_seconds_count", durations) == 2
    # Counted once each: nothing else was recorded for them.
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse", "code": "504"}) is None
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse", "code": "200"}) is None
    # An answered request is counted by its status, not as abandoned too.
    bedrock_client(sidecar).converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    wait_for(lambda: sidecar.metric("bedrock_broker_requests_total", {**abandoned, "code": "200"}) == 1, timeout=10,
             what="the answered request counted")
    assert sidecar.metric("bedrock_broker_requests_total", abandoned) == 2
    assert sidecar.metric("bedrock_broker_request_duration_seconds_count", durations) == 3


def test_stalled_openai_stream_ends_with_an_error_event_the_sdk_raises(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, ["--stream-idle-timeout", "500ms"])
    sid = "idle-" + uuid.uuid4().hex
    stream = openai_client(sidecar).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True,
        extra_headers={"x-fake-lockstep": sid, "x-fake-chunks": "3"},
    )
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            got.append(chunk)
    assert got, "the chunk sent before the stall reached the client"
    assert "stream-idle-timeout" in str(e.value)
    wait_for(lambda: fake_aws.stream(sid)["client_disconnected"] or fake_aws.stream(sid)["gave_up"], timeout=40, what="upstream stream to be dropped")


def test_stalled_event_stream_ends_with_an_exception_boto3_raises(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, ["--stream-idle-timeout", "500ms"])
    sid = "idle-es-" + uuid.uuid4().hex
    client = with_headers(bedrock_client(sidecar), {"x-fake-lockstep": sid, "x-fake-chunks": "3"})
    resp = client.converse_stream(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    events = []
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for ev in resp["stream"]:
            events.append(ev)
    assert events and "messageStart" in events[0]
    assert e.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert "stream-idle-timeout" in e.value.response["Error"]["Message"]
    # Counted as the sidecar's cut, not as an exception from Bedrock.
    labels = {"operation": "converse_stream", "type": "upstream_idle_timeout"}
    wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
             what="the cut counted")
    assert sidecar.metric("bedrock_broker_stream_errors_total", {"operation": "converse_stream", "type": "modelStreamErrorException"}) is None


def test_an_exception_ending_a_stream_is_counted_beside_its_200(start_sidecar, irsa_env, fake_aws):
    # Bedrock throttles a stream it already answered 200 with its last
    # message: boto3 raises it, and an operator alerting on 429s sees it here.
    sidecar = start_sidecar(irsa_env)
    client = with_headers(bedrock_client(sidecar), {"x-fake-stream-exception": "throttlingException"})
    resp = client.converse_stream(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for _ in resp["stream"]:
            pass
    assert e.value.response["Error"]["Code"] == "throttlingException"
    labels = {"operation": "converse_stream", "type": "throttlingException"}
    wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
             what="the stream's exception counted")
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse_stream", "code": "200", "auth": "sigv4"}) == 1


def test_an_error_chunk_ending_an_openai_stream_is_counted_beside_its_200(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env)
    with pytest.raises(openai.APIError) as e:
        for _ in openai_client(sidecar).chat.completions.create(
            model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "x"}], stream=True,
            extra_headers={"x-fake-stream-exception": "rate_limit_exceeded"},
        ):
            pass
    assert "fake rate_limit_exceeded" in str(e.value)
    labels = {"operation": "chat_completions", "type": "rate_limit_exceeded"}
    wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
             what="the stream's error counted")
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "chat_completions", "code": "200", "auth": "sigv4"}) == 1


def test_an_answer_that_broke_off_is_counted_whatever_carried_its_usage(start_sidecar, irsa_env, fake_aws):
    """An answer whose connection breaks before its end is an error the
    200 hides: InvokeModel's (usage in its headers) as much as Converse's.
    Raw HTTP: botocore retries a short body and then hands back an empty
    Converse answer without raising."""
    sidecar = start_sidecar(irsa_env)
    body = b'{"messages":[{"role":"user","content":[{"text":"a b"}]}]}'
    for operation, path in (("converse", f"/model/{MODEL_WITH_COLON}/converse"),
                            ("invoke", "/model/anthropic.claude-v2/invoke")):
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(sidecar.proxy).netloc, timeout=10)
        conn.request("POST", path, body=body, headers={"content-type": "application/json", "x-fake-break-body": "1"})
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        conn.close()
        labels = {"operation": operation, "type": "upstream_broke_off"}
        wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
                 what=f"the broken {operation} answer counted")
    # Bedrock billed the InvokeModel call: its headers' tokens still count.
    assert tokens(sidecar, "anthropic.claude-v2", "input") > 0


def tokens(sidecar, model: str, direction: str) -> float:
    return sidecar.metric("bedrock_broker_tokens_total", {"model": model, "direction": direction}) or 0


def test_token_usage_is_counted_per_model_for_every_response_shape(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env)
    client = bedrock_client(sidecar)
    msgs = [{"role": "user", "content": [{"text": "one two three"}]}]
    out = client.converse(modelId=MODEL_WITH_COLON, messages=msgs)
    expected_in, expected_out = out["usage"]["inputTokens"], out["usage"]["outputTokens"]
    # Counted as the body ends, which can be just after the client has it.
    wait_for(lambda: tokens(sidecar, MODEL_WITH_COLON, "input") == expected_in, timeout=5, what="converse usage")
    assert tokens(sidecar, MODEL_WITH_COLON, "output") == expected_out

    streamed = [e for e in client.converse_stream(modelId=PROFILE_ARN, messages=msgs)["stream"]]
    meta = [e["metadata"] for e in streamed if "metadata" in e][0]
    wait_for(lambda: tokens(sidecar, PROFILE_ARN, "output") == meta["usage"]["outputTokens"], timeout=5, what="stream usage")
    assert tokens(sidecar, PROFILE_ARN, "input") == meta["usage"]["inputTokens"]

    inv = client.invoke_model(modelId="anthropic.claude-v2", body=b'{"messages":[{"role":"user","content":"a b"}]}')
    header_count = int(inv["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"])
    wait_for(lambda: tokens(sidecar, "anthropic.claude-v2", "input") == header_count, timeout=5, what="invoke usage")

    resp = client.invoke_model_with_response_stream(modelId="meta.llama3", body=b'{"prompt":"a b c d"}')
    list(resp["body"])
    wait_for(lambda: tokens(sidecar, "meta.llama3", "output") > 0, timeout=5, what="invoke stream usage")

    oa = openai_client(sidecar)
    r = oa.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hello big world"}])
    wait_for(lambda: tokens(sidecar, "openai.gpt-oss-20b-1:0", "input") == r.usage.prompt_tokens, timeout=5, what="chat usage")
    chunks = list(oa.chat.completions.create(
        model="openai.gpt-oss-120b-1:0", messages=[{"role": "user", "content": "x y"}], stream=True,
        stream_options={"include_usage": True},
    ))
    usage = [c.usage for c in chunks if c.usage][0]
    wait_for(lambda: tokens(sidecar, "openai.gpt-oss-120b-1:0", "output") == usage.completion_tokens, timeout=5, what="sse usage")
    ttft = sidecar.metric("bedrock_broker_time_to_first_token_seconds_count", {"operation": "chat_completions"})
    assert ttft == 1
    assert sidecar.metric("bedrock_broker_time_to_first_token_seconds_count", {"operation": "converse_stream"}) == 1


def test_cached_prompt_tokens_count_alike_whichever_api_reports_them(start_sidecar, irsa_env, fake_aws):
    """OpenAI counts the tokens its prompt cache served inside
    ``prompt_tokens``; Converse counts them apart. The same prompt, half of
    it cached, must read the same in the metrics either way: ``input`` the
    fresh tokens, ``cache_read`` the cached ones, never counted twice."""
    sidecar = start_sidecar(irsa_env)
    cached = {"x-fake-cached-tokens": "40"}
    msgs = [{"role": "user", "content": [{"text": "one two three"}]}]
    out = with_headers(bedrock_client(sidecar), cached).converse(modelId=MODEL_WITH_COLON, messages=msgs)
    assert out["usage"]["cacheReadInputTokens"] == 40
    wait_for(lambda: tokens(sidecar, MODEL_WITH_COLON, "cache_read") == 40, timeout=5, what="converse cache reads")
    assert tokens(sidecar, MODEL_WITH_COLON, "input") == out["usage"]["inputTokens"]

    oa = openai_client(sidecar)
    r = oa.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "one two three"}],
                                   extra_headers=cached)
    assert r.usage.prompt_tokens_details.cached_tokens == 40
    wait_for(lambda: tokens(sidecar, "openai.gpt-oss-20b-1:0", "cache_read") == 40, timeout=5, what="chat cache reads")
    assert tokens(sidecar, "openai.gpt-oss-20b-1:0", "input") == r.usage.prompt_tokens - 40
    assert tokens(sidecar, "openai.gpt-oss-20b-1:0", "input") == out["usage"]["inputTokens"]

    chunks = list(oa.chat.completions.create(
        model="openai.gpt-oss-120b-1:0", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True}, extra_headers=cached,
    ))
    usage = [c.usage for c in chunks if c.usage][0]
    assert usage.prompt_tokens_details.cached_tokens == 40
    wait_for(lambda: tokens(sidecar, "openai.gpt-oss-120b-1:0", "cache_read") == 40, timeout=5, what="sse cache reads")
    assert tokens(sidecar, "openai.gpt-oss-120b-1:0", "input") == usage.prompt_tokens - 40


def test_answers_whose_tokens_went_uncounted_show_why(start_sidecar, irsa_env, fake_aws):
    """An OpenAI SDK stream without ``stream_options.include_usage`` gets no
    usage from Bedrock, so ``tokens_total`` cannot count it: the operator
    must be able to see that, and why, rather than trust a low count."""
    sidecar = start_sidecar(irsa_env)
    oa = openai_client(sidecar)
    msgs = [{"role": "user", "content": "one two three"}]
    chunks = list(oa.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=msgs, stream=True))
    assert chunks and not any(c.usage for c in chunks)
    not_reported = {"operation": "chat_completions", "reason": "not_reported"}
    wait_for(lambda: sidecar.metric("bedrock_broker_answers_without_usage_total", not_reported) == 1, timeout=5,
             what="a stream without usage counted")
    assert tokens(sidecar, "openai.gpt-oss-20b-1:0", "output") == 0

    # With usage asked for, its tokens count and nothing is missing.
    list(oa.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=msgs, stream=True,
                                    stream_options={"include_usage": True}))
    wait_for(lambda: tokens(sidecar, "openai.gpt-oss-20b-1:0", "output") > 0, timeout=5, what="sse usage")
    oa.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=msgs)
    bedrock_client(sidecar).converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    wait_for(lambda: tokens(sidecar, MODEL_WITH_COLON, "output") > 0, timeout=5, what="converse usage")

    # A stream Bedrock ended with an error before its usage.
    with pytest.raises(openai.APIError):
        for _ in oa.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=msgs, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_headers={"x-fake-stream-exception": "server_error"}):
            pass
    cut_off = {"operation": "chat_completions", "reason": "cut_off"}
    wait_for(lambda: sidecar.metric("bedrock_broker_answers_without_usage_total", cut_off) == 1, timeout=5,
             what="a stream cut off before its usage counted")
    assert sidecar.metric("bedrock_broker_answers_without_usage_total", not_reported) == 1
    assert sidecar.metric("bedrock_broker_answers_without_usage_total", {"operation": "converse"}) is None


def test_a_guardrail_trace_does_not_hide_the_answers_tokens(start_sidecar, irsa_env, fake_aws):
    """With a guardrail's trace, Bedrock writes a second ``usage`` (policy
    units, no tokens) after the answer's; the answer's tokens still count."""
    sidecar = start_sidecar(irsa_env)
    client = bedrock_client(sidecar)
    msgs = [{"role": "user", "content": [{"text": "one two three"}]}]
    guardrail = {"guardrailIdentifier": "fake-guardrail", "guardrailVersion": "1", "trace": "enabled"}

    out = client.converse(modelId=MODEL_WITH_COLON, messages=msgs, guardrailConfig=guardrail)
    assert out["trace"]["guardrail"]["inputAssessment"]["fake-guardrail"]["invocationMetrics"]["usage"]
    wait_for(lambda: tokens(sidecar, MODEL_WITH_COLON, "input") == out["usage"]["inputTokens"], timeout=5,
             what="converse usage beside a guardrail trace")
    assert tokens(sidecar, MODEL_WITH_COLON, "output") == out["usage"]["outputTokens"]

    streamed = list(client.converse_stream(modelId=PROFILE_ARN, messages=msgs, guardrailConfig=guardrail)["stream"])
    meta = [e["metadata"] for e in streamed if "metadata" in e][0]
    assert meta["trace"]["guardrail"]["outputAssessments"]["fake-guardrail"]
    wait_for(lambda: tokens(sidecar, PROFILE_ARN, "output") == meta["usage"]["outputTokens"], timeout=5,
             what="stream usage beside a guardrail trace")
    assert tokens(sidecar, PROFILE_ARN, "input") == meta["usage"]["inputTokens"]


def test_usage_metrics_can_be_turned_off(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, ["--usage-metrics", "false"])
    bedrock_client(sidecar).converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert "bedrock_broker_tokens_total{" not in sidecar.metrics()


def test_model_label_slots_go_to_models_that_answered(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env)
    client = bedrock_client(sidecar)
    msgs = [{"role": "user", "content": [{"text": "x"}]}]
    # More failing models than there are label slots (20).
    failing = with_headers(bedrock_client(sidecar), {"x-fake-status": "404"})
    for i in range(25):
        with pytest.raises(botocore.exceptions.ClientError):
            failing.converse(modelId=f"no.such-model-{i}", messages=msgs)
    client.converse(modelId=MODEL_WITH_COLON, messages=msgs)
    wait_for(lambda: tokens(sidecar, MODEL_WITH_COLON, "input") > 0, timeout=5, what="a slot for the model that answered")
    assert "no.such-model" not in sidecar.metrics()
    # A model id too long to be a label is counted, as `other`.
    long_id = "m" * 4096
    client.converse(modelId=long_id, messages=msgs)
    wait_for(lambda: tokens(sidecar, "other", "input") > 0, timeout=5, what="long id counted as other")
    assert long_id[:300] not in sidecar.metrics()
