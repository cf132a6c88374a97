# curl in an injected pod. Each snippet is run by
# tests/e2e/test_popular_clients.py with exactly the injected environment,
# and shown verbatim in docs/clients.md.

# --- snippet ---
curl -s "$BEDROCK_BROKER_URL/model/anthropic.claude-3-haiku-20240307-v1:0/converse" \
  -H 'content-type: application/json' \
  -d '{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}'
# --- end snippet ---

# --- snippet: stream ---
curl -sN "$OPENAI_BASE_URL/chat/completions" \
  -H 'content-type: application/json' \
  -d '{"model":"openai.gpt-oss-120b-1:0","stream":true,"messages":[{"role":"user","content":"Hello"}]}'
# --- end snippet ---
