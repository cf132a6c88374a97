// The Vercel AI SDK's Amazon Bedrock provider in an injected pod
// (docs/clients.md): run by tests/e2e/test_popular_clients.py with exactly
// the injected environment. Prints the reply, then one `RESULT {json}` line
// for the test.

import { APICallError } from "ai";

// A failure the script did not expect is reported, not hidden.
process.on("uncaughtException", (err) => {
  console.log("RESULT " + JSON.stringify({ crashed: err.name, detail: String(err.message).slice(0, 500) }));
  process.exit(1);
});

// --- snippet ---
import { createAmazonBedrock } from "@ai-sdk/amazon-bedrock";
import { generateText, streamText } from "ai";

// The endpoint comes from AWS_ENDPOINT_URL_BEDROCK_RUNTIME. The keys are
// placeholders for this client only (the sidecar replaces the signature);
// any region: the sidecar signs for its own.
const bedrock = createAmazonBedrock({
  region: "us-east-1",
  accessKeyId: "unused",
  secretAccessKey: "unused",
});
const result = await generateText({
  model: bedrock("anthropic.claude-3-haiku-20240307-v1:0"),
  prompt: "Hello",
});
console.log(result.text);
// --- end snippet ---

const chunks = [];
const streamed = streamText({
  model: bedrock("anthropic.claude-3-haiku-20240307-v1:0"),
  prompt: "stream",
  onError: () => {},
});
for await (const chunk of streamed.textStream) chunks.push(chunk);
const streamedUsage = await streamed.usage;

let denied = { error: null };
try {
  await generateText({
    model: bedrock("anthropic.fake-denied-v1:0"),
    prompt: "x",
    maxRetries: 0,
  });
} catch (err) {
  denied = {
    error: err.name,
    status: err.statusCode ?? null,
    detail: String(err.message).slice(0, 300),
  };
  denied.is_api_call_error = APICallError.isInstance(err);
}
console.log("RESULT " + JSON.stringify({
  reply: result.text,
  chunks,
  output_tokens: result.usage.outputTokens + streamedUsage.outputTokens,
  denied,
  denied_is_own_type: denied.is_api_call_error === true && denied.status === 403,
}));
