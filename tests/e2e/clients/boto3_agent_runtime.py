"""boto3's bedrock-agent-runtime client (agents, knowledge bases) in an injected pod: AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME."""

from _report import capture, guarded, report


def main():
    # --- snippet ---
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    # The endpoint comes from AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME (the
    # sidecar's /agent-runtime). UNSIGNED: the sidecar signs.
    agents = boto3.client("bedrock-agent-runtime", region_name="us-east-1",
                          config=Config(signature_version=UNSIGNED))
    answer = agents.invoke_agent(agentId="AGENT12345", agentAliasId="ALIAS12345",
                                 sessionId="session-1", inputText="Hello")
    print(b"".join(e["chunk"]["bytes"] for e in answer["completion"] if "chunk" in e).decode())
    # --- end snippet ---
    # A knowledge base the fake does not serve: Bedrock's 404, as it came.
    missing = capture(lambda: agents.retrieve(knowledgeBaseId="KB12345678", retrievalQuery={"text": "q"}))
    report(reply=b"".join(e["chunk"]["bytes"] for e in agents.invoke_agent(
               agentId="AGENT12345", agentAliasId="ALIAS12345", sessionId="session-1",
               inputText="fake reply from the agent")["completion"] if "chunk" in e).decode(),
           missing=missing, endpoint=agents.meta.endpoint_url)


guarded(main)
