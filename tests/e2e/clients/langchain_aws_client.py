"""langchain-aws in an injected pod: boto3 underneath, so AWS_ENDPOINT_URL_BEDROCK_RUNTIME."""

from _report import DENIED_MODEL, capture, guarded, report


def main():
    # --- snippet ---
    from botocore import UNSIGNED
    from botocore.config import Config
    from langchain_aws import ChatBedrockConverse

    # boto3 underneath: the endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
    # UNSIGNED sends without credentials (the sidecar signs).
    llm = ChatBedrockConverse(model="anthropic.claude-3-haiku-20240307-v1:0", region_name="us-east-1",
                              config=Config(signature_version=UNSIGNED))
    print(llm.invoke("Hello").content)
    # --- end snippet ---
    from langchain_aws import ChatBedrock

    reply = llm.invoke("again").content
    chunks = [c.content for c in llm.stream("stream") if c.content]
    chunks = ["".join(b.get("text", "") for b in c) if isinstance(c, list) else c for c in chunks]
    legacy = ChatBedrock(model="anthropic.claude-3-haiku-20240307-v1:0", region_name="us-east-1",
                         config=Config(signature_version=UNSIGNED))
    legacy_reply = legacy.invoke("invoke").content
    legacy_chunks = [c.content for c in legacy.stream("invoke stream") if c.content]
    denied_llm = ChatBedrockConverse(model=DENIED_MODEL, region_name="us-east-1",
                                     config=Config(signature_version=UNSIGNED))
    denied = capture(lambda: denied_llm.invoke("x"))
    report(reply=reply, chunks=chunks, legacy_reply=legacy_reply, legacy_chunks=legacy_chunks, denied=denied,
           denied_is_own_type=denied["error"].endswith(":AccessDeniedException"))


guarded(main)
