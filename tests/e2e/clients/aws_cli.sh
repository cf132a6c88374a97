# The AWS CLI (v1, from PyPI) in an injected pod. Each snippet is run by
# tests/e2e/test_popular_clients.py with exactly the injected environment,
# and shown verbatim in docs/clients.md.

# --- snippet ---
# The endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME. --no-sign-request:
# send without credentials, the sidecar signs. Any region: the sidecar's counts.
aws bedrock-runtime converse --no-sign-request --region us-east-1 \
  --model-id anthropic.claude-3-haiku-20240307-v1:0 \
  --messages '[{"role":"user","content":[{"text":"Hello"}]}]'
# --- end snippet ---
