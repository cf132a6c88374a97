"""Token usage when Bedrock answers compressed (``content-encoding: gzip``).

The client gets Bedrock's compressed bytes unchanged; the usage tap decodes
a copy. The proxy narrows ``Accept-Encoding`` to gzip and deflate, the
codings it can read, so Bedrock never answers in one that hides usage.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid

import openai
import pytest
import requests

from conftest import wait_for
from test_auth_modes import BODY, CONVERSE

MODEL = "openai.gpt-oss-20b-1:0"


@pytest.fixture
def sidecar(start_sidecar, irsa_env, fake_aws):
    fake_aws.post("/bedrock", {"compress": True})
    return start_sidecar(irsa_env)


def tokens(sidecar, direction: str) -> float:
    return sidecar.metric("bedrock_broker_tokens_total", {"model": MODEL, "direction": direction}) or 0


def test_openai_sdk_json_and_stream_are_counted_when_gzipped(sidecar, fake_aws):
    client = openai.OpenAI(base_url=sidecar.url("/openai/v1"), api_key="unused", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "one two three"}])
    assert raw.headers.get("content-encoding") in ("gzip", "deflate"), raw.headers
    reply = raw.parse()
    assert "one two three" in reply.choices[0].message.content
    assert tokens(sidecar, "input") == reply.usage.prompt_tokens
    assert tokens(sidecar, "output") == reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "four five"}], stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and "<chunk" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert tokens(sidecar, "input") == reply.usage.prompt_tokens + usage.prompt_tokens


def test_as_many_gzipped_streams_as_the_proxy_takes_connections_are_all_counted(sidecar, fake_aws):
    # An HTTP/1.1 client holds a connection per stream and the proxy takes
    # 256 (--max-connections). Every gzipped answer's decoder is counted
    # against the taps' shared 16 MiB from its first byte: at 80 KiB and
    # more each, 52 of 256 streams went uncounted, as over budget.
    run = uuid.uuid4().hex[:8]
    ids = [f"gzipped-{run}-{i}" for i in range(256)]

    codings = set()

    async def one(client: openai.AsyncOpenAI, stream_id: str):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "count me"}], stream=True,
            stream_options={"include_usage": True},
            extra_headers={
                "x-fake-lockstep": stream_id, "x-fake-lockstep-timeout-ms": "120000", "x-fake-chunks": "3",
                # httpx asks for deflate too, which the fake prefers.
                "accept-encoding": "gzip",
            },
        )
        codings.add(raw.headers.get("content-encoding"))
        chunks = [chunk async for chunk in raw.parse()]
        return chunks[-1].usage

    async def all_streams() -> list:
        client = openai.AsyncOpenAI(base_url=sidecar.url("/openai/v1"), api_key="unused", max_retries=0, timeout=120)
        async with client:
            calls = [asyncio.create_task(one(client, i)) for i in ids]

            def all_open() -> bool:
                return all(fake_aws.stream(i).get("waiting_for_release") for i in ids)

            # Every decoder open at once, then every answer let through.
            await asyncio.to_thread(wait_for, all_open, timeout=60, interval=0.2, what="every stream open")
            for i in ids:
                await asyncio.to_thread(fake_aws.post, "/stream/release", {"stream_id": i, "count": 3})
            return await asyncio.gather(*calls)

    usages = asyncio.run(all_streams())
    assert codings == {"gzip"}
    assert all(u is not None for u in usages)
    over = sidecar.metric("bedrock_broker_answers_without_usage_total", {"reason": "over_budget"}) or 0
    assert over == 0
    assert tokens(sidecar, "output") == sum(u.completion_tokens for u in usages)
    assert tokens(sidecar, "input") == sum(u.prompt_tokens for u in usages)
    # Every decoder's room came back with its answer's end.
    taps = {"budget": "usage_taps"}
    wait_for(lambda: sidecar.metric("bedrock_broker_memory_budget_used_bytes", taps) == 0, timeout=10, what="room back")


@pytest.mark.parametrize("accept, coding", [("br, gzip;q=0.5", "gzip"), ("br", None), ("zstd, deflate", "deflate")])
def test_accept_encoding_is_narrowed_to_what_the_tap_reads(sidecar, fake_aws, accept, coding):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count me"}]}
    r = requests.post(sidecar.url("/openai/v1/chat/completions"), json=body, headers={"accept-encoding": accept}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers.get("content-encoding") == coding
    assert r.json()["usage"]["prompt_tokens"] == tokens(sidecar, "input") > 0
    # The signature still matched: the narrowed header is what was signed.
    assert all(rec["verified"] for rec in fake_aws.requests())


def compressed_error(sidecar, extra: dict) -> tuple[requests.Response, bytes]:
    headers = {"content-type": "application/json", "accept-encoding": "gzip", **extra}
    r = requests.post(sidecar.url(CONVERSE), data=BODY, headers=headers, timeout=30, stream=True)
    return r, r.raw.read(decode_content=False)


def test_an_error_holding_no_secret_passes_through_as_it_came(sidecar, fake_aws):
    # Every error to a signed request is held to blank the session token;
    # one that does not hold it goes out unchanged, bytes and coding.
    r, raw = compressed_error(sidecar, {"x-fake-status": "429"})
    assert r.status_code == 429
    assert r.headers.get("content-encoding") == "gzip", r.headers
    assert r.headers["content-length"] == str(len(raw))
    assert "x-fake-status 429" in json.loads(gzip.decompress(raw))["message"]
    assert "x-bedrock-broker-error" not in r.headers


def test_an_error_holding_the_token_goes_out_decoded_and_blanked(sidecar, fake_aws):
    r, raw = compressed_error(sidecar, {"x-fake-status": "500", "x-fake-echo-headers": "json"})
    assert r.status_code == 500
    assert "content-encoding" not in r.headers, r.headers
    assert r.headers["content-length"] == str(len(raw))
    echoed = json.loads(raw)["message"]
    assert "fake relay refused the request" in echoed
    assert "x-amz-security-token" in echoed.lower()
    minted = [c["session_token"] for c in fake_aws.get("/credentials?include_secrets=1") if c.get("session_token")]
    assert minted and not any(t in echoed for t in minted)
