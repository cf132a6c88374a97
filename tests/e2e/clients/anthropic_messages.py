"""The Anthropic SDK's own client on Bedrock's Anthropic Messages API
(``/anthropic/v1/messages``), pointed at the sidecar by BEDROCK_BROKER_URL."""

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    import os

    from anthropic import Anthropic

    # Bedrock serves the Messages API under /anthropic (Mantle under
    # /mantle/anthropic). api_key: a placeholder bearer token; the sidecar
    # strips it and signs.
    client = Anthropic(base_url=os.environ["BEDROCK_BROKER_URL"] + "/anthropic", api_key="unused")
    message = client.messages.create(
        model="anthropic.claude-sonnet-4-5-20250929-v1:0",
        max_tokens=256,
        messages=[{"role": "user", "content": "Hello"}],
    )
    print(message.content[0].text)
    # --- end snippet ---
    import anthropic

    model = "anthropic.claude-sonnet-4-5-20250929-v1:0"
    with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "stream"}]) as s:
        chunks = list(s.text_stream)
    denied = capture(lambda: client.messages.create(model=DENIED_MODEL, max_tokens=8,
                                                    messages=[{"role": "user", "content": "x"}]))
    report(reply=message.content[0].text, chunks=chunks, denied=denied,
           denied_is_own_type=denied["error"] == "anthropic.PermissionDeniedError")


guarded(main)
