"""Prints charts/bedrock-broker/README.md: a fixed introduction plus the
values table built from values.yaml's helm-docs comments (`# -- text`
right above a key). hack/render.sh writes it; the tests fail when a
value has no `# --` comment or the README is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "bedrock-broker"


def documented_values(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, description, default as JSON) for every documented key."""
    rows = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    data = yaml.safe_load(text)
    for line in text.splitlines():
        m = re.match(r"^(\s*)# -- (.*)$", line)
        if m:
            pending = [m.group(2)]
            continue
        m = re.match(r"^(\s*)#\s?(.*)$", line)
        if m and pending:
            pending.append(m.group(2))
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not m:
            if line.strip() and not line.strip().startswith("-") and not line.strip().startswith("#"):
                pending = []
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = [k for _, k in stack]
        if pending:
            value = data
            for k in path:
                value = value[k]
            rows.append((".".join(path), " ".join(pending), json.dumps(value)))
        pending = []
    return rows


def leaf_paths(value, prefix=()):
    """Keys that need their own documentation: leaves, and maps whose
    documentation is on the map itself (empty maps/lists count as leaves)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from leaf_paths(v, prefix + (k,))
    else:
        yield ".".join(prefix)


def undocumented(text: str) -> list[str]:
    documented = {k for k, _, _ in documented_values(text)}
    out = []
    for leaf in leaf_paths(yaml.safe_load(text)):
        parts = leaf.split(".")
        if not any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            out.append(leaf)
    return out


INTRO = """\
# bedrock-broker Helm chart

Installs the bedrock-broker admission webhook, which injects the
bedrock-broker sidecar into opted-in pods: the sidecar holds the pod's AWS
credentials (projected service-account token, STS
`AssumeRoleWithWebIdentity`) and SigV4-signs its Amazon Bedrock calls, so the
app talks plain HTTP to `127.0.0.1:9787` with any SDK.

```sh
helm install bedrock-broker charts/bedrock-broker -n bedrock-broker --create-namespace \\
  --set sidecar.region=us-east-1
kubectl label namespace my-apps bedrock-broker.io/inject=true
```

- **Webhook**: Deployment (2 replicas, PodDisruptionBudget, anti-affinity,
  probes on the admin port, restricted security context), Service
  (443 -> 8443), ServiceAccount, ClusterRole with only get/list/watch on
  namespaces, serviceaccounts and limitranges.
- **MutatingWebhookConfiguration**: two entries, because one webhook cannot OR
  a namespace and a pod selector: `namespace.inject.bedrock-broker.io` for pods
  in namespaces labelled `bedrock-broker.io/inject=true` (unless the pod says
  `"false"`), `pod.inject.bedrock-broker.io` for pods carrying the label
  with any value but `"false"` in the other namespaces (the webhook injects
  `"true"` and refuses the rest, such as `"True"`, with a message). They
  never match the same pod. `kube-system` and the
  release namespace are excluded; `failurePolicy: Fail` only ever affects
  opted-in pods. `reinvocationPolicy: IfNeeded` is safe: injection is idempotent.
- **TLS** (`tls.mode`): `generate` (default; a self-signed CA made by Helm and
  kept across `helm upgrade` through `lookup`; `helm template` cannot look it
  up and makes a new one each time), `certManager` (an Issuer chain or your
  `issuerRef`, CA injected by cainjector), `secret` (your `kubernetes.io/tls`
  Secret and `tls.secret.caBundle`).
- **Sidecar defaults** (`sidecar.*`) become the webhook's
  `BEDROCK_BROKER_SIDECAR_*` variables; pods override them with
  `bedrock-broker.io/*` annotations (docs/injection.md).
- **Monitoring** (Prometheus Operator): ServiceMonitor for the webhook,
  PodMonitor for every sidecar (port `bb-admin`), PrometheusRule with the
  alerts of `files/alerts.yaml`.
- `helm test` checks the webhook's `/readyz` through its Service.

Full guide: [docs/packaging.md](../../docs/packaging.md). Plain manifests
rendered from this chart: [deploy/](../../deploy/).

## Values

Generated from `values.yaml` by `hack/render.sh`; do not edit by hand.
`values.schema.json` rejects unknown keys and bad values.

| key | default | description |
| --- | --- | --- |
"""


def main() -> int:
    text = (CHART / "values.yaml").read_text()
    out = [INTRO]
    for key, desc, default in documented_values(text):
        d = default.replace("|", "\\|")
        e = desc.replace("|", "\\|")
        out.append(f"| `{key}` | `{d}` | {e} |\n")
    sys.stdout.write("".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
