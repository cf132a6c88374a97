"""Fake Bedrock's routes and replies, through boto3, the openai SDK and raw requests, over HTTP and HTTPS."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import boto3
import pytest
import urllib3
from botocore.exceptions import ClientError

from harness import (
    MODEL,
    NO_RETRY,
    PROFILE_ARN,
    REGION,
    Fake,
    assume,
    bedrock_requests,
    control,
    converse_body,
    runtime_client,
    send,
    sign,
)


def test_boto3_converse_and_invoke(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-test-id": "t-conv", "x-llamastack-provider-data": "{}"})
    out = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "ping"}]}])
    assert out["output"]["message"]["content"][0]["text"] == f"fake reply from {MODEL} to: ping"
    assert out["stopReason"] == "end_turn" and out["usage"]["totalTokens"] > 0

    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "pong"}]})
    inv = client.invoke_model(modelId=MODEL, body=body, contentType="application/json", accept="application/json")
    assert inv["contentType"] == "application/json"
    assert json.loads(inv["body"].read())["content"][0]["text"] == f"fake reply from {MODEL} to: pong"

    recs = bedrock_requests(fake, test_id="t-conv")
    assert [r["route"] for r in recs] == ["converse", "invoke"]
    for r in recs:
        assert r["verified"] and r["status"] == 200 and r["auth"] == f"sigv4:{sts_creds['AccessKeyId']}"
        assert r["model_id"] == MODEL
        assert r["raw_path"].startswith("/model/anthropic.claude-3-haiku-20240307-v1%3A0/")
        assert r["headers_present"]["x-llamastack-provider-data"] and r["headers_present"]["x-amz-security-token"]
        assert r["security_token_signed"] is True
        assert "host" in r["signed_headers"] and "x-amz-date" in r["signed_headers"]
        assert r["user_agent"] and "botocore" in r["user_agent"].lower()
    assert recs[1]["body_sha256"] and json.loads(recs[1]["body"])["messages"][0]["content"] == "pong"


def test_guardrail_trace_follows_the_usage_only_when_asked_for(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-test-id": "t-trace"})
    msgs = [{"role": "user", "content": [{"text": "ping"}]}]
    assert "trace" not in client.converse(modelId=MODEL, messages=msgs)
    guardrail = {"guardrailIdentifier": "fake-guardrail", "guardrailVersion": "1", "trace": "enabled"}
    out = client.converse(modelId=MODEL, messages=msgs, guardrailConfig=guardrail)
    metrics = out["trace"]["guardrail"]["inputAssessment"]["fake-guardrail"]["invocationMetrics"]
    assert metrics["usage"]["topicPolicyUnits"] == 1 and out["usage"]["totalTokens"] > 0
    meta = [e["metadata"] for e in client.converse_stream(modelId=MODEL, messages=msgs, guardrailConfig=guardrail)["stream"]
            if "metadata" in e][0]
    assert meta["trace"]["guardrail"]["outputAssessments"]["fake-guardrail"][0]["invocationMetrics"]["usage"]
    assert meta["usage"]["totalTokens"] > 0
    # The order the proxy's usage reader must cope with: the trace's usage comes last.
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = json.dumps({"messages": msgs, "guardrailConfig": guardrail}).encode()
    raw = send(url, body, sign(url, body, sts_creds)).data
    assert raw.index(b'"trace"') > raw.index(b'"inputTokens"') and raw.rindex(b'"usage"') > raw.index(b'"trace"')


def test_boto3_converse_stream(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-chunks": "4"})
    events = list(client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "s"}]}])["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["messageStart"] + ["contentBlockDelta"] * 4 + ["contentBlockStop", "messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text.startswith(f"fake reply from {MODEL} to: s") and text.endswith("<chunk 4/4>")
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["totalTokens"] > 0
    stream_id = bedrock_requests(fake)[-1]["stream_id"]
    status = control(fake, "GET", f"/stream/{stream_id}")
    assert status["chunks_sent"] == 4 and status["finished"] and not status["client_disconnected"]


def test_boto3_converse_stream_zero_chunks(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-chunks": "0"})
    events = list(client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "s"}]}])["stream"])
    assert [next(iter(e)) for e in events] == ["messageStart", "contentBlockStop", "messageStop", "metadata"]


def test_boto3_invoke_with_response_stream(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-chunks": "3"})
    body = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "yo"}]}]})
    resp = client.invoke_model_with_response_stream(modelId=MODEL, body=body)
    chunks = [json.loads(e["chunk"]["bytes"]) for e in resp["body"]]
    types = [c["type"] for c in chunks]
    assert types == ["message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    text = "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
    assert text.startswith(f"fake reply from {MODEL} to: yo") and "<chunk 3/3>" in text


def test_bearer_tokens_default_and_configured(fake: Fake):
    url = f"{fake.bedrock}/model/{MODEL}/converse"

    def call(token: str) -> urllib3.BaseHTTPResponse:
        return send(url, converse_body(), {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

    assert call("bedrock-api-key-abc").status == 200
    assert call("ABSKxyz").status == 200
    bad = call("sk-nope")
    assert bad.status == 403 and json.loads(bad.data) == {"message": "Invalid API key"}
    assert bad.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    control(fake, "POST", "/bearer_tokens", {"tokens": ["only-this"]})
    assert call("only-this").status == 200
    assert call("ABSKxyz").status == 403
    recs = bedrock_requests(fake)
    assert [r["auth"] for r in recs] == ["bearer:bedrock-api-key-abc", "bearer:ABSKxyz", "bearer:sk-nope", "bearer:only-this", "bearer:ABSKxyz"]
    assert [r["verified"] for r in recs] == [True, True, False, True, False]


def test_botocore_bearer_token_env(tls_fake: Fake, monkeypatch: pytest.MonkeyPatch):
    # botocore only sends bearer tokens over HTTPS, hence the TLS fake.
    control(tls_fake, "POST", "/reset", {})
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-from-env")
    client = boto3.client("bedrock-runtime", endpoint_url=tls_fake.bedrock, region_name=REGION, config=NO_RETRY,
                          verify=tls_fake.ca_path)
    out = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "env"}]}])
    assert out["output"]["message"]["content"][0]["text"].endswith("to: env")
    assert bedrock_requests(tls_fake)[-1]["auth"] == "bearer:bedrock-api-key-from-env"


def test_openai_sdk(fake: Fake):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{fake.bedrock}/openai/v1", api_key="bedrock-api-key-oai", max_retries=0,
                           default_headers={"x-test-id": "oai"})
    out = client.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hey"}])
    assert out.choices[0].message.content == "fake reply from openai.gpt-oss-20b-1:0 to: hey"
    assert out.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "yo"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-fake-chunks": "3"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("fake reply from m1 to: yo") and text.endswith("<chunk 3/3>")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    models = client.models.list()
    assert "openai.gpt-oss-20b-1:0" in [m.id for m in models.data]

    bad = openai.OpenAI(base_url=f"{fake.bedrock}/openai/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        bad.models.list()
    recs = bedrock_requests(fake, test_id="oai")
    assert [r["route"] for r in recs] == ["openai-chat", "openai-chat", "openai-models"]
    assert all(r["auth"] == "bearer:bedrock-api-key-oai" for r in recs)


def test_openai_sse_wire_format(fake: Fake):
    resp = send(f"{fake.bedrock}/openai/v1/chat/completions",
                json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode(),
                {"Authorization": "Bearer ABSK1", "x-fake-chunks": "2"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    frames = resp.data.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert json.loads(frames[0][6:])["object"] == "chat.completion.chunk"
    assert not any("usage" in json.loads(f[6:]) for f in frames[:-2])


def test_openai_sse_with_include_usage_sends_null_usage_until_the_last_chunk(fake: Fake):
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "x"}]}
    resp = send(f"{fake.bedrock}/openai/v1/chat/completions", json.dumps(body).encode(),
                {"Authorization": "Bearer ABSK1", "x-fake-chunks": "2"})
    frames = resp.data.decode().split("\n\n")[:-2]
    assert all('"usage":null' in f for f in frames[:-1])
    chunks = [json.loads(f[6:]) for f in frames]
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1) and len(chunks) == 4
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("status, error_type", [(429, "ThrottlingException"), (400, "ValidationException"),
                                                (500, "InternalServerException"), (503, "ServiceUnavailableException")])
def test_fake_status_passthrough(fake: Fake, sts_creds: dict, status: int, error_type: str):
    client = runtime_client(fake, sts_creds, {"x-fake-status": str(status)})
    with pytest.raises(ClientError) as exc:
        client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "e"}]}])
    assert exc.value.response["Error"]["Code"] == error_type
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_a_denied_model_is_an_access_denied_error(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds)
    for call in (client.converse, client.converse_stream):
        with pytest.raises(client.exceptions.AccessDeniedException) as exc:
            call(modelId="anthropic.fake-denied-v1:0", messages=[{"role": "user", "content": [{"text": "e"}]}])
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    resp = send(f"{fake.bedrock}/openai/v1/chat/completions",
                json.dumps({"model": "openai.fake-denied", "messages": [{"role": "user", "content": "x"}]}).encode(),
                {"Authorization": "Bearer ABSK1"})
    assert resp.status == 403 and resp.headers["x-amzn-ErrorType"] == "AccessDeniedException"


def test_a_region_the_account_has_not_enabled_refuses_every_key(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds)
    control(fake, "POST", "/bedrock", {"region_enabled": False})
    with pytest.raises(client.exceptions.ClientError) as exc:
        client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    (record,) = bedrock_requests(fake)[-1:]
    assert record["verified"] and record["rejection"] == "region not enabled for the account"
    control(fake, "POST", "/bedrock", {"region_enabled": True})
    assert client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])["output"]


def test_bad_fake_header_is_a_400(fake: Fake):
    resp = send(f"{fake.bedrock}/model/{MODEL}/converse-stream", converse_body(),
                {"Authorization": "Bearer ABSK1", "x-fake-chunks": "many"})
    assert resp.status == 400 and b"x-fake-chunks" in resp.data


@pytest.mark.parametrize("style,written", [
    ("json", "Bearer ABSKa+b/c="),
    ("json-u", "Bearer ABSKa\\u002Bb\\u002fc\\u003D"),
    ("html", "Bearer ABSKa&#43;b&#x2F;c&equals;"),
    ("percent", "Bearer%20ABSKa%2Bb%2Fc%3D"),
    ("colon-space", "Authorization : Bearer ABSKa+b/c="),
    ("text", "Authorization: Bearer ABSKa+b/c="),
])
def test_echoed_headers_are_written_as_asked(fake: Fake, style: str, written: str):
    resp = send(f"{fake.bedrock}/model/{MODEL}/converse", converse_body(),
                {"Authorization": "Bearer ABSKa+b/c=", "x-fake-echo-headers": style, "x-fake-status": "500"})
    assert resp.status == 500
    assert written in resp.data.decode()
    if style != "text":
        assert resp.headers["x-amzn-ErrorType"] == "InternalServerException"
        assert json.loads(resp.data)["code"] == "InternalServerException"


@pytest.mark.parametrize("cut,written,unwritten", [
    ("12", "[Bearer ABSKa]", "ABSKa+"),
    ("9:6", "[SKa+b/]", "ABSKa+b/"),
])
def test_echoed_headers_may_be_cut_and_unnamed(fake: Fake, cut: str, written: str, unwritten: str):
    resp = send(f"{fake.bedrock}/model/{MODEL}/converse", converse_body(),
                {"Authorization": "Bearer ABSKa+b/c=", "x-fake-echo-headers": "json", "x-fake-echo-cut": cut})
    assert resp.status == 403
    message = json.loads(resp.data)["message"]
    assert message.startswith("fake bedrock-runtime relay refused the request; it saw (cut)\n")
    assert written in message
    assert unwritten not in message and "Authorization" not in message


def test_a_signature_error_may_name_its_type_in_the_body_only(fake: Fake, sts_creds: dict):
    client = runtime_client(fake, sts_creds, {"x-fake-sigv4-mismatch": "type-in-body"})
    with pytest.raises(ClientError) as raised:
        client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert raised.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert "x-amzn-ErrorType" not in raised.value.response["ResponseMetadata"]["HTTPHeaders"]


def test_malformed_json_body(fake: Fake):
    resp = send(f"{fake.bedrock}/model/{MODEL}/converse", b"{not json", {"Authorization": "Bearer ABSK1"})
    assert resp.status == 400 and resp.headers["x-amzn-ErrorType"] == "ValidationException"


def test_many_concurrent_requests_with_mixed_auth(fake: Fake, sts_creds: dict, static_creds: dict):
    url = f"{fake.bedrock}/model/{MODEL}/converse"
    body = converse_body("concurrent")
    kinds = ["sts", "static", "bearer", "bad-bearer", "bad-sig", "stream"] * 10

    def headers_for(kind: str, i: int) -> dict:
        h = {"x-test-id": f"conc-{i}"}
        if kind == "sts":
            return sign(url, body, sts_creds, headers=h)
        if kind == "static":
            return sign(url, body, static_creds, headers=h)
        if kind == "bad-sig":
            return sign(url, body, {**static_creds, "SecretAccessKey": "z" * 40}, headers=h)
        token = "ABSK-ok" if kind in ("bearer", "stream") else "nope"
        return {**h, "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                **({"x-fake-chunks": "3", "x-fake-chunk-delay-ms": "20"} if kind == "stream" else {})}

    prepared = [(kind, headers_for(kind, i)) for i, kind in enumerate(kinds)]

    async def one(session: aiohttp.ClientSession, kind: str, headers: dict) -> tuple:
        target = url.replace("/converse", "/converse-stream") if kind == "stream" else url
        # Host is signed as 127.0.0.1:PORT, which is what aiohttp sends.
        async with session.post(target, data=body, headers=headers) as r:
            await r.read()
            return kind, r.status

    async def run() -> list:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=12)) as session:
            return await asyncio.gather(*(one(session, k, h) for k, h in prepared))

    results = asyncio.run(run())
    expected = {"sts": 200, "static": 200, "bearer": 200, "stream": 200, "bad-bearer": 403, "bad-sig": 403}
    assert all(status == expected[kind] for kind, status in results), results
    recs = bedrock_requests(fake)
    assert len(recs) == len(kinds)
    by_id = {r["x_test_id"]: r for r in recs}
    for i, kind in enumerate(kinds):
        assert by_id[f"conc-{i}"]["verified"] == (expected[kind] == 200)
    assert len({r["peer_port"] for r in recs}) <= 12, "connections are kept alive and reused"


def test_tls_bedrock(tls_fake: Fake):
    assert tls_fake.bedrock.startswith("https://127.0.0.1:") and tls_fake.sts.startswith("http://")
    control(tls_fake, "POST", "/reset", {})
    creds = assume(tls_fake)["Credentials"]
    client = runtime_client(tls_fake, creds, {"x-fake-chunks": "2"})
    out = client.converse(modelId=PROFILE_ARN, messages=[{"role": "user", "content": [{"text": "tls"}]}])
    assert out["output"]["message"]["content"][0]["text"].endswith("to: tls")
    events = list(client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "t"}]}])["stream"])
    assert sum("contentBlockDelta" in e for e in events) == 2
    url = f"{tls_fake.bedrock}/model/{MODEL}/converse"
    assert send(url, converse_body(), sign(url, converse_body(), creds), ca=tls_fake.ca_path).status == 200
    assert all(r["verified"] for r in bedrock_requests(tls_fake))


def test_compression_when_configured(fake: Fake):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "zip"}]}).encode()
    headers = {"Authorization": "Bearer ABSK1", "Accept-Encoding": "gzip"}
    plain = send(f"{fake.bedrock}/openai/v1/chat/completions", body, headers)
    assert "Content-Encoding" not in plain.headers
    control(fake, "POST", "/bedrock", {"compress": True})
    for accept, coding in [("gzip", "gzip"), ("deflate", "deflate"), ("identity", None)]:
        resp = send(f"{fake.bedrock}/openai/v1/chat/completions", body, {**headers, "Accept-Encoding": accept})
        assert resp.headers.get("Content-Encoding") == coding, accept
        assert json.loads(resp.data)["usage"]["total_tokens"] > 0  # urllib3 decodes it
    stream = send(f"{fake.bedrock}/openai/v1/chat/completions",
                  json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "z"}]}).encode(),
                  headers)
    assert stream.headers["Content-Encoding"] == "gzip" and stream.data.decode().endswith("data: [DONE]\n\n")


def test_bedrock_judges_signatures_by_the_aws_clock_and_dates_its_answers_by_it(fake: Fake, sts_creds: dict):
    # One AWS clock for STS and Bedrock: 400 s behind the caller's, a
    # botocore signature is "expired" to Bedrock, and the refusal's Date
    # says what time AWS thinks it is.
    from email.utils import parsedate_to_datetime
    import time

    client = runtime_client(fake, sts_creds)
    control(fake, "POST", "/sts", {"clock_offset_seconds": -400})
    try:
        with pytest.raises(ClientError) as raised:
            client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
        error = raised.value.response
        assert error["Error"]["Code"] == "InvalidSignatureException"
        assert error["Error"]["Message"].startswith("Signature expired")
        behind = time.time() - parsedate_to_datetime(error["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
        assert 398 <= behind <= 402, behind
        # Within five minutes the same signature is fine, dated as AWS has it.
        control(fake, "POST", "/sts", {"clock_offset_seconds": -120})
        answer = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
        behind = time.time() - parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
        assert 118 <= behind <= 122, behind
    finally:
        control(fake, "POST", "/sts", {"clock_offset_seconds": 0})
