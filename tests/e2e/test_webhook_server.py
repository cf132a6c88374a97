"""``bedrock-broker webhook``: the real binary over real TLS on loopback.

The webhook reads namespaces and ServiceAccounts through kube's client from
a small fake Kubernetes API server (list, watch and get, as the API server
answers them), pointed at with an ordinary kubeconfig. Every fixture review
is POSTed; each answer must echo the uid and, patched onto the original pod,
give the golden pod, which must validate against the Kubernetes schema.
Certificates come from trustme and are rotated on disk while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from conftest import BINARY, wait_for
from test_webhook_support import (
    LIMIT_RANGES,
    NAMESPACES,
    SERVICE_ACCOUNTS,
    apply_patch,
    decode_patch,
    fixture_names,
    load_expected,
    load_fixture,
    validate,
)


def _meta(name: str, namespace: str | None = None, annotations=None, labels=None) -> dict:
    m = {"name": name, "uid": f"uid-{namespace}-{name}", "resourceVersion": "5", "annotations": annotations or {}, "labels": labels or {}}
    if namespace:
        m["namespace"] = namespace
    return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m}


class FakeApiServer:
    """Answers the reads the webhook makes: list/watch/get of namespaces and
    ServiceAccounts (metadata), list/watch of LimitRanges."""

    def __init__(self, version: str | None = None):
        #: ``/version``'s minor for major 1 (``"28+"`` as EKS writes it); None answers 404.
        self.version = version
        self.namespaces = {n: _meta(n, labels=labels) for n, labels in NAMESPACES.items()}
        self.service_accounts = {(ns, n): _meta(n, ns, annotations=a) for (ns, n), a in SERVICE_ACCOUNTS.items()}
        self.stopping = threading.Event()
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str):
                self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": f"{what} not found"})

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                parts = [p for p in url.path.split("/") if p]
                fake.requests.append(self.path)
                watching = query.get("watch", [""])[0] in ("true", "1")
                if parts == ["version"] and fake.version is not None:
                    return self._json(200, {"major": "1", "minor": fake.version, "gitVersion": f"v1.{fake.version.rstrip('+')}.9-eks-1"})
                if parts in (["api", "v1", "limitranges"], ["api", "v1", "namespaces", parts[-2] if len(parts) == 5 else "", "limitranges"]):
                    if watching:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.end_headers()
                        self.wfile.flush()
                        fake.stopping.wait(float(query.get("timeoutSeconds", ["290"])[0]))
                        return
                    items = [dict(lr, metadata=dict(lr["metadata"], resourceVersion="5", uid="uid-lr")) for lr in LIMIT_RANGES
                             if len(parts) == 3 or lr["metadata"]["namespace"] == parts[3]]
                    return self._json(200, {"apiVersion": "v1", "kind": "LimitRangeList", "metadata": {"resourceVersion": "10"}, "items": items})
                if parts in (["api", "v1", "serviceaccounts"], ["api", "v1", "namespaces"]):
                    if watching:
                        # An open watch with no events, closed at its timeout or at shutdown.
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.end_headers()
                        self.wfile.flush()
                        timeout = float(query.get("timeoutSeconds", ["290"])[0])
                        fake.stopping.wait(timeout)
                        return
                    items = list((fake.service_accounts if parts[-1] == "serviceaccounts" else fake.namespaces).values())
                    return self._json(200, {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "10"}, "items": items})
                if len(parts) == 4 and parts[:3] == ["api", "v1", "namespaces"]:
                    found = fake.namespaces.get(parts[3])
                    return self._json(200, found) if found else self._not_found(parts[3])
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "serviceaccounts":
                    found = fake.service_accounts.get((parts[3], parts[5]))
                    return self._json(200, found) if found else self._not_found(parts[5])
                self._not_found(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def _write_tls(ca, directory: Path) -> None:
    """Publishes a certificate for 127.0.0.1 the way the kubelet updates a Secret volume (rename)."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain = b"".join(p.bytes() for p in cert.cert_chain_pems)
    for name, data in (("tls.key", cert.private_key_pem.bytes()), ("tls.crt", chain)):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)


