"""The Anthropic Messages API through the sidecar, driven by the Anthropic
SDK's own client (not ``AnthropicBedrock``): the runtime serves it under
``/anthropic``, Mantle under ``/anthropic`` too (``/mantle/anthropic`` here).
The fake verifies every request's SigV4 with botocore."""

from __future__ import annotations

import uuid

import anthropic
import pytest

from conftest import wait_for

MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture
def sidecar(start_sidecar, irsa_env, fake_aws):
    return start_sidecar(dict(irsa_env, BEDROCK_BROKER_MANTLE_UPSTREAM=fake_aws.bedrock))


def client(sidecar, base: str) -> anthropic.Anthropic:
    # The SDK insists on a key; the sidecar signs with its own credentials.
    return anthropic.Anthropic(base_url=sidecar.url(base), api_key="unused-placeholder", max_retries=0)


def tokens(sidecar, model: str, direction: str) -> float:
    return sidecar.metric("bedrock_broker_tokens_total", {"model": model, "direction": direction}) or 0


@pytest.mark.parametrize("base, signing_name", [("/anthropic", "bedrock"), ("/mantle/anthropic", "bedrock-mantle")])
def test_messages_are_signed_answered_and_counted(sidecar, fake_aws, base, signing_name):
    fake_aws.post("/bedrock", {"signing_name": signing_name})
    tid = uuid.uuid4().hex
    reply = client(sidecar, base).messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "one two three"}],
        extra_headers={"x-test-id": tid, "x-fake-cached-tokens": "40"},
    )
    assert reply.content[0].text == f"fake reply from {MODEL} to: one two three"
    rec = fake_aws.request_for(tid)
    assert rec["raw_path"] == "/anthropic/v1/messages"
    assert rec["verified"] is True, rec["rejection"]
    wait_for(lambda: tokens(sidecar, MODEL, "output") == reply.usage.output_tokens, timeout=5, what="message usage")
    assert tokens(sidecar, MODEL, "input") == reply.usage.input_tokens
    assert tokens(sidecar, MODEL, "cache_read") == reply.usage.cache_read_input_tokens == 40
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "messages", "code": "200", "auth": "sigv4"}) == 1


def test_a_streamed_message_counts_the_input_its_first_event_carried(sidecar, fake_aws):
    """Anthropic's stream sends the input tokens in ``message_start`` and
    the output in ``message_delta``: both must count."""
    with client(sidecar, "/anthropic").messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "four five six seven"}],
        extra_headers={"x-fake-cached-tokens": "9"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith(f"fake reply from {MODEL} to: four five six seven")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    wait_for(lambda: tokens(sidecar, MODEL, "output") == final.usage.output_tokens, timeout=5, what="stream usage")
    assert tokens(sidecar, MODEL, "input") == final.usage.input_tokens
    assert tokens(sidecar, MODEL, "cache_read") == 9
    assert sidecar.metric("bedrock_broker_time_to_first_token_seconds_count", {"operation": "messages"}) == 1


def test_an_error_event_ending_a_stream_is_counted_beside_its_200(sidecar, fake_aws):
    with pytest.raises(anthropic.APIStatusError) as e:
        with client(sidecar, "/anthropic").messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-stream-exception": "overloaded_error"},
        ) as stream:
            for _ in stream.text_stream:
                pass
    assert "overloaded_error" in str(e.value)
    labels = {"operation": "messages", "type": "overloaded_error"}
    wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
             what="the stream's error counted")
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "messages", "code": "200", "auth": "sigv4"}) == 1


def test_a_stalled_stream_ends_with_an_error_the_sdk_raises(start_sidecar, irsa_env, fake_aws):
    """The sidecar's own cut (`--stream-idle-timeout`) must reach the
    Anthropic SDK as an error, which reads only named `error` events."""
    sidecar = start_sidecar(irsa_env, ["--stream-idle-timeout", "500ms"])
    sid = "idle-msg-" + uuid.uuid4().hex
    got = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with client(sidecar, "/anthropic").messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-lockstep": sid, "x-fake-chunks": "3"},
        ) as stream:
            for text in stream.text_stream:
                got.append(text)
    assert got, "the text sent before the stall reached the client"
    assert "stream-idle-timeout" in str(e.value)
    labels = {"operation": "messages", "type": "upstream_idle_timeout"}
    wait_for(lambda: sidecar.metric("bedrock_broker_stream_errors_total", labels) == 1, timeout=10,
             what="the cut counted")
