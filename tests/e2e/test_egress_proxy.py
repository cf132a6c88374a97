"""STS and Bedrock through a forward proxy (``HTTPS_PROXY``).

As in a cluster whose egress to AWS must pass one.

The sidecar is given no endpoint overrides: it asks for AWS's own host
names, and the proxy here (a CONNECT proxy, as Squid is) resolves them to
the fakes, whose certificate names those hosts. So the request that
reaches the fake Bedrock went the way it would in production, and botocore
verifies its signature there.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from conftest import BINARY, REGION, ROLE_ARN, _start_fake, _stop, make_jwt
from test_auth_modes import post

STS_HOST = f"sts.{REGION}.amazonaws.com"
BEDROCK_HOST = f"bedrock-runtime.{REGION}.amazonaws.com"
# AWS_USE_DUALSTACK_ENDPOINT's hosts (IPv4 and IPv6).
STS_DUALSTACK_HOST = f"sts.{REGION}.api.aws"
BEDROCK_DUALSTACK_HOST = f"bedrock-runtime.{REGION}.api.aws"


class ConnectProxy:
    """A CONNECT proxy on loopback: records each CONNECT (target and
    Proxy-Authorization), tunnels the hosts it knows, refuses the rest with
    403 as an allow-listing proxy does."""

    def __init__(self, routes: dict[str, tuple[str, int]]):
        self.routes = routes
        self.connects: list[tuple[str, str | None]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                byte = client.recv(1)
                if not byte:
                    return
                head += byte
            lines = head.decode().split("\r\n")
            method, target, _ = lines[0].split(" ")
            auth = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("proxy-authorization:")), None)
            self.connects.append((target, auth))
            if method != "CONNECT" or target not in self.routes:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                return
            with socket.create_connection(self.routes[target]) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                relay = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                relay.start()
                _pipe(client, upstream)
                relay.join(timeout=30)

    def close(self) -> None:
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture(scope="module")
def aws_named_tls(tmp_path_factory):
    """A CA and a certificate for AWS's STS and Bedrock host names."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(STS_HOST, BEDROCK_HOST, STS_DUALSTACK_HOST, BEDROCK_DUALSTACK_HOST)
    d = tmp_path_factory.mktemp("aws-named-tls")
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(paths["cert"]), append=True)
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


@pytest.fixture(scope="module")
def fake_aws_named(tmp_path_factory, aws_named_tls):
    fake = _start_fake(
        tmp_path_factory.mktemp("fake-named"),
        ["--tls-cert", str(aws_named_tls["cert"]), "--tls-key", str(aws_named_tls["key"])],
    )
    yield fake
    _stop(fake.proc)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


@pytest.fixture
def egress(fake_aws_named):
    fake_aws_named.post("/reset")
    sts, bedrock = ("127.0.0.1", _port(fake_aws_named.sts_tls)), ("127.0.0.1", _port(fake_aws_named.bedrock))
    proxy = ConnectProxy({
        f"{STS_HOST}:443": sts,
        f"{BEDROCK_HOST}:443": bedrock,
        f"{STS_DUALSTACK_HOST}:443": sts,
        f"{BEDROCK_DUALSTACK_HOST}:443": bedrock,
    })
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_env(egress, aws_named_tls, token_dir) -> dict[str, str]:
    token_dir.write(make_jwt())
    return {
        "AWS_REGION": REGION,
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_dir.path),
        "AWS_ROLE_SESSION_NAME": "egress-session",
        "AWS_CA_BUNDLE": str(aws_named_tls["ca"]),
        "HTTPS_PROXY": f"http://svc:s3cret@127.0.0.1:{egress.port}",
    }


BASIC = "Basic " + base64.b64encode(b"svc:s3cret").decode()