def _served_certificate(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


class Webhook:
    def __init__(self, proc, log_path: Path, listen: str, admin: str, ca_path: Path):
        self.proc, self.log_path, self.ca_path = proc, log_path, ca_path
        self.url = f"https://{listen}"
        self.port = int(listen.rsplit(":", 1)[1])
        self.admin = f"http://{admin}"

    def review(self, body) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(f"{self.url}/mutate", data=data, headers={"Content-Type": "application/json"}, verify=str(self.ca_path), timeout=10)

    def metric(self, name: str, labels: dict) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"{self.admin}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None


@pytest.fixture
def fake_api():
    api = FakeApiServer()
    yield api
    api.stop()


@pytest.fixture
def webhook(tmp_path, fake_api):
    with running_webhook(tmp_path, fake_api) as hook:
        yield hook


@contextlib.contextmanager
def running_webhook(tmp_path, fake_api, extra_env: dict | None = None):
    import trustme

    assert BINARY.exists(), f"{BINARY} missing: run cargo build first"
    ca = trustme.CA()
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    _write_tls(ca, tls_dir)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake_api.url}}],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    log_path = tmp_path / "webhook.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBECONFIG": str(kubeconfig),
        "RUST_LOG": "info",
        "BEDROCK_BROKER_LOG_FORMAT": "json",
        "BEDROCK_BROKER_WEBHOOK_LISTEN": "127.0.0.1:0",
        "BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN": "127.0.0.1:0",
        "BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE": str(tls_dir / "tls.crt"),
        "BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE": str(tls_dir / "tls.key"),
        "BEDROCK_BROKER_WEBHOOK_TLS_RELOAD_INTERVAL": "1s",  # the least allowed
        "BEDROCK_BROKER_SIDECAR_REGION": "us-east-1",
        # As the chart installs it (the binary's default is `any`).
        "BEDROCK_BROKER_WEBHOOK_ROLE_POLICY": "service-account",
        **(extra_env or {}),
    }
    proc = subprocess.Popen([str(BINARY), "webhook"], env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))

    def serving():
        if proc.poll() is not None:
            raise AssertionError(f"webhook exited with {proc.returncode}:\n{log_path.read_text()}")
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("message") == "webhook serving":
                return obj
        return None

    line = wait_for(serving, timeout=20, what="webhook to serve")
    hook = Webhook(proc, log_path, line["listen"], line["admin"], ca_path)
    hook.ca, hook.tls_dir, hook.fake = ca, tls_dir, fake_api
    wait_for(lambda: requests.get(f"{hook.admin}/readyz", timeout=5).status_code == 200, timeout=20, what="webhook readiness (caches synced)")
    try:
        yield hook
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_native_sidecars_are_refused_by_a_server_older_than_1_29(tmp_path):
    """The webhook reads the server's version once at start: on 1.28 a native
    sidecar would be an init container that never ends, so such pods are
    refused with what to do; classic mode is still injected."""
    api = FakeApiServer(version="28+")
    try:
        with running_webhook(tmp_path, api) as hook:
            plain = load_fixture("plain")
            answer = hook.review(plain).json()["response"]
            assert answer["allowed"] is False
            assert "native sidecars need Kubernetes 1.29 or later, and this API server is v1.28" in answer["status"]["message"]
            classic = load_fixture("classic-mode")
            answer = hook.review(classic).json()["response"]
            assert answer["allowed"] is True and answer.get("patch")
            assert "has no native sidecars" in hook.log_path.read_text()
    finally:
        api.stop()


def test_every_fixture_over_tls_matches_the_golden_answer(webhook):
    for name in fixture_names():
        review = load_fixture(name)
        expected = load_expected(name)
        r = webhook.review(review)
        assert r.status_code == 200, (name, r.text)
        answer = r.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        response = answer["response"]
        assert response["uid"] == review["request"]["uid"], name
        assert response["allowed"] == expected["allowed"], (name, response)
        if not expected["allowed"]:
            assert response["status"]["message"] == expected["message"], name
            continue
        ops = decode_patch(response)
        assert ops == expected["patch"], name
        if ops is None:
            continue
        assert response["patchType"] == "JSONPatch"
        pod = apply_patch(review["request"]["object"], ops)
        assert pod == expected["pod"], name
        validate(pod)
    # Namespaces, ServiceAccounts and LimitRanges came from the watch caches, not
    # per-request reads (the ones no cache can hold are the ServiceAccounts that
    # do not exist); the server's version was read once, at start.
    direct = [p for p in webhook.fake.requests if not urlparse(p).query]
    assert direct.count("/version") == 1, direct
    direct.remove("/version")
    assert direct and all("/serviceaccounts/" in p for p in direct), direct
    assert webhook.metric("bedrock_broker_webhook_admissions_total", {"result": "injected"}) >= 12
    assert webhook.metric("bedrock_broker_webhook_admissions_total", {"result": "denied"}) >= 5
    # Every review answered, its room is back; the limits are the defaults.
    for budget, limit in [("review_text", 32 * 2**20), ("parsed_reviews", 4 * 32 * 2**20)]:
        labels = {"budget": budget}
        assert webhook.metric("bedrock_broker_webhook_memory_budget_limit_bytes", labels) == limit
        wait_for(lambda: webhook.metric("bedrock_broker_webhook_memory_budget_used_bytes", labels) == 0,
                 timeout=10, what=f"{budget} back to 0")


