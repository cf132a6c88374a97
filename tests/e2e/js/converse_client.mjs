// The AWS SDK for JavaScript v3 in an injected pod (docs/clients.md): run by
// tests/e2e/test_popular_clients.py with exactly the injected environment.
// Prints the reply, then one `RESULT {json}` line for the test.

import { ConverseStreamCommand } from "@aws-sdk/client-bedrock-runtime";

// --- snippet ---
import { BedrockRuntimeClient, ConverseCommand } from "@aws-sdk/client-bedrock-runtime";

// The endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME. The keys are
// placeholders for this client only (the sidecar replaces the signature);
// any region: the sidecar signs for its own.
const client = new BedrockRuntimeClient({
  region: "us-east-1",
  credentials: { accessKeyId: "unused", secretAccessKey: "unused" },
});
const reply = await client.send(new ConverseCommand({
  modelId: "anthropic.claude-3-haiku-20240307-v1:0",
  messages: [{ role: "user", content: [{ text: "Hello" }] }],
}));
console.log(reply.output.message.content[0].text);
// --- end snippet ---

const streamed = await client.send(new ConverseStreamCommand({
  modelId: "anthropic.claude-3-haiku-20240307-v1:0",
  messages: [{ role: "user", content: [{ text: "stream" }] }],
}));
const chunks = [];
for await (const event of streamed.stream) {
  if (event.contentBlockDelta) chunks.push(event.contentBlockDelta.delta.text);
}
let denied = { error: null };
try {
  await client.send(new ConverseCommand({
    modelId: "anthropic.fake-denied-v1:0",
    messages: [{ role: "user", content: [{ text: "x" }] }],
  }));
} catch (err) {
  denied = { error: err.name, detail: String(err.message).slice(0, 300) };
}
console.log("RESULT " + JSON.stringify({
  reply: reply.output.message.content[0].text,
  chunks,
  denied,
  denied_is_own_type: denied.error === "AccessDeniedException",
}));
