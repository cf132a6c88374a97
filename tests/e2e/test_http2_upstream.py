"""Ordinary operations over an HTTP/2 upstream, as Bedrock's endpoints negotiate it.

The fake's HTTP/2 port (TLS, ALPN h2) serves every operation: bidirectional
streams itself, the rest through its HTTP/1.1 app, where botocore verifies
the signature on exactly what the sidecar sent (``:authority`` as ``host``)
and the record says which protocol and which client connection it came on.
Every request of the pod shares one upstream connection, so these tests
check that one request's end — finished, cut off by its client, broken off
by Bedrock — leaves the others and the connection alone.
"""

from __future__ import annotations

import http.client
import socket
import urllib.parse
import uuid

import pytest

from conftest import Collector, wait_for
from test_sdk_clients import bedrock_client, openai_client

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
OPENAI_MODEL = "openai.gpt-oss-20b-1:0"
MESSAGES = [{"role": "user", "content": [{"text": "one two three"}]}]


def tokens(sidecar, model: str, direction: str) -> float:
    return sidecar.metric("bedrock_broker_tokens_total", {"model": model, "direction": direction}) or 0


def converse_stream(sidecar, stream_id: str, chunks: int = 3):
    """A ConverseStream held by the fake until released chunk by chunk."""
    client = bedrock_client(sidecar)

    def hold(request, **_):
        request.headers["x-fake-lockstep"] = stream_id
        request.headers["x-fake-chunks"] = str(chunks)

    client.meta.events.register("before-sign.bedrock-runtime.ConverseStream", hold)
    return client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"]


def held_stream_on_a_socket(sidecar, stream_id: str) -> socket.socket:
    """A ConverseStream on a bare connection, returned once its first event is in."""
    address = urllib.parse.urlsplit(sidecar.proxy).netloc
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    body = b'{"messages":[{"role":"user","content":[{"text":"a"}]}]}'
    sock.sendall(
        f"POST /model/{MODEL}/converse-stream HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n"
        f"x-fake-lockstep: {stream_id}\r\nx-fake-chunks: 3\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )
    received = b""
    while b"messageStart" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended before the first event: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received
    return sock


def test_every_api_is_signed_streamed_and_counted_over_one_http2_connection(start_sidecar, h2_env, fake_aws_h2):
    sidecar = start_sidecar(h2_env)
    client = bedrock_client(sidecar)
    out = client.converse(modelId=MODEL, messages=MESSAGES)
    events = list(client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"])
    invoked = client.invoke_model(modelId="anthropic.claude-v2", body=b'{"prompt": "\\n\\nHuman: hi\\n\\nAssistant:"}')
    chunks = list(openai_client(sidecar).chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    ))

    assert out["output"]["message"]["content"][0]["text"]
    assert "messageStop" in events[-2] and "metadata" in events[-1], events[-2:]
    assert invoked["body"].read()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    records = fake_aws_h2.requests()
    assert [r["route"] for r in records] == ["converse", "converse-stream", "invoke", "openai-chat"]
    assert all(r["verified"] and r["status"] == 200 and r["http_version"] == "2" for r in records), records
    assert len({r["peer_port"] for r in records}) == 1, "one upstream connection for every request"
    wait_for(lambda: tokens(sidecar, OPENAI_MODEL, "output") == chunks[-1].usage.completion_tokens, timeout=5,
             what="the chat completion's usage")
    streamed = events[-1]["metadata"]["usage"]["outputTokens"]
    assert tokens(sidecar, MODEL, "output") == out["usage"]["outputTokens"] + streamed
    assert tokens(sidecar, "anthropic.claude-v2", "input") > 0


def test_a_client_leaving_mid_stream_resets_its_stream_and_not_the_connection(start_sidecar, h2_env, fake_aws_h2):
    sidecar = start_sidecar(h2_env)
    bedrock_client(sidecar).converse(modelId=MODEL, messages=MESSAGES)  # the connection, before the streams share it
    left, stays = "h2-left-" + uuid.uuid4().hex, "h2-stays-" + uuid.uuid4().hex
    staying = Collector(converse_stream(sidecar, stays))
    staying.start()
    # The first event is through while the fake holds the rest: nothing buffers it on the way.
    staying.wait_count(1)
    leaving = held_stream_on_a_socket(sidecar, left)
    leaving.close()  # the client goes away mid-answer

    wait_for(lambda: fake_aws_h2.stream(left)["client_disconnected"], timeout=10, what="Bedrock to see the reset")
    fake_aws_h2.release(stays)
    fake_aws_h2.release(stays)
    staying.join(timeout=10)
    assert staying.error is None, staying.error
    assert fake_aws_h2.stream(stays)["finished"]
    bedrock_client(sidecar).converse(modelId=MODEL, messages=MESSAGES)

    records = fake_aws_h2.requests()
    assert len(records) == 4 and len({r["peer_port"] for r in records}) == 1, records
    labels = {"operation": "converse_stream", "reason": "cut_off"}
    wait_for(lambda: sidecar.metric("bedrock_broker_answers_without_usage_total", labels) == 1, timeout=10,
             what="the abandoned stream counted as cut off")


def test_an_answer_bedrock_breaks_off_is_an_error_and_the_connection_serves_on(start_sidecar, h2_env, fake_aws_h2):
    sidecar = start_sidecar(h2_env)
    bedrock_client(sidecar).converse(modelId=MODEL, messages=MESSAGES)
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(sidecar.proxy).netloc, timeout=10)
    conn.request("POST", f"/model/{MODEL}/converse", body=b'{"messages":[{"role":"user","content":[{"text":"a"}]}]}',
                 headers={"content-type": "application/json", "x-fake-break-body": "1"})
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    labels = {"operation": "converse", "type": "upstream_broke_off"}
    wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
             what="the broken answer counted")

    bedrock_client(sidecar).converse(modelId=MODEL, messages=MESSAGES)
    records = fake_aws_h2.requests()
    assert len(records) == 3 and len({r["peer_port"] for r in records}) == 1, "a reset stream keeps the connection"
