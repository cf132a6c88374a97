"""Packaging tests: the Helm chart (rendered with Helm's own engine through
helm-python-sdk), the plain manifests in deploy/, the alert rules (promtool),
the Grafana dashboard and the Dockerfile (hadolint). Offline; run by
hack/packaging-test.sh, which installs what they need.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))
import chart  # noqa: E402
import chart_readme  # noqa: E402
import make_dashboard  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Custom resources: no schema in kubernetes-validate; their shape is checked below.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
VENV_BIN = Path(sys.executable).parent

CA_PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()

SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "cert-manager-selfsigned": {"tls": {"mode": "certManager"}},
    "cert-manager-cluster-issuer": {
        "tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}
    },
    "user-secret": {"tls": {"mode": "secret", "secret": {"name": "my-webhook-tls", "caBundle": CA_PEM}}},
    "everything": {
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "commonLabels": {"team": "platform"},
        "webhook": {
            "replicas": 3,
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "onLookupError": "skip",
            "rolePolicy": "any",
            "reviewBudget": 16777216,
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "160Mi"}},
            "excludeNamespaces": ["kube-system", "kube-public", "cert-manager"],
            "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
            "objectSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "priorityClassName": "system-cluster-critical",
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "webhook"}}}
            ],
            "podDisruptionBudget": {"enabled": False},
        },
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "rbac": {"create": True},
        "sidecar": {
            "image": {"repository": "registry.example.com/bb", "tag": "0.1.0-custom"},
            "imagePullPolicy": "Always",
            "region": "eu-central-1",
            "mode": "classic",
            "audience": "sts.amazonaws.com.cn",
            "tokenExpiration": 3600,
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "none"}},
            "logLevel": "debug",
            "logFormat": "text",
            "runAsUser": 1000,
            "useFips": True,
            "useDualstack": True,
            "httpsProxy": "http://egress.corp:3128",
            "noProxy": ".internal,10.0.0.0/8",
        },
        "networkPolicy": {"enabled": True, "apiServer": [{"ipBlock": {"cidr": "172.20.0.0/16"}}],
                          "metrics": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "credentialsExpiringMinutes": 20, "refreshFailingMinutes": 3},
        },
    },
    "e2e-values": yaml.safe_load((ROOT / "hack" / "values" / "e2e.yaml").read_text()),
    "deploy-values": chart.load_values([str(ROOT / "hack/values/deploy.yaml"), str(ROOT / "hack/values/monitoring.yaml")], []),
}


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind):
    found = by_kind(objs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def validate(obj):
    if obj["apiVersion"].startswith(CRD_GROUPS):
        return
    for v in K8S_VERSIONS:
        kubernetes_validate.validate(obj, v, strict=True)


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def rendered(request):
    return request.param, chart.render(SCENARIOS[request.param])


# --- every object is valid Kubernetes -------------------------------------------------


def test_lint_strict():
    report = helm.lint(str(chart.CHART), None, strict=True, namespace="bedrock-broker")
    assert report["errors"] == [], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_every_object_validates(rendered):
    name, objs = rendered
    assert objs
    for o in objs:
        validate(o)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "MutatingWebhookConfiguration"} <= kinds, (name, kinds)
    # Namespaced objects are in the release namespace; names are unique per kind.
    seen = set()
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"):
            assert o["metadata"].get("namespace") == "bedrock-broker", key


def test_custom_resources_are_well_formed(rendered):
    _, objs = rendered
    for o in objs:
        if o["kind"] == "Certificate":
            assert o["spec"]["secretName"] and o["spec"]["issuerRef"]["name"]
            if not o["spec"].get("isCA"):
                assert "bedrock-broker-webhook.bedrock-broker.svc" in o["spec"]["dnsNames"]
        if o["kind"] == "PodMonitor":
            assert [e["port"] for e in o["spec"]["podMetricsEndpoints"]] == ["bb-admin"]  # docs/injection.md
        if o["kind"] == "ServiceMonitor":
            assert [e["port"] for e in o["spec"]["endpoints"]] == ["admin"]
        if o["kind"] == "PrometheusRule":
            assert {g["name"] for g in o["spec"]["groups"]} == {"bedrock-broker-sidecar", "bedrock-broker-webhook"}


# --- the webhook Deployment --------------------------------------------------------------


def webhook_env_names():
    """Every variable the binary reads: docs/configuration.md, generated from src/config/settings/."""
    return set(re.findall(r"`((?:BEDROCK_BROKER|AWS)_[A-Z0-9_]+|RUST_LOG)`", (ROOT / "docs/configuration.md").read_text()))


def test_deployment_defaults():
    objs = chart.render({})
    dep = one(objs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["args"] == ["webhook"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"https": 8443, "admin": 9789}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "admin"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert spec["template"]["metadata"]["labels"]["bedrock-broker.io/inject"] == "false"
    env = {e["name"]: e.get("value") for e in c["env"]}
    unknown = set(env) - webhook_env_names()
    assert not unknown, f"variables the binary does not read: {unknown}"
    assert env["BEDROCK_BROKER_WEBHOOK_LISTEN"] == "[::]:8443"  # both families
    assert env["BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN"] == "[::]:9789"
    assert env["BEDROCK_BROKER_SIDECAR_IMAGE"] == "ghcr.io/bedrock-broker/bedrock-broker:0.1.0"
    assert env["BEDROCK_BROKER_SIDECAR_CPU_LIMIT"] == "none"
    assert "BEDROCK_BROKER_SIDECAR_REGION" not in env  # empty region: pods name it
    # The TLS Secret is mounted where the binary looks by default.
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["tls"]
    assert env["BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE"] == mount + "/tls.crt"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    svc = one(objs, "Service")
    https = next(p for p in svc["spec"]["ports"] if p["name"] == "https")
    assert https["port"] == 443 and https["targetPort"] == "https"


@pytest.mark.parametrize("replicas", [0, 1])
def test_a_single_webhook_replica_gets_no_budget_that_blocks_node_drains(replicas):
    # minAvailable 1 (or any percentage, rounded up) of one pod refuses every
    # eviction: `kubectl drain` and node upgrades would hang on its node.
    # No replica at all is only allowed where the API server may skip the
    # webhook (Ignore): with Fail it would refuse every opted-in pod.
    policy = "Ignore" if replicas == 0 else "Fail"
    objs = chart.render({"webhook": {"replicas": replicas, "failurePolicy": policy}})
    assert one(objs, "Deployment")["spec"]["replicas"] == replicas
    assert not by_kind(objs, "PodDisruptionBudget")
    two = chart.render({"webhook": {"replicas": 2, "podDisruptionBudget": {"minAvailable": "50%"}}})
    assert one(two, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"
    # Replicas running but never ready (crash-looping) serve nothing: with
    # Kubernetes' default policy they could not be evicted while the budget
    # was unmet, and a node drain hung on them.
    assert one(two, "PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # Keeping every replica is the same trap with more of them, however written.
    for replicas, min_available, kept in [(3, 3, 3), (3, "3", 3), (2, "100%", 2), (2, "51%", 2)]:
        values = {"webhook": {"replicas": replicas, "podDisruptionBudget": {"minAvailable": min_available}}}
        with pytest.raises(helm.HelmError, match=f"keeps {kept} of webhook.replicas \\({replicas}\\)"):
            chart.render(values)
    assert one(chart.render({"webhook": {"replicas": 3, "podDisruptionBudget": {"minAvailable": "66%"}}}),
               "PodDisruptionBudget")["spec"]["minAvailable"] == "66%"


def test_sidecar_values_reach_the_webhook():
    objs = chart.render(SCENARIOS["everything"])
    c = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BEDROCK_BROKER_SIDECAR_IMAGE"] == "registry.example.com/bb:0.1.0-custom"
    assert env["BEDROCK_BROKER_SIDECAR_IMAGE_PULL_POLICY"] == "Always"
    assert env["BEDROCK_BROKER_SIDECAR_REGION"] == "eu-central-1"
    assert env["BEDROCK_BROKER_SIDECAR_MODE"] == "classic"
    assert env["BEDROCK_BROKER_SIDECAR_AUDIENCE"] == "sts.amazonaws.com.cn"
    assert env["BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION"] == "3600"
    assert env["BEDROCK_BROKER_SIDECAR_CPU_REQUEST"] == "50m"
    assert env["BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT"] == "none"
    assert env["BEDROCK_BROKER_SIDECAR_CPU_LIMIT"] == "500m"
    assert env["BEDROCK_BROKER_SIDECAR_LOG_FORMAT"] == "text"
    assert env["BEDROCK_BROKER_SIDECAR_RUN_AS_USER"] == "1000"
    assert env["BEDROCK_BROKER_SIDECAR_USE_FIPS"] == "true"
    assert env["BEDROCK_BROKER_SIDECAR_USE_DUALSTACK"] == "true"
    assert env["BEDROCK_BROKER_SIDECAR_HTTPS_PROXY"] == "http://egress.corp:3128"
    assert env["BEDROCK_BROKER_SIDECAR_NO_PROXY"] == ".internal,10.0.0.0/8"
    assert env["BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR"] == "skip"
    assert env["BEDROCK_BROKER_WEBHOOK_ROLE_POLICY"] == "any"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert c["image"] == "ghcr.io/bedrock-broker/bedrock-broker@sha256:" + "a" * 64
    assert not by_kind(objs, "ServiceAccount") and not by_kind(objs, "PodDisruptionBudget")
    crb = one(objs, "ClusterRoleBinding")
    assert crb["subjects"][0]["name"] == "existing-sa"


def test_sidecar_env_is_accepted_by_the_binary(tmp_path):
    """The binary's own parser accepts what the chart passes (when it is built)."""
    binary = ROOT / "target" / "debug" / "bedrock-broker"
    if not binary.exists():
        pytest.skip("target/debug/bedrock-broker not built (make build)")
    for scenario in ("defaults", "everything"):
        c = one(chart.render(SCENARIOS[scenario]), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]
               if e["name"].startswith("BEDROCK_BROKER_SIDECAR_") or e["name"] == "BEDROCK_BROKER_WEBHOOK_ROLE_POLICY"}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "labels": {"bedrock-broker.io/inject": "true"},
                            "annotations": {"bedrock-broker.io/role-arn": "arn:aws:iam::123456789012:role/r", "bedrock-broker.io/region": "us-east-1"}},
               "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
        # The role the pod names is its ServiceAccount's, as the default role policy requires.
        run = subprocess.run([str(binary), "inject", "--service-account-annotation", "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/r"],
                             input=yaml.safe_dump(pod), capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"], **env}, timeout=30)
        assert run.returncode == 0, (scenario, run.stderr)
        out = yaml.safe_load(run.stdout)
        validate(out)
        sidecars = [x for x in out["spec"].get("initContainers", []) + out["spec"]["containers"] if x["name"] == "bedrock-broker"]
        assert len(sidecars) == 1 and sidecars[0]["image"] == env["BEDROCK_BROKER_SIDECAR_IMAGE"]
        injected = {e["name"]: e.get("value") for e in sidecars[0]["env"]}
        assert injected.get("HTTPS_PROXY") == env.get("BEDROCK_BROKER_SIDECAR_HTTPS_PROXY"), scenario


def test_the_chart_requires_native_sidecars():
    """The default native sidecar needs Kubernetes 1.29: on older servers the
    init container's restartPolicy is dropped and injected pods never start,
    so Helm must refuse those clusters (the offline engine cannot pretend to
    be one, so the constraint is checked as Helm reads it)."""
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == ">=1.29.0-0"


def test_rbac_is_least_privilege():
    role = one(chart.render({}), "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "limitranges"], "verbs": ["get", "list", "watch"]}]
    assert not by_kind(chart.render({"rbac": {"create": False}}), "ClusterRole")


# --- the optional NetworkPolicy -----------------------------------------------------------

API_SERVER_CIDR = "10.0.0.0/24"  # the control plane's subnet, as on EKS


def _peer_matches(peer: dict, source: dict) -> bool:
    """NetworkPolicyPeer semantics: an ipBlock matches addresses (pods too), a
    pod/namespace selector pair matches pods whose labels both select."""
    import ipaddress

    if "ipBlock" in peer:
        if "ip" not in source:
            return False
        ip = ipaddress.ip_address(source["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "pod" not in source:
        return False
    ns_ok = "namespaceSelector" in peer and selector_matches(peer["namespaceSelector"], source["namespace"])
    if "namespaceSelector" not in peer:
        ns_ok = source["namespace"].get("kubernetes.io/metadata.name") == chart.NAMESPACE
    return ns_ok and selector_matches(peer.get("podSelector", {}), source["pod"])


def admitted(policy: dict, source: dict, port: int) -> bool:
    return any(
        any(p["port"] == port for p in rule.get("ports", [])) and any(_peer_matches(peer, source) for peer in rule.get("from", []))
        for rule in policy["spec"].get("ingress", [])
    )


PROMETHEUS = {"ip": "10.1.2.3", "pod": {"app.kubernetes.io/name": "prometheus"}, "namespace": {"kubernetes.io/metadata.name": "monitoring"}}
ANY_POD = {"ip": "10.1.2.4", "pod": {"app": "chat"}, "namespace": {"kubernetes.io/metadata.name": "apps"}}
API_SERVER = {"ip": "10.0.0.17"}


def test_network_policy_is_off_by_default():
    assert not by_kind(chart.render({}), "NetworkPolicy")


def test_network_policy_admits_the_api_server_and_prometheus_only():
    objs = chart.render({"networkPolicy": {"enabled": True, "apiServer": [{"ipBlock": {"cidr": API_SERVER_CIDR}}]}})
    policy = one(objs, "NetworkPolicy")
    validate(policy)
    dep = one(objs, "Deployment")
    assert policy["spec"]["podSelector"] == dep["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    webhook_port, admin_port = 8443, 9789
    assert admitted(policy, API_SERVER, webhook_port)
    assert not admitted(policy, API_SERVER, admin_port)
    assert admitted(policy, PROMETHEUS, admin_port)
    assert not admitted(policy, PROMETHEUS, webhook_port)
    for port in (webhook_port, admin_port, 443):
        assert not admitted(policy, ANY_POD, port), port
    # `helm test` reads /readyz through the Service: its pod gets there and no further.
    test_pod = next(o for o in objs if o["kind"] == "Pod")
    tester = {"ip": "10.1.2.5", "pod": test_pod["metadata"]["labels"], "namespace": {"kubernetes.io/metadata.name": chart.NAMESPACE}}
    assert admitted(policy, tester, admin_port)
    assert not admitted(policy, tester, webhook_port)
    assert not admitted(policy, {**tester, "namespace": {"kubernetes.io/metadata.name": "apps"}}, admin_port)
    # Nor is it taken for a webhook pod (by the Service, the PDB or this policy).
    assert not selector_matches(dep["spec"]["selector"], test_pod["metadata"]["labels"])


def test_network_policy_needs_the_api_servers_addresses():
    with pytest.raises(helm.HelmError, match="networkPolicy.apiServer"):
        chart.render({"networkPolicy": {"enabled": True}})


# --- the MutatingWebhookConfiguration ------------------------------------------------------


def selector_matches(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        op, key, vals = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and key in labels and labels[key] in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def entries_for(mwc, ns: str, ns_label, pod_label):
    ns_labels = {"kubernetes.io/metadata.name": ns}
    if ns_label is not None:
        ns_labels["bedrock-broker.io/inject"] = ns_label
    pod_labels = {} if pod_label is None else {"bedrock-broker.io/inject": pod_label}
    return [w["name"] for w in mwc["webhooks"]
            if selector_matches(w["namespaceSelector"], ns_labels) and selector_matches(w["objectSelector"], pod_labels)]


@pytest.mark.parametrize(
    "ns,ns_label,pod_label,expected",
    [
        ("apps", "true", None, ["namespace.inject.bedrock-broker.io"]),
        ("apps", "true", "true", ["namespace.inject.bedrock-broker.io"]),  # once, not twice
        ("apps", "true", "false", []),  # the pod opts out
        ("apps", "true", "yes", ["namespace.inject.bedrock-broker.io"]),  # reviewed, so the webhook can refuse it
        ("apps", None, "true", ["pod.inject.bedrock-broker.io"]),
        # Any value but "false" reaches the webhook, which refuses all but
        # "true" (as inject does); a selector on "true" alone let these
        # pods in without a sidecar and without a word.
        ("apps", None, "True", ["pod.inject.bedrock-broker.io"]),
        ("apps", None, "yes", ["pod.inject.bedrock-broker.io"]),
        ("apps", None, "", ["pod.inject.bedrock-broker.io"]),
        ("apps", "false", "True", ["pod.inject.bedrock-broker.io"]),
        ("apps", "false", "true", ["pod.inject.bedrock-broker.io"]),
        ("apps", None, None, []),
        ("apps", None, "false", []),
        ("kube-system", "true", "true", []),
        ("kube-system", None, "true", []),
        ("bedrock-broker", "true", "true", []),  # the release namespace
        ("bedrock-broker", None, "true", []),
    ],
)
def test_selectors_match_only_opted_in_pods_once(ns, ns_label, pod_label, expected):
    mwc = one(chart.render({}), "MutatingWebhookConfiguration")
    assert entries_for(mwc, ns, ns_label, pod_label) == expected


def test_webhook_entries():
    objs = chart.render({})
    mwc = one(objs, "MutatingWebhookConfiguration")
    svc = one(objs, "Service")
    assert len(mwc["webhooks"]) == 2
    for w in mwc["webhooks"]:
        assert w["failurePolicy"] == "Fail" and w["timeoutSeconds"] == 10
        assert w["reinvocationPolicy"] == "IfNeeded" and w["sideEffects"] == "None"
        assert w["admissionReviewVersions"] == ["v1"]
        assert w["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}]
        ref = w["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["path"], ref["port"]) == (svc["metadata"]["name"], "bedrock-broker", "/mutate", 443)
    custom = one(chart.render(SCENARIOS["everything"]), "MutatingWebhookConfiguration")
    for w in custom["webhooks"]:
        assert w["failurePolicy"] == "Ignore" and w["timeoutSeconds"] == 5
        assert {"key": "env", "operator": "In", "values": ["prod"]} in w["namespaceSelector"]["matchExpressions"]
        assert {"key": "app", "operator": "Exists"} in w["objectSelector"]["matchExpressions"]
        names = next(e for e in w["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name")
        assert names["values"] == ["kube-system", "kube-public", "cert-manager", "bedrock-broker"]


# --- TLS -----------------------------------------------------------------------------------


def test_generated_tls_is_a_valid_chain_for_the_service():
    from cryptography import x509

    objs = chart.render({})
    secret = one(objs, "Secret")
    mwc = one(objs, "MutatingWebhookConfiguration")
    assert secret["type"] == "kubernetes.io/tls"
    assert {w["clientConfig"]["caBundle"] for w in mwc["webhooks"]} == {secret["data"]["ca.crt"]}
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "bedrock-broker-webhook.bedrock-broker.svc" in sans
    assert leaf.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3000)
    dep = one(objs, "Deployment")
    vol = dep["spec"]["template"]["spec"]["volumes"][0]
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]


def test_cert_manager_takes_an_external_issuer():
    # aws-privateca-issuer, Google CAS, step-issuer: their own kinds and
    # groups (the schema allowed only cert-manager's two kinds).
    ref = {"name": "pca", "kind": "AWSPCAClusterIssuer", "group": "awspca.cert-manager.io"}
    objs = chart.render({"tls": {"mode": "certManager", "certManager": {"issuerRef": ref}}})
    assert one(objs, "Certificate")["spec"]["issuerRef"] == ref


def test_selectors_that_the_api_server_takes_render():
    objs = chart.render({"webhook": {
        "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
        "objectSelector": {"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"},
                                                {"key": "tier", "operator": "Exists", "values": []}]},
    }})
    for entry in one(objs, "MutatingWebhookConfiguration")["webhooks"]:
        assert {"key": "canary", "operator": "DoesNotExist"} in entry["objectSelector"]["matchExpressions"]


def test_cert_manager_mode():
    objs = chart.render(SCENARIOS["cert-manager-selfsigned"])
    assert not by_kind(objs, "Secret")
    mwc = one(objs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "bedrock-broker/bedrock-broker-webhook"
    assert all("caBundle" not in w["clientConfig"] for w in mwc["webhooks"])
    certs = {c["metadata"]["name"]: c for c in by_kind(objs, "Certificate")}
    assert set(certs) == {"bedrock-broker-webhook", "bedrock-broker-webhook-ca"}
    assert certs["bedrock-broker-webhook-ca"]["spec"]["isCA"] is True
    serving = certs["bedrock-broker-webhook"]
    dep = one(objs, "Deployment")
    assert dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == serving["spec"]["secretName"]
    assert {i["metadata"]["name"] for i in by_kind(objs, "Issuer")} == {"bedrock-broker-webhook-selfsigned", "bedrock-broker-webhook-ca"}
    # cert-manager refuses a commonName over 64 bytes: a long namespace or
    # release name left the webhook without its certificate (an audit: the
    # Service's name in a 42-letter namespace is 66 bytes).
    long_ns = "platform-shared-services-bedrock-broker-prod"
    objs = chart.render(SCENARIOS["cert-manager-selfsigned"], name="platform-genai-gateway-production-eu-central-1", namespace=long_ns)
    certs = by_kind(objs, "Certificate")
    assert len(certs) == 2
    for cert in certs:
        assert len(cert["spec"].get("commonName", "")) <= 64, cert["spec"]
        assert cert["spec"].get("commonName") or cert["spec"].get("dnsNames"), cert["spec"]
    serving = [c for c in certs if not c["spec"].get("isCA")][0]
    assert any(n.endswith(f".{long_ns}.svc") for n in serving["spec"]["dnsNames"]), serving["spec"]

    objs = chart.render(SCENARIOS["cert-manager-cluster-issuer"])
    assert not by_kind(objs, "Issuer")
    assert one(objs, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_user_secret_mode():
    objs = chart.render(SCENARIOS["user-secret"])
    assert not by_kind(objs, "Secret") and not by_kind(objs, "Certificate")
    mwc = one(objs, "MutatingWebhookConfiguration")
    assert {w["clientConfig"]["caBundle"] for w in mwc["webhooks"]} == {CA_PEM}
    dep = one(objs, "Deployment")
    assert dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == "my-webhook-tls"


# --- values.schema.json ----------------------------------------------------------------------

BAD_VALUES = [
    ({"unknownTopLevel": 1}, "additional properties"),
    ({"webhook": {"replica": 2}}, "additional properties"),
    ({"webhook": {"failurePolicy": "Always"}}, "failurePolicy"),
    ({"webhook": {"timeoutSeconds": 31}}, "timeoutSeconds"),
    ({"webhook": {"reinvocationPolicy": "Sometimes"}}, "reinvocationPolicy"),
    ({"webhook": {"onLookupError": "ignore"}}, "onLookupError"),
    ({"webhook": {"rolePolicy": "pod"}}, "rolePolicy"),
    ({"webhook": {"reviewBudget": 1048576}}, "reviewBudget"),
    ({"webhook": {"lookupTimeout": "3 seconds"}}, "lookupTimeout"),
    ({"webhook": {"port": 80}}, "port"),
    ({"tls": {"mode": "letsencrypt"}}, "mode"),
    ({"tls": {"certManager": {"issuerRef": {"name": "x", "kind": "cluster issuer"}}}}, "kind"),
    # An external issuer's kind means nothing without its API group.
    ({"tls": {"certManager": {"issuerRef": {"name": "x", "kind": "AWSPCAClusterIssuer"}}}}, "group"),
    # Selectors the API server refuses (ValidateLabelSelectorRequirement).
    ({"webhook": {"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}}}, "values"),
    ({"webhook": {"objectSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": []}]}}}, "values"),
    ({"webhook": {"objectSelector": {"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]}}}, "values"),
    ({"sidecar": {"mode": "sidecar"}}, "mode"),
    ({"sidecar": {"region": "Europe"}}, "region"),
    ({"sidecar": {"region": "us-east-1-"}}, "region"),
    # A tag in the repository rendered `repo:1.0:0.1.0`.
    ({"image": {"repository": "ghcr.io/x/y:1.0"}}, "repository"),
    ({"sidecar": {"image": {"repository": "ghcr.io/x/Upper"}}}, "repository"),
    # Separators and host names the binary (and the kubelet) refuse.
    ({"image": {"repository": "ghcr.io/a..b/c"}}, "repository"),
    ({"sidecar": {"image": {"repository": "ghcr..io/x"}}}, "repository"),
    ({"image": {"repository": "ghcr.io/a___b"}}, "repository"),
    # A first component with a dot is a registry, held to host names.
    ({"image": {"repository": "under_score.io/x"}}, "repository"),
    ({"sidecar": {"image": {"repository": "[1.2.3.4]:5000/x"}}}, "repository"),
    ({"image": {"repository": "ghcr.io/" + "a" * 250}}, "repository"),
    ({"webhook": {"podDisruptionBudget": {"minAvailable": "abc"}}}, "minAvailable"),
    ({"webhook": {"podDisruptionBudget": {"minAvailable": "150%"}}}, "minAvailable"),
    # Keys the chart sets itself were written twice (which one wins is up
    # to the tool reading the manifest; a selector label could change).
    ({"webhook": {"podLabels": {"app.kubernetes.io/name": "x"}}}, "invalid propertyName 'app.kubernetes.io/name'"),
    ({"webhook": {"podLabels": {"bedrock-broker.io/inject": "true"}}}, "invalid propertyName 'bedrock-broker.io/inject'"),
    ({"commonLabels": {"app.kubernetes.io/component": "ai"}}, "invalid propertyName 'app.kubernetes.io/component'"),
    ({"sidecar": {"tokenExpiration": 60}}, "tokenExpiration"),
    ({"sidecar": {"runAsUser": 0}}, "runAsUser"),
    ({"sidecar": {"logLevel": "verbose"}}, "logLevel"),
    ({"sidecar": {"audience": "has spaces"}}, "audience"),
    # Credentials would sit in every injected pod's spec.
    ({"sidecar": {"httpsProxy": "http://user:pass@egress.corp:3128"}}, "httpsProxy"),
    ({"sidecar": {"httpsProxy": "http://egress.corp:3128/path"}}, "httpsProxy"),
    ({"sidecar": {"httpsProxy": "egress.corp:3128?x=1"}}, "httpsProxy"),
    ({"sidecar": {"httpsProxy": "http://u:p#x@egress.corp:3128"}}, "httpsProxy"),
    ({"sidecar": {"resources": {"requests": {"cpu": "lots", "memory": "32Mi"}, "limits": {"cpu": "none", "memory": "128Mi"}}}}, "cpu"),
    ({"sidecar": {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "none", "memory": "-1Gi"}}}}, "memory"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"metrics": {"prometheusRule": {"credentialsExpiringMinutes": 0}}}, "credentialsExpiringMinutes"),
    ({"metrics": {"podMonitor": {"enabled": "yes"}}}, "enabled"),
    # Go durations the Prometheus Operator's CRDs refuse (its Duration pattern).
    ({"metrics": {"serviceMonitor": {"interval": "1.5s"}}}, "interval"),
    ({"metrics": {"podMonitor": {"interval": "500us"}}}, "interval"),
    ({"metrics": {"serviceMonitor": {"interval": ""}}}, "interval"),
]


@pytest.mark.parametrize("interval", ["30s", "1m30s", "15d", "500ms"])
def test_schema_takes_the_operators_scrape_intervals(interval):
    objs = chart.render({"metrics": {"serviceMonitor": {"enabled": True, "interval": interval},
                                     "podMonitor": {"enabled": True, "interval": interval}}})
    for kind, key in (("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")):
        assert one(objs, kind)["spec"][key][0]["interval"] == interval


@pytest.mark.parametrize("region", ["us-east-1", "us-gov-west-1", "eusc-de-east-1", "us-isob-east-1", "cn-north-1", "ap-southeast-7"])
def test_schema_takes_every_aws_region_shape(region):
    # The schema refused eusc-de-east-1 (a real region) that the annotation
    # and the webhook's own flag take. (The binary also takes names of a
    # private endpoint's own; the chart asks for an AWS region.)
    objs = chart.render({"sidecar": {"region": region}})
    env = {e["name"]: e.get("value") for e in one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BEDROCK_BROKER_SIDECAR_REGION"] == region


@pytest.mark.parametrize("repository", ["ghcr.io/bedrock-broker/bedrock-broker", "localhost:5000/team/broker", "registry.corp/a__b/c.d-e", "bedrock-broker", "[fd00::1]:5000/team/broker", "team.a/x", "localhost/x"])
def test_schema_takes_image_repositories_with_a_registry_port(repository):
    objs = chart.render({"image": {"repository": repository}})
    image = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith(repository + ":") or image.startswith(repository + "@"), image


@pytest.mark.parametrize("min_available", [0, 1, "50%"])
def test_schema_takes_a_pdbs_count_or_percentage(min_available):
    objs = chart.render({"webhook": {"replicas": 2, "podDisruptionBudget": {"enabled": True, "minAvailable": min_available}}})
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == min_available


def test_a_monitor_label_the_chart_sets_too_is_written_once():
    # kube-prometheus-stack selects monitors on `release`, which a platform
    # also puts in commonLabels: it was written twice.
    values = {"commonLabels": {"release": "prom"},
              "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom", "team": "ai"}},
                          "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
                          "prometheusRule": {"enabled": True, "labels": {"release": "prom"}}}}
    objs = chart.render(values)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert one(objs, kind)["metadata"]["labels"]["release"] == "prom"
    assert one(objs, "ServiceMonitor")["metadata"]["labels"]["team"] == "ai"
    values["metrics"]["serviceMonitor"]["labels"]["release"] = "other"
    with pytest.raises(helm.HelmError, match=r"metrics.serviceMonitor.labels.release \(other\) differs"):
        chart.render(values)


def test_the_webhook_and_its_admin_server_cannot_share_a_port():
    with pytest.raises(helm.HelmError, match="webhook.port and webhook.adminPort must differ"):
        chart.render({"webhook": {"port": 9789}})


@pytest.mark.parametrize("delay,drain,grace", [
    ("5s", "10s", 30),  # the defaults: Kubernetes' own
    ("20s", "25s", 50),
    ("1m30s", "1s", 96),  # a drain of 0s is one the webhook refuses to start with
    ("1.5s", "24500ms", 31),
])
def test_the_webhook_pod_outlives_its_shutdown_delay_and_drain(delay, drain, grace):
    # A SIGKILL at 30 s cut a longer delay and drain short: reviews in
    # flight were lost, as if there were no drain.
    objs = chart.render({"webhook": {"shutdownDelay": delay, "shutdownGracePeriod": drain}})
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == grace
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert (env["BEDROCK_BROKER_WEBHOOK_SHUTDOWN_DELAY"], env["BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD"]) == (delay, drain)


def test_a_bypass_list_without_a_proxy_is_refused_at_install():
    with pytest.raises(helm.HelmError, match="sidecar.noProxy has no effect without sidecar.httpsProxy"):
        chart.render({"sidecar": {"noProxy": ".internal"}})
    chart.render({"sidecar": {"noProxy": ".internal", "httpsProxy": "http://egress.corp:3128"}})


def test_the_sidecars_trust_bundle_is_mounted_into_the_webhook():
    values = {"sidecar": {"caBundle": {"configMap": "corp-ca", "key": "bundle.pem"}}}
    objs = chart.render(values)
    for obj in objs:
        validate(obj)
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BEDROCK_BROKER_SIDECAR_CA_BUNDLE"] == "/etc/bedrock-broker/sidecar-ca/bundle.pem"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "sidecar-ca")
    assert mount["mountPath"] == "/etc/bedrock-broker/sidecar-ca" and mount["readOnly"]
    assert next(v for v in spec["volumes"] if v["name"] == "sidecar-ca")["configMap"] == {"name": "corp-ca"}
    default = one(chart.render({}), "Deployment")["spec"]["template"]["spec"]
    assert "BEDROCK_BROKER_SIDECAR_CA_BUNDLE" not in {e["name"] for e in default["containers"][0]["env"]}
    assert [v["name"] for v in default["volumes"]] == ["tls"]


@pytest.mark.parametrize("url", ["HTTP://egress.corp:3128", "egress.corp:3128", "http://[fd00::1]:3128/"])
def test_schema_takes_the_proxy_urls_the_binary_takes(url):
    c = one(chart.render({"sidecar": {"httpsProxy": url}}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in c["env"]}["BEDROCK_BROKER_SIDECAR_HTTPS_PROXY"] == url
    binary = ROOT / "target" / "debug" / "bedrock-broker"
    if binary.exists():
        # The webhook takes it too (inject parses the same settings).
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"bedrock-broker.io/inject": "true"},
               "annotations": {"bedrock-broker.io/region": "us-east-1"}},
               "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
        run = subprocess.run([str(binary), "inject", "--service-account-annotation", "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/r"],
                             input=yaml.safe_dump(pod), capture_output=True, text=True, timeout=30,
                             env={"PATH": os.environ["PATH"], "BEDROCK_BROKER_SIDECAR_HTTPS_PROXY": url})
        assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("values,needle", BAD_VALUES, ids=[json.dumps(v) for v, _ in BAD_VALUES])
def test_schema_rejects_bad_values(values, needle):
    with pytest.raises(helm.HelmError) as e:
        chart.render(values)
    assert needle in str(e.value), str(e.value)
    report = helm.lint(str(chart.CHART), values, strict=True, namespace="bedrock-broker")
    assert report["errors"], "helm lint accepted bad values"


def test_template_errors_for_incomplete_tls_secret_mode():
    with pytest.raises(helm.HelmError, match="tls.secret.name is required"):
        chart.render({"tls": {"mode": "secret"}})
    with pytest.raises(helm.HelmError, match="caBundle"):
        chart.render({"tls": {"mode": "secret", "secret": {"name": "x"}}})


def test_every_value_is_documented_and_the_readme_is_current():
    text = (chart.CHART / "values.yaml").read_text()
    assert chart_readme.undocumented(text) == []
    for key, _, _ in chart_readme.documented_values(text):
        assert f"`{key}`" in (chart.CHART / "README.md").read_text(), key


def test_notes_say_how_to_opt_in_and_verify():
    notes = chart.notes({})
    assert "kubectl label namespace my-apps bedrock-broker.io/inject=true" in notes
    assert "bedrock-broker credentials" in notes and "/readyz" in notes
    assert "kube-system, bedrock-broker" in notes


def test_helm_test_hook():
    objs = chart.render({})
    (pod,) = [o for o in objs if o["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["bedrock-broker.io/inject"] == "false"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert "bedrock-broker-webhook.bedrock-broker.svc:9789/readyz" in script
    assert not [o for o in chart.render({}, name="x") if o["kind"] == "Pod" and "test" not in o["metadata"]["name"]]
    assert not [o for o in chart.render({}, tests=False) if o["kind"] == "Pod"]


# --- deploy/ ----------------------------------------------------------------------------------


def test_deploy_is_not_stale():
    run = subprocess.run(["bash", "hack/render.sh", "--check"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PY": sys.executable}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name", ["bedrock-broker.yaml", "monitoring.yaml", "example-app.yaml"])
def test_deploy_manifests_validate(name):
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert docs
    for d in docs:
        validate(d)


def test_example_app_is_opted_in_and_uses_both_sdks():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "example-app.yaml").read_text()) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["bedrock-broker.io/inject"] == "true"
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    app = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["app.py"]
    compile(app, "app.py", "exec")
    assert "openai.OpenAI(" in app and re.search(r'boto3\.client\(\s*"bedrock-runtime"', app)


def test_example_app_injects(tmp_path):
    binary = ROOT / "target" / "debug" / "bedrock-broker"
    if not binary.exists():
        pytest.skip("target/debug/bedrock-broker not built (make build)")
    run = subprocess.run([str(binary), "inject", "--namespace-label", "bedrock-broker.io/inject=true"],
                         input=(DEPLOY / "example-app.yaml").read_text(), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    for d in docs:
        validate(d)
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["name"] == "bedrock-broker"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:9787/openai/v1"


def test_iam_policies_are_json():
    for f in sorted((DEPLOY / "iam").glob("*.json")):
        doc = json.loads(f.read_text())
        assert doc["Version"] == "2012-10-17"
    for f in ("trust-policy-irsa.json", "trust-policy-oidc.json"):
        st = json.loads((DEPLOY / "iam" / f).read_text())["Statement"][0]
        assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
        cond = st["Condition"]["StringEquals"]
        assert any(k.endswith(":aud") and v == "sts.amazonaws.com" for k, v in cond.items())  # the sidecar's default audience
        assert any(k.endswith(":sub") and v.startswith("system:serviceaccount:") for k, v in cond.items())


def test_dockerfile_builds_with_the_pinned_toolchain():
    channel = re.search(r'^channel = "([^"]+)"', (ROOT / "rust-toolchain.toml").read_text(), re.M).group(1)
    assert f"ARG RUST_VERSION={channel}\n" in (ROOT / "Dockerfile").read_text()


def test_e2e_script():
    script = ROOT / "hack" / "e2e-cluster.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        scripts = sorted(str(p) for p in (ROOT / "hack").glob("*.sh"))
        run = subprocess.run(["shellcheck", *scripts, str(ROOT / ".ci" / "run")], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout
    text = script.read_text()
    # What it applies is what these tests render and validate.
    assert "-f hack/values/e2e.yaml" in text and "deploy/example-app.yaml" in text and "charts/bedrock-broker" in text
    for flag in re.findall(r"--set ([a-zA-Z.]+)=", text):
        node = yaml.safe_load((chart.CHART / "values.yaml").read_text())
        for part in flag.split("."):
            assert part in node, f"--set {flag}: no such value"
            node = node[part]


# --- alerts and dashboard ----------------------------------------------------------------------


def contract_metric_names():
    names = set()
    for f in sorted((ROOT / "src/metrics").glob("*.rs")):
        names |= {"bedrock_broker_" + n for n in re.findall(r'"([a-z_]+)"', f.read_text())}
    return names


def used_metrics(text: str):
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bbedrock_broker_[a-z_]+", text)}


def test_alert_and_dashboard_metrics_exist_in_the_source():
    known = contract_metric_names()
    for f in ("alerts.yaml", "grafana-dashboard.json"):
        used = used_metrics((DEPLOY / f).read_text())
        assert used, f
        assert used <= known, f"{f}: unknown metrics {used - known}"
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dash == make_dashboard.dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs and all(e.count("(") == e.count(")") for e in exprs)


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool missing: hack/packaging-test.sh installs the Debian package prometheus")
    return path


def test_credential_panels_leave_out_pods_without_credentials_yet(promtool, tmp_path):
    # A pod before its first credentials exports 0 for these gauges: the
    # panels plotted it at about -1.8e9 s and flattened every other line.
    dash = make_dashboard.dashboard()
    exprs = {t["legendFormat"].split(" {{")[0]: t["expr"].replace('namespace=~"$namespace"', "")
             for p in dash["panels"] if p["id"] in (2, 7) for t in p["targets"]}
    assert set(exprs) == {"{{namespace}}/{{pod}}", "refresh age", "token left"}, exprs
    now = 600  # promtool's clock: series start at 0 s, evaluated at 10m
    series = []
    for name, warm in (("bedrock_broker_credentials_expiry_timestamp_seconds", now + 3600),
                       ("bedrock_broker_credentials_last_refresh_timestamp_seconds", now - 60),
                       ("bedrock_broker_web_identity_token_expiry_timestamp_seconds", now + 7200)):
        series += [{"series": f'{name}{{namespace="a",pod="warm"}}', "values": f"{warm}x20"},
                   {"series": f'{name}{{namespace="a",pod="cold"}}', "values": "0x20"}]
    expected = {"{{namespace}}/{{pod}}": 3600, "refresh age": 60, "token left": 7200}
    tests = {"tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": '{namespace="a",pod="warm"}', "value": expected[k]}]}
        for k, expr in exprs.items()]}]}
    path = tmp_path / "panels_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_check_rules(promtool, tmp_path):
    run = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # Custom thresholds render to valid rules as well.
    objs = chart.render(SCENARIOS["everything"])
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump(one(objs, "PrometheusRule")["spec"]))
    run = subprocess.run([promtool, "check", "rules", str(custom)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "< 20 * 60" in custom.read_text()


def test_promtool_test_rules(promtool):
    run = subprocess.run([promtool, "test", "rules", "tests/packaging/alerts_test.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "tests" / "packaging" / "alerts_test.yaml").read_text()))
    defined = set(re.findall(r"alert: (\w+)", (DEPLOY / "alerts.yaml").read_text()))
    assert defined == tested, f"alerts without a unit test: {defined - tested}"


# --- Dockerfile -------------------------------------------------------------------------------


def test_hadolint():
    exe = shutil.which("hadolint") or str(VENV_BIN / "hadolint")
    run = subprocess.run([exe, "--failure-threshold", "info", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_glibc_tunables_are_ones_glibc_knows():
    """glibc ignores unknown tunable names and out-of-range values without a
    word; its loader lists what it took. The host's glibc is Debian 12's,
    the image's too (test_dockerfile_shape)."""
    loader = Path("/lib64/ld-linux-x86-64.so.2")
    if not loader.exists():
        pytest.skip("no x86-64 glibc loader here")
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    m = re.search(r"^ENV GLIBC_TUNABLES=(\S+)$", final, re.M)
    assert m, "the runtime stage sets no GLIBC_TUNABLES"
    listed = subprocess.run([str(loader), "--list-tunables"], env={"GLIBC_TUNABLES": m.group(1)},
                            capture_output=True, text=True, check=True).stdout
    for tunable in m.group(1).split(":"):
        name, _, value = tunable.partition("=")
        line = re.search(rf"^{re.escape(name)}: (\S+) ", listed, re.M)
        assert line, f"glibc does not know {name}"
        assert int(line.group(1), 16) == int(value), f"glibc did not take {tunable}: {line.group(0)}"


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert [s for _, s in stages] == ["chef", "planner", "cook", "build", ""]
    assert stages[-1][0].startswith("gcr.io/distroless/cc-debian12") and stages[-1][0].endswith(":nonroot")
    # The build stage's glibc is the runtime's (Debian 12 both).
    assert stages[0][0].endswith("-bookworm"), stages[0]
    # What the bench applies to the sidecar too (bench/run.py reads it here).
    assert re.search(r"^ENV MALLOC_MMAP_THRESHOLD_=131072$", text, re.M)
    assert re.search(r"^ENV GLIBC_TUNABLES=glibc\.malloc\.tcache_count=256$", text, re.M)
    assert "cargo chef prepare" in text and "cargo chef cook --release --locked" in text
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/bedrock-broker"\]$', text, re.M)
    assert re.search(r"^USER 65532:65532$", text, re.M)
    for label in ("title", "version", "revision", "source", "licenses", "created"):
        assert f"org.opencontainers.image.{label}=" in text
    # The image's default ports are the binary's defaults.
    assert "EXPOSE 9787 9788 8443 9789" in text


# distroless' PATH (base/base.bzl, `env PATH=...`); the injected container sets none.
DISTROLESS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_the_documented_exec_commands_find_the_binary():
    """Troubleshooting starts with ``kubectl exec POD -c bedrock-broker --
    bedrock-broker credentials``: the bare name must be on the image's PATH,
    where the final stage puts the binary its ENTRYPOINT runs."""
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    installed = re.findall(r"^COPY --from=build \S+ \S+ /bedrock-broker (\S+)$", final, re.M)
    assert len(installed) == 1, installed
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M).group(1))
    assert entrypoint == installed
    path = DISTROLESS_PATH.split(":")
    found = [d for d in path if (Path(d) / "bedrock-broker").as_posix() == installed[0]]
    assert found, f"{installed[0]} is not on the image's PATH {DISTROLESS_PATH}"
    documented = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "hack").glob("*.sh")),
                  ROOT / "charts/bedrock-broker/templates/NOTES.txt", ROOT / "charts/bedrock-broker/files/alerts.yaml"]
    # `exec POD -c bedrock-broker -- X` and `exec -c bedrock-broker POD -- X`.
    execs = [(f.name, m) for f in documented for m in re.findall(r"-c bedrock-broker (?:\S+ )?-- (\S+)", f.read_text())]
    assert len(execs) >= 5, execs
    for where, program in execs:
        resolved = program if program.startswith("/") else (Path(found[0]) / program).as_posix()
        assert resolved == installed[0], f"{where}: `{program}` is not the image's binary"


def test_build_context_is_enough_for_cargo(tmp_path):
    """.dockerignore keeps Cargo.toml, Cargo.lock and src/: cargo resolves the
    package from just those (what the planner and build stages see)."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert rules[0] == "*" and {"!Cargo.toml", "!Cargo.lock", "!src/"} <= set(rules), rules
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for keep in ("Cargo.toml", "Cargo.lock"):
        shutil.copy(ROOT / keep, ctx / keep)
    shutil.copytree(ROOT / "src", ctx / "src")
    run = subprocess.run(["cargo", "metadata", "--locked", "--offline", "--format-version", "1", "--no-deps"], cwd=ctx,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    pkg = json.loads(run.stdout)["packages"][0]
    assert [t["name"] for t in pkg["targets"] if "bin" in t["kind"]] == ["bedrock-broker"]
    chart_meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert chart_meta["appVersion"] == pkg["version"], "Chart appVersion must follow Cargo.toml"
    assert f"ARG VERSION={pkg['version']}" in (ROOT / "Dockerfile").read_text()


def test_the_image_build_links_the_hot_code_list_and_strips_after():
    """build.rs reads link/hot-code.txt when BEDROCK_BROKER_HOT_CODE=1, and
    its names carry a hash of the release profile: the image's build stage
    gets the list and the switch before it builds, builds with the profile
    as it is (no CARGO_PROFILE_* override, the symbols it keeps), and
    strips the symbols only from the copy it ships."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "!link/" in rules, rules
    assert (ROOT / "link" / "hot-code.txt").is_file()
    text = (ROOT / "Dockerfile").read_text()
    build = text[text.index(" AS build"):text.rindex("\nFROM ")]
    copy = re.search(r"^COPY link \./link$", build, re.M)
    switch = re.search(r"^ENV BEDROCK_BROKER_HOT_CODE=1$", build, re.M)
    cargo = re.search(r"^RUN cargo build --release", build, re.M)
    assert copy and switch and cargo, build
    assert copy.start() < cargo.start() and switch.start() < cargo.start(), "the list must be there before the build"
    assert "CARGO_PROFILE_" not in text
    assert re.search(r"strip --strip-all -o /bedrock-broker target/release/bedrock-broker", build), build
    profile = tomllib.loads((ROOT / "Cargo.toml").read_text())["profile"]["release"]
    assert profile["strip"] == "debuginfo", profile


# --- the chart's webhook configuration, served by the real binary ---------------------------


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * units[suffix])
    return int(quantity)


@pytest.mark.parametrize("scenario", ["defaults", "everything"])
def test_webhook_memory_limit_covers_its_review_budget(scenario):
    """The rule values.yaml states: the memory limit is at least 64 MiB plus
    5 times the review budget (measured below with the binary)."""
    container = one(chart.render(SCENARIOS[scenario]), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    budget = int({e["name"]: e["value"] for e in container["env"]}["BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET"])
    assert budget >= 8 * 2**20
    assert _bytes(container["resources"]["limits"]["memory"]) >= 64 * 2**20 + 5 * budget


def _flood_webhook(tmp_path, shape, check=None, annotations=None) -> tuple:
    """Starts the binary as the chart's defaults configure it and sends two
    rounds of 12 concurrent reviews, the fixture pod changed by `shape`
    (and given `annotations`).
    Returns the answers (status, or "refused" when the webhook answered
    before reading the body), its peak RSS and the chart's memory limit;
    `check(hook)` runs against the same webhook afterwards."""
    import threading

    import requests

    binary = ROOT / "target" / "debug" / "bedrock-broker"
    if not binary.exists():
        pytest.skip("target/debug/bedrock-broker not built (make build)")
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from test_webhook_server import FakeApiServer, running_webhook
    from test_webhook_support import load_fixture

    container = one(chart.render({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    limit = _bytes(container["resources"]["limits"]["memory"])
    budget = {e["name"]: e["value"] for e in container["env"]}["BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET"]
    review = load_fixture("plain")
    shape(review["request"]["object"]["spec"])
    review["request"]["object"]["metadata"].setdefault("annotations", {}).update(annotations or {})
    body = json.dumps(review, separators=(",", ":"))

    def peak(pid):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    api = FakeApiServer()
    try:
        with running_webhook(tmp_path, api, {"BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET": budget}) as hook:
            answers: list = []

            def send():
                try:
                    answers.append(hook.review(body).status_code)
                except requests.ConnectionError:
                    answers.append("refused")  # answered 503 before the body was read
            for _ in range(2):
                threads = [threading.Thread(target=send) for _ in range(12)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            if check is not None:
                check(hook)
            return answers, peak(hook.proc.pid), limit, int(budget), len(body)
    finally:
        api.stop()


def test_webhook_memory_stays_within_its_limit_under_the_largest_reviews(tmp_path):
    """The chart's memory limit and review budget agree: a flood of the
    largest reviews (just under 8 MiB, a pod of many small fields, the
    costliest shape to hold) keeps the webhook's peak RSS under its limit,
    the budget refusing (503) what does not fit."""
    def many_variables(spec):
        spec["containers"][0]["env"] = [{"name": f"V{i}", "value": "y" * 30} for i in range(125000)]

    answers, peak, limit, budget, size = _flood_webhook(tmp_path, many_variables)
    assert 7 * 2**20 < size < 8 * 2**20
    assert answers.count(200) >= 2 * (budget // (8 * 2**20)), answers
    assert set(answers) <= {200, 503, "refused"}, answers
    assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB over the {limit / 2**20:.0f} MiB limit"


def test_webhook_memory_stays_within_its_limit_under_reviews_that_parse_large(tmp_path):
    """Another pod sends reviews whose text is small and whose parsed pod is
    huge: 1.5 MB listing 125,000 `{"name":""}` volumes, each a 3 KB struct
    once parsed (one such review took the webhook from 12 MB to 287 MB). They
    are refused (413) from an estimate made before parsing, and the peak RSS
    stays under the chart's limit; an ordinary review is still answered."""
    def many_volumes(spec):
        spec["volumes"] = [{"name": ""}] * 125000

    def ordinary_review(hook):
        from test_webhook_support import load_fixture
        ordinary.append(hook.review(json.dumps(load_fixture("plain"))).status_code)

    ordinary: list = []
    answers, peak, limit, _, size = _flood_webhook(tmp_path, many_volumes, ordinary_review)
    assert size < 2 * 2**20
    assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB over the {limit / 2**20:.0f} MiB limit"
    assert answers.count(413) >= 12 and set(answers) <= {413, 503, "refused"}, answers
    assert ordinary == [200]


def test_webhook_memory_stays_within_its_limit_under_reviews_whose_patch_is_huge(tmp_path):
    """A pod whose review is small but whose patch would be huge: 30,000
    containers with an empty env list, each of which gets the client
    variables one operation at a time (0.8 MB of review, 33 MB of patch,
    which one review took the webhook to 284 MiB building). It is denied
    before the patch is built, naming the limit, and the peak RSS stays
    under the chart's limit."""
    annotations = {"bedrock-broker.io/proxy-token-secret": "tok/key"}

    def many_containers(spec):
        spec["containers"] = [{"name": f"c{i}", "image": "x", "env": []} for i in range(30000)]

    def denied_naming_the_limit(hook):
        from test_webhook_support import load_fixture
        review = load_fixture("plain")
        many_containers(review["request"]["object"]["spec"])
        review["request"]["object"]["metadata"].setdefault("annotations", {}).update(annotations)
        response = hook.review(json.dumps(review)).json()["response"]
        denials.append((response["allowed"], response.get("status", {}).get("message", "")))

    denials: list = []
    answers, peak, limit, _, size = _flood_webhook(tmp_path, many_containers, denied_naming_the_limit, annotations)
    assert size < 2 * 2**20
    assert set(answers) <= {200, 503, "refused"} and answers.count(200) >= 2, answers
    assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB over the {limit / 2**20:.0f} MiB limit"
    [(allowed, message)] = denials
    assert not allowed and "1048576 bytes" in message and "30000 containers" in message, message


def test_binary_serves_with_the_charts_env_and_generated_tls(tmp_path):
    """The Deployment's environment and the chart-generated Secret, given to
    `bedrock-broker webhook` (fake API server from tests/e2e): it starts,
    /readyz is 200, and an AdmissionReview over TLS verifies against the
    MutatingWebhookConfiguration's caBundle for the Service's DNS name."""
    import http.client
    import socket
    import ssl
    import time

    binary = ROOT / "target" / "debug" / "bedrock-broker"
    if not binary.exists():
        pytest.skip("target/debug/bedrock-broker not built (make build)")
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    try:
        from test_webhook_server import FakeApiServer
    except ImportError as e:  # the webhook tests moved: nothing to borrow
        pytest.skip(f"tests/e2e fake API server unavailable: {e}")

    objs = chart.render({"sidecar": {"region": "us-east-1"}})
    secret = one(objs, "Secret")
    mwc = one(objs, "MutatingWebhookConfiguration")
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for k in ("tls.crt", "tls.key"):
        (tmp_path / k).write_bytes(base64.b64decode(secret["data"][k]))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"]))
    api = FakeApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update({
        "PATH": "/usr/bin:/bin",
        "KUBECONFIG": str(kubeconfig),
        "BEDROCK_BROKER_WEBHOOK_LISTEN": "127.0.0.1:0",
        "BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN": "127.0.0.1:0",
        "BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
        "BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE": str(tmp_path / "tls.key"),
    })
    log = tmp_path / "webhook.log"
    proc = subprocess.Popen([str(binary), "webhook"], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        serving = None
        deadline = time.monotonic() + 20
        while serving is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            for line in log.read_text(errors="replace").splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("message") == "webhook serving":
                    serving = obj
            time.sleep(0.05)
        assert serving, log.read_text()
        admin_host, admin_port = serving["admin"].rsplit(":", 1)
        ready = False
        while not ready and time.monotonic() < deadline:
            conn = http.client.HTTPConnection(admin_host, int(admin_port), timeout=5)
            conn.request("GET", "/readyz")
            ready = conn.getresponse().status == 200
            time.sleep(0.05)
        assert ready, log.read_text()

        host, port = serving["listen"].rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(ca))  # verifies chain and hostname
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "default", "operation": "CREATE", "userInfo": {"username": "test"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "p", "namespace": "default", "labels": {"bedrock-broker.io/inject": "true"}},
                           # Its role comes from the fake cluster's ServiceAccount (role policy service-account).
                           "spec": {"serviceAccountName": "chat-app", "containers": [{"name": "app", "image": "busybox"}]}},
            },
        }
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname="bedrock-broker-webhook.bedrock-broker.svc") as tls:
                body = json.dumps(review).encode()
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: bedrock-broker-webhook.bedrock-broker.svc\r\n"
                            b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
                raw = b""
                while chunk := tls.recv(65536):
                    raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        if b"transfer-encoding: chunked" in head.lower():
            out, rest = b"", payload
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                out, rest = out + rest[:n], rest[n + 2:]
            payload = out
        answer = json.loads(payload)["response"]
        assert answer["uid"] == "u-1" and answer["allowed"] is True
        raw_patch = answer["patch"]  # kube-core writes bytes as a number array; Go's decoder takes both
        patch = json.loads(bytes(raw_patch) if isinstance(raw_patch, list) else base64.b64decode(raw_patch))
        images = [op["value"].get("image") for op in patch if isinstance(op.get("value"), dict)]
        images += [c.get("image") for op in patch if isinstance(op.get("value"), list) for c in op["value"] if isinstance(c, dict)]
        assert env["BEDROCK_BROKER_SIDECAR_IMAGE"] in images, patch
    finally:
        proc.kill()
        proc.wait(timeout=10)
        api.stop()
