"""Helpers shared by the webhook end-to-end tests (this module holds no tests).

* ``CLUSTER``: the namespaces, ServiceAccounts and LimitRanges every admission
  fixture is admitted into; the same cluster as ``tests/webhook_support/mod.rs``.
* ``apply_patch``: RFC 6902 ``add`` operations (all the webhook ever emits),
  applied independently of our Rust code.
* ``validate``: offline Kubernetes OpenAPI validation with kubernetes-validate.
* ``preserved``: everything the user wrote is still there, in order.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "admission"
EXPECTED = FIXTURES / "expected"
MANIFESTS = FIXTURES / "manifests"

CHAT_APP_ROLE = "arn:aws:iam::123456789012:role/chat-app"
TEAM_A_ROLE = "arn:aws:iam::123456789012:role/team-a"
LEGACY_IRSA_ROLE = "arn:aws:iam::123456789012:role/legacy-irsa"
INJECT_LABEL = "bedrock-broker.io/inject"

QUOTA_ROLE = "arn:aws:iam::123456789012:role/quota"

#: Namespace name -> labels.
NAMESPACES = {"default": {}, "team-a": {INJECT_LABEL: "true"}, "quota": {INJECT_LABEL: "true"}}
#: (namespace, name) -> annotations.
SERVICE_ACCOUNTS = {
    ("default", "chat-app"): {"eks.amazonaws.com/role-arn": CHAT_APP_ROLE},
    ("team-a", "default"): {"eks.amazonaws.com/role-arn": TEAM_A_ROLE},
    ("default", "legacy-irsa"): {"eks.amazonaws.com/role-arn": LEGACY_IRSA_ROLE},
    ("quota", "default"): {"eks.amazonaws.com/role-arn": QUOTA_ROLE},
}
#: The LimitRange of namespace quota (as quota_limit_range() in tests/webhook_support/mod.rs).
QUOTA_LIMIT_RANGE = {
    "apiVersion": "v1", "kind": "LimitRange",
    "metadata": {"name": "container-limits", "namespace": "quota"},
    "spec": {"limits": [{"type": "Container",
                         "min": {"cpu": "50m", "memory": "16Mi"},
                         "max": {"memory": "96Mi"},
                         "default": {"cpu": "250m"},
                         "defaultRequest": {"cpu": "100m"}}]},
}
LIMIT_RANGES = [QUOTA_LIMIT_RANGE]

#: Oldest Kubernetes with native sidecars on by default, and the newest schema we have.
SCHEMA_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def cluster_documents() -> list[dict]:
    """``CLUSTER`` as Namespace and ServiceAccount documents (for ``inject``)."""
    docs: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}} for n, labels in NAMESPACES.items()
    ]
    docs += [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "annotations": ann}}
        for (ns, name), ann in SERVICE_ACCOUNTS.items()
    ]
    return docs + copy.deepcopy(LIMIT_RANGES)


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def load_expected(name: str) -> dict:
    return json.loads((EXPECTED / f"{name}.json").read_text())


def decode_patch(response: dict) -> list | None:
    raw = response.get("patch")
    if raw is None:
        return None
    data = bytes(raw) if isinstance(raw, list) else base64.b64decode(raw)
    return json.loads(data)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: dict, ops: list[dict]) -> dict:
    """Applies JSON Patch ``add`` operations (RFC 6902 section 4.1)."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] == "add", f"the webhook only adds, got {op}"
        tokens = [_unescape(t) for t in op["path"].split("/")[1:]]
        parent = out
        for t in tokens[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        last = tokens[-1]
        if isinstance(parent, list):
            if last == "-":
                parent.append(copy.deepcopy(op["value"]))
            else:
                index = int(last)
                assert 0 <= index <= len(parent), f"index {index} out of range in {op['path']}"
                parent.insert(index, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    return out


def validate(obj: dict, versions: list[str] | None = None) -> None:
    """Validates one object (a List item by item) against the strict schema."""
    if obj.get("kind") == "List":
        for item in obj.get("items", []):
            validate(item, versions)
        return
    for version in versions or SCHEMA_VERSIONS:
        # Fields newer than a schema cannot validate against it
        # (pod-level resources arrived in 1.32, hostnameOverride in 1.34).
        spec = obj.get("spec", {})
        if (spec.get("hostnameOverride") and version < "1.34") or (spec.get("resources") and version < "1.32"):
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def preserved(original, mutated, path: str = "") -> None:
    """Asserts everything in ``original`` is in ``mutated`` (arrays: in order)."""
    if isinstance(original, dict):
        assert isinstance(mutated, dict), f"{path} is no longer an object"
        for k, v in original.items():
            assert k in mutated, f"{path}/{k} was removed"
            preserved(v, mutated[k], f"{path}/{k}")
    elif isinstance(original, list):
        assert isinstance(mutated, list), f"{path} is no longer a list"
        it = iter(mutated)
        for i, v in enumerate(original):
            for candidate in it:
                try:
                    preserved(v, candidate, f"{path}/{i}")
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError(f"{path}/{i} was removed, changed or reordered")
    else:
        assert original == mutated, f"{path} changed from {original!r} to {mutated!r}"


def _units(raw: str, resource: str) -> float:
    """A quantity in millicores or bytes (enough of the grammar for these fixtures)."""
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if raw.endswith(suffix):
            value = float(raw[: -len(suffix)]) * suffixes[suffix]
            break
    else:
        value = float(raw)
    return round(value * 1000) if resource == "cpu" else value


def preserved_pod(original: dict, mutated: dict) -> None:
    """``preserved`` for a pod: pod-level resource quantities may only grow (the sidecar's share)."""
    mutated = copy.deepcopy(mutated)
    for kind in ("requests", "limits"):
        before = original.get("spec", {}).get("resources", {}).get(kind, {})
        after = mutated.get("spec", {}).get("resources", {}).get(kind, {})
        for resource in ("cpu", "memory"):
            if resource in before and resource in after:
                assert _units(after[resource], resource) >= _units(before[resource], resource), f"spec.resources.{kind}.{resource} shrank"
                after[resource] = before[resource]
    preserved(original, mutated)


def sidecar_count(pod: dict) -> int:
    spec = pod.get("spec", {})
    return sum(1 for f in ("initContainers", "containers") for c in spec.get(f) or [] if c.get("name") == "bedrock-broker")
