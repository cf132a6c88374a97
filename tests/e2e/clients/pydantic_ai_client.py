"""pydantic-ai in an injected pod: its Bedrock model (boto3) and its OpenAI model (OPENAI_BASE_URL)."""

import asyncio

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from pydantic_ai import Agent
    from pydantic_ai.models.bedrock import BedrockConverseModel
    from pydantic_ai.providers.bedrock import BedrockProvider

    # The endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME, UNSIGNED sends
    # without credentials (the sidecar signs).
    client = boto3.client("bedrock-runtime", region_name="us-east-1", config=Config(signature_version=UNSIGNED))
    model = BedrockConverseModel("anthropic.claude-3-haiku-20240307-v1:0",
                                 provider=BedrockProvider(bedrock_client=client))
    agent = Agent(model)
    print(agent.run_sync("Hello").output)
    # --- end snippet ---
    from pydantic_ai.exceptions import ModelHTTPError

    # --- snippet: openai ---
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    # OPENAI_BASE_URL and OPENAI_API_KEY come from the injector.
    openai_agent = Agent(OpenAIChatModel("openai.gpt-oss-120b-1:0", provider=OpenAIProvider()))
    print(openai_agent.run_sync("Hello").output)
    # --- end snippet ---
    reply = agent.run_sync("again").output

    async def stream():
        async with agent.run_stream("stream") as result:
            return [t async for t in result.stream_text(delta=True, debounce_by=None)]

    chunks = asyncio.run(stream())
    openai_reply = openai_agent.run_sync("openai").output
    denied_agent = Agent(BedrockConverseModel(DENIED_MODEL, provider=BedrockProvider(bedrock_client=client)))
    denied = capture(lambda: denied_agent.run_sync("x"))
    try:
        denied_agent.run_sync("x")
    except ModelHTTPError as exc:  # pydantic-ai's own: ModelAuthenticationError for a 403
        own = exc.status_code == 403
    report(reply=reply, chunks=chunks, openai_reply=openai_reply, denied=denied, denied_is_own_type=own)


guarded(main)
