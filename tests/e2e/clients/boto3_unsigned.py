"""boto3 in an injected pod whose container has no AWS credentials of its own."""

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    # The endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME. UNSIGNED: send
    # without credentials, the sidecar signs. Any region: the sidecar's counts.
    brt = boto3.client("bedrock-runtime", region_name="us-east-1",
                       config=Config(signature_version=UNSIGNED))
    reply = brt.converse(
        modelId="anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "user", "content": [{"text": "Hello"}]}],
    )
    print(reply["output"]["message"]["content"][0]["text"])
    # --- end snippet ---
    stream = brt.converse_stream(
        modelId="anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "user", "content": [{"text": "stream"}]}],
    )["stream"]
    chunks = [e["contentBlockDelta"]["delta"]["text"] for e in stream if "contentBlockDelta" in e]
    denied = capture(lambda: brt.converse(modelId=DENIED_MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}]))
    report(reply=reply["output"]["message"]["content"][0]["text"], chunks=chunks, denied=denied,
           endpoint=brt.meta.endpoint_url,
           denied_is_own_type=denied["error"] == "botocore.errorfactory.AccessDeniedException:AccessDeniedException")


guarded(main)
