"""strands-agents in an injected pod: boto3 underneath, so AWS_ENDPOINT_URL_BEDROCK_RUNTIME."""

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    from botocore import UNSIGNED
    from botocore.config import Config
    from strands import Agent
    from strands.models import BedrockModel

    # boto3 underneath: the endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
    # UNSIGNED sends without credentials (the sidecar signs).
    model = BedrockModel(model_id="anthropic.claude-3-haiku-20240307-v1:0", region_name="us-east-1",
                         boto_client_config=Config(signature_version=UNSIGNED))
    # callback_handler=None: the default one also prints the answer as it streams.
    agent = Agent(model=model, callback_handler=None)
    print(agent("Hello"))
    # --- end snippet ---
    chunks = []

    def collect(**event):
        if "data" in event:
            chunks.append(event["data"])

    streamed = Agent(model=model, callback_handler=collect)("stream")
    denied_model = BedrockModel(model_id=DENIED_MODEL, region_name="us-east-1",
                                boto_client_config=Config(signature_version=UNSIGNED))
    denied = capture(lambda: Agent(model=denied_model, callback_handler=None)("x"))
    report(reply=str(streamed), chunks=chunks, denied=denied,
           denied_is_own_type=denied["error"].endswith(":AccessDeniedException"))


guarded(main)
