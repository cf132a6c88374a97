"""The chart across upgrades: what its templates do with what `lookup`
finds in a cluster. Offline `lookup` finds nothing, so templates that use
it take the looked-up objects as arguments of a named template, and these
tests render a copy of the chart with a probe template that hands them
what a cluster would answer."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))
import chart  # noqa: E402

PROBE = """{{- $out := include "bedrock-broker.generatedTLS" (dict "root" . "secret" (`%s` | fromJson) "live" (`%s` | fromJson)) }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: tls-probe
data:
  tls: {{ $out | quote }}
"""


def generated_tls(tmp_path: Path, secret: dict, live: dict) -> dict:
    """What `bedrock-broker.generatedTLS` gives when `lookup` finds
    `secret` and `live` (empty: not found), decoded to PEM text."""
    copy = tmp_path / f"chart-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(chart.CHART, copy)
    (copy / "templates" / "zz-probe.yaml").write_text(PROBE % (json.dumps(secret), json.dumps(live)))
    with helm.Chart.load(str(copy)) as c:
        files = c.render(values={}, name=chart.RELEASE, namespace=chart.NAMESPACE, is_install=True)
    text = next(t for p, t in files.items() if p.endswith("zz-probe.yaml"))
    out = json.loads(yaml.safe_load(text)["data"]["tls"])
    return {k: base64.b64decode(v).decode() for k, v in out.items()}


def live_configuration(ca_pem: str) -> dict:
    """A MutatingWebhookConfiguration as the API server returns it: the
    caBundle of each entry base64, as JSON carries bytes."""
    bundle = base64.b64encode(ca_pem.encode()).decode()
    return {"webhooks": [{"name": f"{e}.inject.bedrock-broker.io", "clientConfig": {"caBundle": bundle}} for e in ("namespace", "pod")]}


def verifies(bundle: str, leaf: str, tmp_path: Path) -> bool:
    """Whether a TLS client trusting `bundle` (as the API server trusts the
    caBundle) accepts `leaf` as the webhook's serving certificate."""
    (tmp_path / "bundle.pem").write_text(bundle)
    (tmp_path / "leaf.pem").write_text(leaf)
    run = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True,
    )
    return run.returncode == 0


def certificates(bundle: str) -> int:
    return bundle.count("-----BEGIN CERTIFICATE-----")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "charts").mkdir()
    return tmp_path


def test_an_install_gets_one_new_ca(work):
    tls = generated_tls(work / "charts", {}, {})
    assert certificates(tls["ca"]) == 1
    assert verifies(tls["ca"], tls["crt"], work)


def test_an_upgrade_keeps_the_secret_as_it_is(work):
    first = generated_tls(work / "charts", {}, {})
    secret = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in
                       (("ca.crt", first["ca"]), ("tls.crt", first["crt"]), ("tls.key", first["key"]))}}
    again = generated_tls(work / "charts", secret, live_configuration(first["ca"]))
    assert again == first


def test_a_rotation_keeps_trusting_the_certificate_replicas_still_serve(work):
    """Rotation (the Secret deleted, then an upgrade): replicas serve the
    old certificate until the kubelet updates the mounted Secret and they
    re-read it. The new caBundle must accept both, or the API server
    refuses every opted-in pod for that minute."""
    old = generated_tls(work / "charts", {}, {})
    new = generated_tls(work / "charts", {}, live_configuration(old["ca"]))
    assert new["crt"] != old["crt"]
    assert verifies(new["ca"], new["crt"], work)
    assert verifies(new["ca"], old["crt"], work), "the rotated caBundle no longer trusts the certificate still being served"
    assert certificates(new["ca"]) == 2


def test_rotations_keep_one_previous_ca_at_most(work):
    first = generated_tls(work / "charts", {}, {})
    second = generated_tls(work / "charts", {}, live_configuration(first["ca"]))
    third = generated_tls(work / "charts", {}, live_configuration(second["ca"]))
    assert certificates(third["ca"]) == 2
    assert verifies(third["ca"], second["crt"], work)
    assert not verifies(third["ca"], first["crt"], work)


def test_a_secret_missing_a_key_is_replaced_not_half_kept(work):
    first = generated_tls(work / "charts", {}, {})
    partial = {"data": {"ca.crt": base64.b64encode(first["ca"].encode()).decode()}}
    tls = generated_tls(work / "charts", partial, {})
    assert tls["crt"] != first["crt"]
    assert verifies(tls["ca"], tls["crt"], work)


def pod_template(values: dict) -> dict:
    dep = next(o for o in chart.render(values) if o["kind"] == "Deployment")
    return dep["spec"]["template"]


@pytest.mark.parametrize("values", [
    {"webhook": {"replicas": 3}},
    {"webhook": {"podDisruptionBudget": {"minAvailable": "50%"}}},
    {"webhook": {"failurePolicy": "Ignore"}},
    {"webhook": {"timeoutSeconds": 5}},
    {"webhook": {"service": {"annotations": {"team": "ai"}}}},
    {"webhook": {"excludeNamespaces": ["kube-system", "batch"]}},
], ids=lambda v: json.dumps(v))
def test_an_upgrade_that_changes_nothing_the_webhook_reads_restarts_nothing(values):
    # A checksum of every webhook.* value in the pod template rolled every
    # replica (each relisting namespaces and ServiceAccounts before it is
    # ready) when the webhook was merely scaled.
    assert pod_template(values) == pod_template({})


@pytest.mark.parametrize("values", [
    {"sidecar": {"region": "eu-west-1"}},
    {"webhook": {"lookupTimeout": "4s"}},
    {"image": {"tag": "0.2.0"}},
], ids=lambda v: json.dumps(v))
def test_an_upgrade_that_changes_what_the_webhook_reads_rolls_it(values):
    assert pod_template(values) != pod_template({})
