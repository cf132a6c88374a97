// InvokeModelWithBidirectionalStream with the real AWS SDK for JavaScript
// v3, pointed at the sidecar. The SDK signs its own event stream with
// throwaway credentials; the sidecar must take those envelopes off and
// re-sign every message with the real ones.
//
// Usage: node bidi_client.mjs <endpoint> <modelId> <text>...
//
// Lockstep: text n+1 is only sent after the answer to text n arrived, so a
// proxy that buffered either direction would hang (the test's timeout
// catches that). Prints one JSON line: {"received": [...]} or {"error": ...}.

import {
  BedrockRuntimeClient,
  InvokeModelWithBidirectionalStreamCommand,
} from "@aws-sdk/client-bedrock-runtime";

const [endpoint, modelId, ...texts] = process.argv.slice(2);

const client = new BedrockRuntimeClient({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "unused", secretAccessKey: "unused" },
  maxAttempts: 1,
});

const received = [];
let wake = () => {};

function answered(count) {
  return new Promise((resolve) => {
    const check = () => (received.length >= count ? resolve() : (wake = check));
    check();
  });
}

async function* input() {
  for (let i = 0; i < texts.length; i++) {
    const bytes = new TextEncoder().encode(JSON.stringify({ text: texts[i] }));
    yield { chunk: { bytes } };
    await answered(i + 1);
  }
}

try {
  const response = await client.send(
    new InvokeModelWithBidirectionalStreamCommand({ modelId, body: input() }),
  );
  for await (const event of response.body) {
    if (event.chunk) {
      received.push(JSON.parse(new TextDecoder().decode(event.chunk.bytes)));
      wake();
    } else {
      console.log(JSON.stringify({ error: "unexpected event", event: Object.keys(event), received }));
      process.exit(1);
    }
  }
  console.log(JSON.stringify({ received }));
} catch (err) {
  console.log(JSON.stringify({ error: err.name, message: err.message, received }));
  process.exit(1);
} finally {
  client.destroy();
}
