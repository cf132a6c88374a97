"""``bedrock-broker inject``: the real binary on fixture YAML.

Every output document must validate against the Kubernetes OpenAPI schema
(offline, strict: unknown fields are errors), running ``inject`` again must
change nothing, everything the user wrote must survive, and the offline
mutation must equal the webhook's (the golden answers under
``tests/fixtures/admission/expected``).
"""

from __future__ import annotations

import socket
import subprocess

import pytest
import requests
import yaml

from conftest import BINARY
from test_webhook_support import (
    MANIFESTS,
    cluster_documents,
    fixture_names,
    load_expected,
    load_fixture,
    preserved,
    preserved_pod,
    sidecar_count,
    validate,
)


def inject(text: str, *args: str) -> subprocess.CompletedProcess:
    assert BINARY.exists(), f"{BINARY} missing: run cargo build first"
    return subprocess.run(
        [str(BINARY), "inject", *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def docs(text: str) -> list[dict]:
    # PyYAML reads YAML 1.1, like kubectl: "yes" unquoted would be a boolean.
    return [d for d in yaml.safe_load_all(text) if d is not None]


def test_injected_workloads_validate_and_keep_everything():
    source = (MANIFESTS / "workloads.yaml").read_text()
    result = inject(source)
    assert result.returncode == 0, result.stderr
    before, after = docs(source), docs(result.stdout)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        preserved(b, a)
        validate(a)
    injected = [line for line in result.stderr.splitlines() if line.endswith(": injected")]
    assert len(injected) == 5, result.stderr
    # Strings that YAML 1.1 would read as other types stay strings.
    chat = next(d for d in after if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in chat["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FEATURE_FLAGS"] == "yes"
    assert env["UMASK"] == "0644"
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:9787/openai/v1"
    assert chat["spec"]["template"]["metadata"]["annotations"]["bedrock-broker.io/injected"] == "0.1.0"


def test_the_injected_admin_address_answers_probes_over_ipv4_and_ipv6(start_sidecar, irsa_env):
    # The kubelet probes the pod's IP: IPv4, or IPv6 on an IPv6-only cluster
    # (EKS in IPv6 mode), so the admin server must listen on both.
    result = inject((MANIFESTS / "workloads.yaml").read_text())
    assert result.returncode == 0, result.stderr
    chat = next(d for d in docs(result.stdout) if d["kind"] == "Deployment")
    pod = chat["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "bedrock-broker")
    admin = {e["name"]: e.get("value") for e in sidecar["env"]}["BEDROCK_BROKER_ADMIN_LISTEN"]
    host, _, port = admin.rpartition(":")
    probed = sidecar["readinessProbe"]["httpGet"]["port"]
    assert port == str(next(p["containerPort"] for p in sidecar["ports"] if p["name"] == probed)), admin
    sc = start_sidecar(irsa_env, admin_listen=f"{host}:0")
    bound = int(sc.listening_line()["admin"].rpartition(":")[2])
    families = ["127.0.0.1"]
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        families.append("[::1]")
    except OSError:
        print("no IPv6 loopback on this machine: only IPv4 is checked")
    for address in families:
        r = requests.get(f"http://{address}:{bound}/readyz", timeout=5)
        assert r.status_code == 200, (address, r.text)


def test_a_value_in_the_wrong_place_is_not_repeated():
    # A secret literal written where an object goes (`valueFrom: <key>`)
    # came back whole in the refusal, and into logs with it.
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    out = inject(f"""apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: team-a, labels: {{bedrock-broker.io/inject: "true"}}}}
spec:
  containers:
  - name: app
    image: app:1
    env:
    - name: AWS_SECRET_ACCESS_KEY
      valueFrom: {secret}
""")
    assert out.returncode == 1, out.stderr
    assert f"env[0].valueFrom: invalid type: a string of {len(secret)} characters, expected EnvVarSource" in out.stderr, out.stderr
    assert secret not in out.stderr + out.stdout


def test_injecting_twice_changes_nothing():
    once = inject((MANIFESTS / "workloads.yaml").read_text())
    twice = inject(once.stdout)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == once.stdout
    assert ": injected" not in twice.stderr


def test_refusals_name_the_annotation_and_print_nothing():
    result = inject((MANIFESTS / "denied.yaml").read_text())
    assert result.returncode == 1
    assert result.stdout == ""
    assert 'bedrock-broker.io/token-expiration: "300"' in result.stderr
    assert "accepted values: a whole number of seconds from 600" in result.stderr
    assert 'bedrock-broker.io/sidecar-mode: "sidecar"' in result.stderr
    assert "Pod default/no-role" in result.stderr and "no IAM role" in result.stderr


def test_bad_flags_and_bad_yaml_exit_2():
    result = inject("", "--sidecar-token-expiration", "5")
    assert result.returncode == 2
    assert "--sidecar-token-expiration" in result.stderr
    result = inject("kind: [unclosed\n")
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr


@pytest.mark.parametrize("name", fixture_names())
def test_inject_equals_the_webhook(name):
    """The pod of each admission fixture, injected offline, gives the webhook's golden answer."""
    review = load_fixture(name)
    pod = review["request"]["object"]
    pod.setdefault("metadata", {}).setdefault("namespace", review["request"]["namespace"])
    expected = load_expected(name)
    stream = yaml.safe_dump_all([*cluster_documents(), pod], sort_keys=False)
    # The goldens are the webhook as the chart installs it.
    result = inject(stream, "--sidecar-region", "us-east-1", "--role-policy", "service-account")
    if not expected["allowed"]:
        assert result.returncode == 1, result.stderr
        # The webhook's reason, word for word.
        assert expected["message"] in result.stderr
        return
    assert result.returncode == 0, result.stderr
    out = docs(result.stdout)[-1]
    if expected["pod"] is None:
        assert out == pod
        return
    assert out == expected["pod"]
    assert sidecar_count(out) == 1


@pytest.mark.parametrize("name", [n for n in fixture_names() if load_expected(n)["pod"] is not None])
def test_every_golden_pod_validates(name):
    pod = load_expected(name)["pod"]
    original = load_fixture(name)["request"]["object"]
    validate(pod)
    preserved_pod(original, pod)
    assert sidecar_count(pod) == 1
