"""The bytes of streamed replies: event streams (ConverseStream, InvokeModelWithResponseStream) and OpenAI SSE.

A plan is split into a preamble, one piece per text chunk and a trailer, so
that ``streaming.py`` can pace, hold or cut the stream between chunks.
"""

from __future__ import annotations

import base64
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import eventstream  # tests/fakes/eventstream.py, next to this package: the tests' clients use it too

from .bedrock_replies import guardrail_trace, invoke_response, openai_usage, stream_pieces, token_counts
from .common import json_bytes, random_chars


@dataclass
class StreamPlan:
    """Bytes of a streamed response: preamble + pieces[i] ... + trailer."""

    content_type: str
    preamble: bytes
    pieces: list
    trailer: bytes
    headers: dict = field(default_factory=dict)


def plan_converse_stream(model_id: str, user_text: str, n: int, pad: int, traced: bool = False) -> StreamPlan:
    """ConverseStream events, as boto3's converse_stream parser expects them;
    with ``traced``, the metadata event carries a guardrail trace after the usage."""
    preamble, pieces, trailer = _converse_events(model_id, user_text, n, pad, traced)
    # A plan of its own: a failure injected later replaces its trailer.
    return StreamPlan(
        content_type="application/vnd.amazon.eventstream",
        preamble=preamble,
        pieces=list(pieces),
        trailer=trailer,
    )


@functools.lru_cache(maxsize=4)
def _converse_events(model_id: str, user_text: str, n: int, pad: int, traced: bool) -> tuple[bytes, tuple, bytes]:
    """The events of a ConverseStream answer, kept for the next request
    asking the same: 200 requests for 400 padded events each (13 MB) had
    the fake encode 2.6 GB on its event loop, and its control API stall
    for tens of seconds behind that."""
    pieces = stream_pieces(model_id, user_text, n, pad)
    inp, out = token_counts(user_text, "".join(pieces))
    metadata = {"usage": {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out}, "metrics": {"latencyMs": 1}}
    if traced:
        metadata["trace"] = guardrail_trace("".join(pieces))
    ev = eventstream.event
    return (
        ev("messageStart", json_bytes({"role": "assistant"})),
        tuple(ev("contentBlockDelta", json_bytes({"contentBlockIndex": 0, "delta": {"text": p}})) for p in pieces),
        b"".join(
            [
                ev("contentBlockStop", json_bytes({"contentBlockIndex": 0})),
                ev("messageStop", json_bytes({"stopReason": "end_turn"})),
                ev("metadata", json_bytes(metadata)),
            ]
        ),
    )


def invoke_chunk(obj: dict) -> bytes:
    """One ``chunk`` event carrying base64(JSON) in ``bytes``."""
    return eventstream.event("chunk", json_bytes({"bytes": base64.b64encode(json_bytes(obj)).decode()}))


def agent_answer(text: str) -> bytes:
    """InvokeAgent's answer: its text in one ``chunk`` event (a
    ``PayloadPart``: the bytes are the answer itself, not model JSON)."""
    return eventstream.event("chunk", json_bytes({"bytes": base64.b64encode(text.encode()).decode()}))


def anthropic_events(model_id: str, user_text: str, n: int, pad: int, cached: int = 0) -> tuple:
    """Anthropic's streaming events as (before the text, one per text
    piece, after it, (input, output) tokens): ``message_start`` carries the
    input tokens (and ``cached`` more read from the prompt cache),
    ``message_delta`` the output's."""
    pieces = stream_pieces(model_id, user_text, n, pad)
    inp, out = token_counts(user_text, "".join(pieces))
    message = invoke_response(model_id, user_text)
    usage = {"input_tokens": inp, "output_tokens": 0}
    if cached:
        usage.update(cache_read_input_tokens=cached, cache_creation_input_tokens=0)
    message.update(content=[], stop_reason=None, usage=usage)
    before = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    deltas = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces]
    after = [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": out}},
    ]
    return before, deltas, after, (inp, out)


def plan_invoke_stream(model_id: str, user_text: str, n: int, pad: int) -> StreamPlan:
    """InvokeModelWithResponseStream: Anthropic-messages streaming events as chunks."""
    before, deltas, after, (inp, out) = anthropic_events(model_id, user_text, n, pad)
    stop = {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": inp,
            "outputTokenCount": out,
            "invocationLatency": 1,
            "firstByteLatency": 1,
        },
    }
    return StreamPlan(
        content_type="application/vnd.amazon.eventstream",
        headers={"x-amzn-bedrock-content-type": "application/json"},
        preamble=b"".join(invoke_chunk(e) for e in before),
        pieces=[invoke_chunk(e) for e in deltas],
        trailer=b"".join(invoke_chunk(e) for e in [*after, stop]),
    )


def plan_messages_stream(model_id: str, user_text: str, n: int, pad: int, cached: int = 0) -> StreamPlan:
    """The Anthropic Messages API's SSE stream (``/anthropic/v1/messages``)."""
    before, deltas, after, _ = anthropic_events(model_id, user_text, n, pad, cached)

    def sse(event: dict) -> bytes:
        return b"event: " + event["type"].encode() + b"\ndata: " + json_bytes(event) + b"\n\n"

    return StreamPlan(
        content_type="text/event-stream",
        preamble=b"".join(sse(e) for e in before),
        pieces=[sse(e) for e in deltas],
        trailer=b"".join(sse(e) for e in [*after, {"type": "message_stop"}]),
        headers={"Cache-Control": "no-cache"},
    )


def plan_openai_stream(model: str, user_text: str, n: int, pad: int, include_usage: bool, cached: int = 0) -> StreamPlan:
    """OpenAI chat.completion.chunk SSE stream ending in ``data: [DONE]``.

    With ``include_usage``, every chunk before the usage chunk carries
    ``"usage": null``, as OpenAI's API documents for ``stream_options``.
    Here the member comes before ``choices``; OpenAI writes it last, as
    the benchmark's answer does, so between them both orders are run."""
    pieces = stream_pieces(model, user_text, n, pad)
    inp, out = token_counts(user_text, "".join(pieces))
    base = {"id": "chatcmpl-fake" + random_chars(12).lower(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    if include_usage:
        base["usage"] = None

    def sse(choices: list, **extra: Any) -> bytes:
        return b"data: " + json_bytes({**base, "choices": choices, **extra}) + b"\n\n"

    encoded = []
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        encoded.append(sse([{"index": 0, "delta": delta, "finish_reason": None}]))
    trailer = sse([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        trailer += sse([], usage=openai_usage(inp, out, cached))
    return StreamPlan(
        content_type="text/event-stream",
        preamble=b"",
        pieces=encoded,
        trailer=trailer + b"data: [DONE]\n\n",
        headers={"Cache-Control": "no-cache"},
    )
