"""What fake Bedrock answers: reply text tests can assert on, and the non-streamed JSON bodies around it."""

from __future__ import annotations

import time
from typing import Any

from .common import random_chars


def _text_of_content(content: Any) -> str:
    """Text of a message ``content`` (string, or list of text blocks/parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(block.get("text", "")) for block in content if isinstance(block, dict) and "text" in block
        )
    return ""


def last_user_text(body: dict) -> str:
    """Last user text of a Converse / Anthropic / OpenAI / Titan-style body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _text_of_content(msg.get("content"))
    for key in ("inputText", "prompt"):
        if isinstance(body.get(key), str):
            return body[key]
    return ""


def reply_text(model_id: str, user_text: str) -> str:
    """Deterministic reply text tests can assert on."""
    return f"fake reply from {model_id} to: {user_text}"


def stream_pieces(model_id: str, user_text: str, n: int, pad: int) -> list:
    """The ``n`` text deltas of a streamed reply, each tagged ``<chunk i/n>``."""
    pieces = []
    for i in range(1, n + 1):
        prefix = reply_text(model_id, user_text) + " " if i == 1 else " "
        pieces.append(f"{prefix}<chunk {i}/{n}>" + "x" * pad)
    return pieces


def token_counts(user_text: str, output: str) -> tuple:
    """(input, output) token counts: whitespace-separated words, at least 1."""
    return max(1, len(user_text.split())), max(1, len(output.split()))


def converse_response(model_id: str, user_text: str, traced: bool = False, cached: int = 0) -> dict:
    """Converse JSON response; with ``traced``, a guardrail trace after the usage.
    ``cached`` prompt tokens more were read from the cache: Converse counts
    them apart from ``inputTokens``."""
    text = reply_text(model_id, user_text)
    inp, out = token_counts(user_text, text)
    usage = {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + cached + out}
    if cached:
        usage.update(cacheReadInputTokens=cached, cacheWriteInputTokens=0)
    reply = {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 1},
    }
    if traced:
        reply["trace"] = guardrail_trace(text)
    return reply


# What one guardrail check costs, in policy units (ApplyGuardrail's and a
# trace's `usage`): no token counts.
GUARDRAIL_USAGE = {
    "topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1,
    "sensitiveInformationPolicyUnits": 0, "sensitiveInformationPolicyFreeUnits": 0,
    "contextualGroundingPolicyUnits": 0,
}


def wants_guardrail_trace(data: dict) -> bool:
    """Converse and ConverseStream: ``guardrailConfig.trace`` asks for the trace."""
    config = data.get("guardrailConfig")
    return isinstance(config, dict) and config.get("trace") in ("enabled", "enabled_full")


def guardrail_trace(text: str) -> dict:
    """A guardrail's trace as Bedrock writes it (``ConverseTrace``), after the
    answer's usage: each assessment carries a ``usage`` object of its own, in
    policy units, with no token counts."""
    assessment = {
        "invocationMetrics": {
            "guardrailProcessingLatency": 1,
            "usage": dict(GUARDRAIL_USAGE),
            "guardrailCoverage": {"textCharacters": {"guarded": len(text), "total": len(text)}},
        }
    }
    return {"guardrail": {"modelOutput": [], "inputAssessment": {"fake-guardrail": assessment},
                          "outputAssessments": {"fake-guardrail": [assessment]}}}


def invoke_response(model_id: str, user_text: str) -> dict:
    """Anthropic-messages-like InvokeModel JSON response."""
    text = reply_text(model_id, user_text)
    inp, out = token_counts(user_text, text)
    return {
        "id": "msg_fake_" + random_chars(12).lower(),
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": out},
    }


def messages_response(model_id: str, user_text: str, cached: int = 0) -> dict:
    """The Anthropic Messages API's answer; ``cached`` prompt tokens more
    were read from the prompt cache, counted apart from ``input_tokens``."""
    reply = invoke_response(model_id, user_text)
    if cached:
        reply["usage"].update(cache_read_input_tokens=cached, cache_creation_input_tokens=0)
    return reply


def openai_usage(inp: int, out: int, cached: int) -> dict:
    """OpenAI's ``usage``: ``cached`` prompt tokens more were read from the
    cache, which OpenAI counts inside ``prompt_tokens`` too."""
    return {
        "prompt_tokens": inp + cached,
        "completion_tokens": out,
        "total_tokens": inp + cached + out,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def openai_completion(model: str, user_text: str, cached: int = 0) -> dict:
    """OpenAI ``chat.completion`` object."""
    text = reply_text(model, user_text)
    inp, out = token_counts(user_text, text)
    return {
        "id": "chatcmpl-fake" + random_chars(12).lower(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": openai_usage(inp, out, cached),
    }