def run(command: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``bedrock-broker COMMAND ARGS`` with exactly ``env``, to its end."""
    return subprocess.run(
        [str(BINARY), command, *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sts_and_bedrock_are_reached_through_the_proxy(start_sidecar, proxied_env, egress, fake_aws_named):
    sidecar = start_sidecar(proxied_env)  # ready: STS answered through the proxy
    tid, r = post(sidecar, {})
    assert r.status_code == 200, r.text
    record = fake_aws_named.request_for(tid)
    assert record["verified"], record
    assert [c["action"] for c in fake_aws_named.sts_calls()] == ["AssumeRoleWithWebIdentity"]
    assert sorted(egress.connects) == [(f"{BEDROCK_HOST}:443", BASIC), (f"{STS_HOST}:443", BASIC)]
    line = sidecar.listening_line()
    assert line["egress_proxy"] == f"127.0.0.1:{egress.port}"
    assert line["sts_endpoint"] == f"https://{STS_HOST}"
    # The proxy's password is the pod's secret too.
    assert "s3cret" not in sidecar.log_text()


def test_dualstack_endpoints_serve_sts_as_well_as_bedrock(start_sidecar, proxied_env, egress, fake_aws_named):
    # As the AWS SDKs do: an IPv6-only pod reaches STS only at its
    # dual-stack host (sts.REGION.amazonaws.com has no IPv6 address).
    sidecar = start_sidecar(dict(proxied_env, AWS_USE_DUALSTACK_ENDPOINT="true"))
    tid, r = post(sidecar, {})
    assert r.status_code == 200, r.text
    assert fake_aws_named.request_for(tid)["verified"]
    assert {target for target, _ in egress.connects} == {f"{STS_DUALSTACK_HOST}:443", f"{BEDROCK_DUALSTACK_HOST}:443"}
    # Named where an operator looks first, as the SDK resolved it.
    assert sidecar.listening_line()["sts_endpoint"] == f"https://{STS_DUALSTACK_HOST}"
    # `credentials` asks the same STS host as the sidecar, and says so.
    egress.connects.clear()
    out = run("credentials", dict(proxied_env, AWS_USE_DUALSTACK_ENDPOINT="true"))
    assert out.returncode == 0, out.stderr
    assert f"sts:      https://{STS_DUALSTACK_HOST}\n" in out.stdout, out.stdout
    assert {target for target, _ in egress.connects} == {f"{STS_DUALSTACK_HOST}:443"}


def test_trust_anchors_given_as_text_serve_sts_and_bedrock(start_sidecar, proxied_env, egress, fake_aws_named, aws_named_tls):
    # As the webhook injects them (--sidecar-ca-bundle): a TLS-inspecting
    # proxy's CA in BEDROCK_BROKER_CA_BUNDLE_PEM, no file in the pod.
    env = dict(proxied_env, BEDROCK_BROKER_CA_BUNDLE_PEM=aws_named_tls["ca"].read_text())
    del env["AWS_CA_BUNDLE"]
    sidecar = start_sidecar(env)
    tid, r = post(sidecar, {})
    assert r.status_code == 200, r.text
    assert fake_aws_named.request_for(tid)["verified"]
    assert {target for target, _ in egress.connects} == {f"{STS_HOST}:443", f"{BEDROCK_HOST}:443"}


def test_a_proxy_refusing_bedrock_is_named_in_the_answer(start_sidecar, proxied_env, egress):
    del egress.routes[f"{BEDROCK_HOST}:443"]
    sidecar = start_sidecar(proxied_env)
    _, r = post(sidecar, {})
    assert r.status_code == 502, r.text
    assert r.headers["x-bedrock-broker-error"] == "upstream_unreachable"
    message = r.json()["message"]
    assert f"egress proxy 127.0.0.1:{egress.port} refused a tunnel to {BEDROCK_HOST}:443" in message, r.text


def test_no_proxy_sends_a_host_direct(start_sidecar, proxied_env, egress):
    # Bedrock listed in NO_PROXY is resolved by the sidecar itself: in this
    # sandbox, as in a cluster without DNS for AWS, that fails, and the
    # proxy never hears of it.
    sidecar = start_sidecar(dict(proxied_env, NO_PROXY=f".amazonaws.com.invalid,{BEDROCK_HOST}"))
    _, r = post(sidecar, {})
    assert r.status_code == 502, r.text
    assert [target for target, _ in egress.connects] == [f"{STS_HOST}:443"]


def test_the_credentials_command_goes_through_the_proxy(proxied_env, egress):
    out = run("credentials", proxied_env)
    assert out.returncode == 0, out.stderr
    assert "ok: credentials work" in out.stdout
    assert f"egress:   through the proxy 127.0.0.1:{egress.port} (HTTPS_PROXY)" in out.stdout, out.stdout
    assert "s3cret" not in out.stdout + out.stderr
    assert {target for target, _ in egress.connects} == {f"{STS_HOST}:443"}
    # Named where it was found: the lower-case variable, or the flag.
    lower = {k: v for k, v in proxied_env.items() if k != "HTTPS_PROXY"}
    lower["https_proxy"] = proxied_env["HTTPS_PROXY"]
    out = run("credentials", lower)
    assert f"through the proxy 127.0.0.1:{egress.port} (https_proxy)" in out.stdout, out.stdout
    out = run("credentials", lower, "--https-proxy", proxied_env["HTTPS_PROXY"])
    assert f"through the proxy 127.0.0.1:{egress.port} (--https-proxy)" in out.stdout, out.stdout


def test_a_proxy_refusing_sts_is_pointed_at(proxied_env, egress):
    del egress.routes[f"{STS_HOST}:443"]
    out = run("credentials", proxied_env)
    assert out.returncode == 1, out.stderr
    assert "tunnel error: unsuccessful" in out.stderr, out.stderr
    assert "the egress proxy (HTTPS_PROXY, https_proxy or --https-proxy) did not open a tunnel to STS" in out.stderr, out.stderr


def test_an_unsupported_proxy_url_stops_the_start_naming_the_variable(proxied_env):
    env = dict(proxied_env, HTTPS_PROXY="https://svc:s3cret@proxy.corp:3128")
    out = run("sidecar", env)
    assert out.returncode == 2, out.stderr
    assert "origin=HTTPS_PROXY problem=https:// proxies are not supported" in out.stderr, out.stderr
    assert "s3cret" not in out.stderr


INJECTED_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: chat
  namespace: my-app
  labels: {bedrock-broker.io/inject: "true"}
  annotations:
    bedrock-broker.io/role-arn: %s
    bedrock-broker.io/region: %s
    bedrock-broker.io/https-proxy-secret: corp-proxy/url
spec:
  containers:
  - {name: app, image: app:1}
"""


def test_an_injected_sidecar_takes_its_proxy_url_with_credentials_from_a_secret(start_sidecar, proxied_env, egress, fake_aws_named):
    # `inject` renders the pod as the webhook would; the kubelet's part
    # (Secret and downward API values, the token's path) is done here.
    out = subprocess.run([str(BINARY), "inject"], input=INJECTED_POD % (ROLE_ARN, REGION),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pod = next(d for d in yaml.safe_load_all(out.stdout) if d)
    sidecar_spec = next(c for c in pod["spec"]["initContainers"] if c["name"] == "bedrock-broker")
    proxies = [e for e in sidecar_spec["env"] if e["name"] == "HTTPS_PROXY"]
    assert proxies == [{"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "corp-proxy", "key": "url", "optional": False}}}]
    assert "s3cret" not in out.stdout
    assert all(e["name"] != "HTTPS_PROXY" for c in pod["spec"]["containers"] for e in c.get("env", []))
    secrets = {("corp-proxy", "url"): proxied_env["HTTPS_PROXY"]}
    fields = {"metadata.namespace": "my-app", "metadata.name": "chat"}
    env = {}
    for e in sidecar_spec["env"]:
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
        elif "fieldRef" in source:
            env[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = e["value"]
    env.update({k: proxied_env[k] for k in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE")})
    env["BEDROCK_BROKER_LOG_FORMAT"] = "json"
    sidecar = start_sidecar(env)
    tid, r = post(sidecar, {})
    assert r.status_code == 200, r.text
    assert fake_aws_named.request_for(tid)["verified"]
    assert sorted(egress.connects) == [(f"{BEDROCK_HOST}:443", BASIC), (f"{STS_HOST}:443", BASIC)]
    assert "s3cret" not in sidecar.log_text()