def test_reinvocation_changes_nothing(webhook):
    review = load_fixture("plain")
    first = webhook.review(review).json()["response"]
    pod = apply_patch(review["request"]["object"], decode_patch(first))
    review["request"]["object"] = pod
    again = webhook.review(review).json()["response"]
    assert again["allowed"] is True
    assert decode_patch(again) is None


def test_unparseable_reviews_answer_invalid(webhook):
    r = webhook.review(b"this is not json")
    assert r.status_code == 400
    assert r.json()["response"]["allowed"] is False
    r = webhook.review({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u-1", "kind": 7}})
    assert r.status_code == 200
    assert r.json()["response"]["uid"] == "u-1"
    assert r.json()["response"]["allowed"] is False
    assert webhook.metric("bedrock_broker_webhook_admissions_total", {"result": "invalid"}) == 2


def test_rotated_certificate_is_served_without_restart(webhook):
    before = _served_certificate(webhook.port)
    _write_tls(webhook.ca, webhook.tls_dir)
    wait_for(lambda: _served_certificate(webhook.port) != before, timeout=10, what="the rotated certificate")
    assert webhook.review(load_fixture("plain")).status_code == 200
    assert webhook.metric("bedrock_broker_webhook_tls_reloads_total", {"result": "success"}) >= 1
    assert webhook.proc.poll() is None


def test_a_broken_certificate_pair_counts_failures_for_as_long_as_it_stays(webhook):
    # Counted once, the failure left the alert's window after ten minutes
    # while the pair was still broken and the old certificate aged.
    before = _served_certificate(webhook.port)
    other = webhook.ca.issue_cert("127.0.0.1", "localhost")
    (webhook.tls_dir / ".tls.key.tmp").write_bytes(other.private_key_pem.bytes())
    os.replace(webhook.tls_dir / ".tls.key.tmp", webhook.tls_dir / "tls.key")
    failures = lambda: webhook.metric("bedrock_broker_webhook_tls_reloads_total", {"result": "failure"})
    wait_for(lambda: failures() >= 3, timeout=10, what="a failure counted on every poll")
    assert _served_certificate(webhook.port) == before
    assert webhook.review(load_fixture("plain")).status_code == 200
    logged = [line for line in webhook.log_path.read_text().splitlines() if "serving certificate not reloaded" in line]
    assert len(logged) == 1, "logged once"

    _write_tls(webhook.ca, webhook.tls_dir)
    wait_for(lambda: _served_certificate(webhook.port) != before, timeout=10, what="the mended pair")
    assert webhook.metric("bedrock_broker_webhook_tls_reloads_total", {"result": "success"}) >= 1


def test_failed_cluster_reads_are_counted_from_zero(webhook):
    # A series born at its first failure is missed by increase(): the
    # lookup alert stayed silent for a webhook's first failed read.
    for obj in ("namespace", "service_account", "limit_range"):
        assert webhook.metric("bedrock_broker_webhook_lookups_total", {"object": obj, "source": "error"}) == 0, obj
    webhook.fake.stop()
    review = load_fixture("plain")
    review["request"]["object"].setdefault("spec", {})["serviceAccountName"] = "not-cached"
    answer = webhook.review(review).json()["response"]
    assert answer["allowed"] is False, answer
    assert webhook.metric("bedrock_broker_webhook_lookups_total", {"object": "service_account", "source": "error"}) == 1


def _injected_ca_bundle(webhook) -> str | None:
    r = webhook.review(load_fixture("plain"))
    assert r.status_code == 200, r.text
    pod = apply_patch(load_fixture("plain")["request"]["object"], decode_patch(r.json()["response"]))
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "bedrock-broker")
    return next((e["value"] for e in sidecar["env"] if e["name"] == "BEDROCK_BROKER_CA_BUNDLE_PEM"), None)


def test_an_updated_sidecar_trust_bundle_reaches_new_pods_without_restart(tmp_path, fake_api):
    import trustme

    bundle = tmp_path / "ca-bundle" / "ca.crt"
    bundle.parent.mkdir()
    first, second = trustme.CA().cert_pem.bytes().decode(), trustme.CA().cert_pem.bytes().decode()

    def publish(text: str) -> None:  # as the kubelet updates a ConfigMap volume
        tmp = bundle.parent / ".ca.crt.tmp"
        tmp.write_text(text)
        os.replace(tmp, bundle)

    publish(first)
    with running_webhook(tmp_path, fake_api, {"BEDROCK_BROKER_SIDECAR_CA_BUNDLE": str(bundle)}) as webhook:
        assert _injected_ca_bundle(webhook) == first
        publish(second)
        wait_for(lambda: _injected_ca_bundle(webhook) == second, timeout=10, what="the updated bundle in new pods")
        assert webhook.metric("bedrock_broker_webhook_ca_bundle_reloads_total", {"result": "success"}) == 1
        # A broken update is reported, naming the file, and keeps the bundle
        # in use (that it is reported once is tested in ca_bundle.rs).
        publish("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        wait_for(lambda: webhook.metric("bedrock_broker_webhook_ca_bundle_reloads_total", {"result": "failure"}) == 1,
                 timeout=10, what="the failed reload")
        assert _injected_ca_bundle(webhook) == second
        published = wait_for(lambda: [l for l in webhook.log_path.read_text().splitlines() if "trust bundle not reloaded" in l],
                             timeout=5, what="the warning")
        assert str(bundle) in published[0], published
        assert webhook.proc.poll() is None


def test_health_and_graceful_stop(webhook):
    assert requests.get(f"{webhook.admin}/healthz", timeout=5).status_code == 200
    webhook.proc.send_signal(signal.SIGTERM)
    assert webhook.proc.wait(timeout=20) == 0


def test_reviews_are_still_answered_while_the_pod_leaves_its_endpoints(tmp_path, fake_api):
    """Kubernetes removes a terminating pod from its Service's endpoints
    while it sends SIGTERM, so the API server may still connect for a few
    seconds: a webhook that stopped accepting at once refused those reviews
    (and, with failurePolicy Fail, their pods) on every rollout."""
    review = load_fixture("plain")
    with running_webhook(tmp_path, fake_api, {"BEDROCK_BROKER_WEBHOOK_SHUTDOWN_DELAY": "3s"}) as hook:
        hook.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in hook.log_path.read_text(), timeout=5, what="the signal taken")
        # A new connection, as the API server opens one per review.
        answer = hook.review(review)
        assert answer.status_code == 200
        assert answer.json()["response"]["allowed"] is True
        assert hook.proc.poll() is None
        # A second signal means now, delay or not.
        hook.proc.send_signal(signal.SIGTERM)
        assert hook.proc.wait(timeout=20) == 143


@pytest.mark.parametrize("rust_log", ["info", "off"])
@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "key-as-cert"])
def test_unusable_tls_files_are_bad_configuration_naming_the_settings(tmp_path, problem, rust_log):
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1")
    key_path = tmp_path / "tls.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path = {"missing": tmp_path / "nope.crt", "directory": tmp_path, "empty": tmp_path / "empty.crt",
                 "key-as-cert": key_path}[problem]
    if problem == "empty":
        cert_path.write_text("")
    result = subprocess.run(
        [str(BINARY), "webhook"],
        env={"PATH": "/usr/bin:/bin", "BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE": str(cert_path),
             "BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE": str(key_path), "BEDROCK_BROKER_SIDECAR_REGION": "us-east-1",
             "BEDROCK_BROKER_WEBHOOK_LISTEN": "127.0.0.1:0", "BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN": "127.0.0.1:0",
             "RUST_LOG": rust_log},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr and "BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE" in result.stderr, result.stderr


def test_bad_configuration_exits_2_naming_the_variable(tmp_path):
    result = subprocess.run(
        [str(BINARY), "webhook"],
        env={"PATH": "/usr/bin:/bin", "BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR": "maybe", "BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION": "10"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR" in result.stderr
    assert "BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION" in result.stderr
