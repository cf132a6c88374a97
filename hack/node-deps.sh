#!/usr/bin/env bash
# Installs the JavaScript clients the end-to-end tests drive (the AWS SDK
# for JavaScript, the Vercel AI SDK; tests/e2e/js). Re-installs only when the lockfile changed.
set -euo pipefail
cd "$(dirname "$0")/../tests/e2e/js"
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "node-deps: Node.js >= 20 is required (the AWS SDK for JavaScript needs it); found: $(node --version 2>/dev/null || echo none)" >&2
  exit 1
fi
stamp=node_modules/.package-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
