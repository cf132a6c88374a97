"""LiteLLM in an injected pod: it reads AWS_BEDROCK_RUNTIME_ENDPOINT, not the AWS variable."""

import asyncio

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    import litellm

    # The endpoint comes from AWS_BEDROCK_RUNTIME_ENDPOINT. api_key: a
    # placeholder bearer token (no AWS credentials in the pod); the sidecar
    # strips it and signs.
    reply = litellm.completion(
        model="bedrock/converse/anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "user", "content": "Hello"}],
        api_key="unused",
    )
    print(reply.choices[0].message.content)
    # --- end snippet ---
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    chunks = [c.choices[0].delta.content for c in litellm.completion(
        model=f"bedrock/converse/{model}", messages=[{"role": "user", "content": "stream"}],
        api_key="unused", stream=True) if c.choices and c.choices[0].delta.content]

    async def invoke_stream():
        stream = await litellm.acompletion(
            model=f"bedrock/invoke/{model}", messages=[{"role": "user", "content": "async"}],
            api_key="unused", stream=True, max_tokens=64)
        return [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]

    async_chunks = asyncio.run(invoke_stream())
    invoke = litellm.completion(model=f"bedrock/invoke/{model}", messages=[{"role": "user", "content": "invoke"}],
                                api_key="unused", max_tokens=64)
    denied = capture(lambda: litellm.completion(model=f"bedrock/converse/{DENIED_MODEL}",
                                                messages=[{"role": "user", "content": "x"}], api_key="unused"))
    report(reply=reply.choices[0].message.content, chunks=chunks, async_chunks=async_chunks,
           invoke=invoke.choices[0].message.content, denied=denied,
           # A 403 AccessDeniedException is LiteLLM's permission error, as
           # it would be without the sidecar.
           denied_is_own_type=denied["error"] == "litellm.exceptions.PermissionDeniedError")


guarded(main)
