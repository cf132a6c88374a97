#!/usr/bin/env bash
# Installs the AWS SDK for JavaScript clients the end-to-end tests drive
# (tests/e2e/js). Re-installs only when the lockfile changed.
set -euo pipefail
cd "$(dirname "$0")/../tests/e2e/js"
stamp=node_modules/.package-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
