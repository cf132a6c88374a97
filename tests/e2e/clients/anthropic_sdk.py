"""The Anthropic SDK's AnthropicBedrock in an injected pod: it reads ANTHROPIC_BEDROCK_BASE_URL."""

import asyncio

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    from anthropic import AnthropicBedrock

    # The endpoint comes from ANTHROPIC_BEDROCK_BASE_URL. api_key: a
    # placeholder bearer token (no AWS credentials in the pod); the sidecar
    # strips it and signs. Any region: the sidecar signs for its own.
    client = AnthropicBedrock(api_key="unused", aws_region="us-east-1")
    message = client.messages.create(
        model="anthropic.claude-3-haiku-20240307-v1:0",
        max_tokens=256,
        messages=[{"role": "user", "content": "Hello"}],
    )
    print(message.content[0].text)
    # --- end snippet ---
    import anthropic

    model = "anthropic.claude-3-haiku-20240307-v1:0"
    with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "stream"}]) as s:
        chunks = list(s.text_stream)

    async def async_stream():
        aclient = anthropic.AsyncAnthropicBedrock(api_key="unused", aws_region="us-east-1")
        async with aclient.messages.stream(model=model, max_tokens=64,
                                           messages=[{"role": "user", "content": "async"}]) as s:
            return [t async for t in s.text_stream]

    async_chunks = asyncio.run(async_stream())
    denied = capture(lambda: client.messages.create(model=DENIED_MODEL, max_tokens=8,
                                                    messages=[{"role": "user", "content": "x"}]))
    report(reply=message.content[0].text, chunks=chunks, async_chunks=async_chunks, denied=denied,
           denied_is_own_type=denied["error"] == "anthropic.PermissionDeniedError")


guarded(main)
