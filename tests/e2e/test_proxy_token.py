"""A proxy token set up by the injector: `inject` wires a Secret key into the
sidecar and the app, the kubelet's part (resolving secretKeyRef) is done
here, and the unchanged OpenAI SDK, given only the app's environment, gets
through while a request without the token is refused."""

from __future__ import annotations

import json
import secrets
import subprocess

import openai
import pytest
import requests
import yaml

from conftest import BINARY
from test_popular_clients import CLIENTS, free_port

SECRET = "chat-proxy-token"
KEY = "token"


def injected_with_token(port: int, token: str) -> tuple[dict[str, str], dict[str, str]]:
    """(app env, sidecar env) of the client pod injected with a proxy token,
    Secret references resolved to `token` as the kubelet would."""
    docs = list(yaml.safe_load_all((CLIENTS / "pod.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Pod")
    pod["metadata"]["annotations"]["bedrock-broker.io/port"] = str(port)
    pod["metadata"]["annotations"]["bedrock-broker.io/proxy-token-secret"] = f"{SECRET}/{KEY}"
    out = subprocess.run([str(BINARY), "inject"], input=yaml.safe_dump_all(docs), capture_output=True, text=True,
                         timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert token not in out.stdout
    spec = next(d for d in yaml.safe_load_all(out.stdout) if d["kind"] == "Pod")["spec"]

    def resolved(container: dict) -> dict[str, str]:
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif ref := e.get("valueFrom", {}).get("secretKeyRef"):
                assert (ref["name"], ref["key"]) == (SECRET, KEY), e
                env[e["name"]] = token
        return env

    app = next(c for c in spec["containers"] if c["name"] == "app")
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "bedrock-broker")
    return resolved(app), resolved(sidecar)


@pytest.fixture
def token_pod(start_sidecar, irsa_env):
    token = secrets.token_hex(32)
    app, sidecar_env = injected_with_token(free_port(), token)
    assert sidecar_env["BEDROCK_BROKER_PROXY_TOKEN"] == token
    sidecar = start_sidecar({**irsa_env, "BEDROCK_BROKER_PROXY_TOKEN": token},
                            listen=sidecar_env["BEDROCK_BROKER_LISTEN"])
    return app, sidecar, token


def test_the_openai_sdk_passes_with_the_injected_token_only(token_pod):
    app, _, token = token_pod
    assert app["OPENAI_API_KEY"] == token
    assert app["BEDROCK_BROKER_PROXY_TOKEN"] == token
    # Exactly what the SDK reads from the app's environment, nothing else.
    client = openai.OpenAI(base_url=app["OPENAI_BASE_URL"], api_key=app["OPENAI_API_KEY"], max_retries=0)
    r = client.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content


def test_requests_without_the_token_are_refused(token_pod, fake_aws):
    app, sidecar, token = token_pod
    before = len(fake_aws.requests())
    placeholder = openai.OpenAI(base_url=app["OPENAI_BASE_URL"], api_key="bedrock-broker-placeholder", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        placeholder.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "proxy_token_required"
    # A hand-made client sends the header instead; no token at all is refused.
    url = app["BEDROCK_BROKER_URL"] + "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert requests.post(url, json=body, timeout=30).status_code == 401
    # A wrong token in the broker's own header is said to be wrong, and
    # not quoted back.
    wrong = requests.post(url, json=body, headers={"x-bedrock-broker-token": "not-" + token[:8]}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers["x-bedrock-broker-error"] == "proxy_token_required"
    assert "does not match" in wrong.json()["message"] and token[:8] not in wrong.text, wrong.text
    ok = requests.post(url, json=body, headers={"x-bedrock-broker-token": app["BEDROCK_BROKER_PROXY_TOKEN"]}, timeout=30)
    assert ok.status_code == 200, ok.text
    # Only the accepted request reached Bedrock: SigV4-signed (verified by
    # botocore), with neither the token's header nor a bearer token.
    seen = fake_aws.requests()[before:]
    assert len(seen) == 1
    assert seen[0]["auth_kind"] == "sigv4" and seen[0]["verified"], seen[0]
    assert "x-bedrock-broker-token" not in seen[0]["header_names"]
    assert seen[0]["bearer_token"] is None
    assert token not in seen[0]["canonical_request"]


def test_a_proxy_token_shaped_like_an_api_key_never_reaches_bedrock(start_sidecar, irsa_env, fake_aws):
    # The token may be any 16 printable characters, so it may look like a
    # long-term Bedrock API key; sent as a bearer it is the broker's, never
    # a client key to pass on.
    token = "ABSK" + secrets.token_hex(16)
    sidecar = start_sidecar({**irsa_env, "BEDROCK_BROKER_PROXY_TOKEN": token})
    url = sidecar.url("/model/anthropic.claude-3-haiku-20240307-v1:0/converse")
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    for headers in ({"authorization": f"Bearer {token}"},
                    {"authorization": f"Bearer {token}", "x-bedrock-broker-token": token}):
        before = len(fake_aws.requests())
        r = requests.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        (seen,) = fake_aws.requests()[before:]
        assert seen["auth_kind"] == "sigv4" and seen["verified"], seen
        assert seen["bearer_token"] is None
        assert token not in seen["canonical_request"]


def test_a_proxy_token_on_the_command_line_is_warned_about_and_still_works(start_sidecar, irsa_env, tmp_path):
    # A command line is readable by anything that can list processes; the
    # token still works there (a local run), but the log says where to put it.
    # One token in 64 starts with "-": given as its own argument it would
    # read as a flag, as with any command; the "=" form takes it whole.
    token = "-" + secrets.token_urlsafe(24)
    sidecar = start_sidecar(irsa_env, args=[f"--proxy-token={token}"])
    log = sidecar.log_text()
    assert token not in log
    warned = [json.loads(line) for line in log.splitlines() if "--proxy-token" in line]
    assert len(warned) == 1, log
    assert warned[0]["level"] == "WARN", warned
    assert "given on the command line" in warned[0]["message"], warned
    assert "--proxy-token @FILE" in warned[0]["message"] and "BEDROCK_BROKER_PROXY_TOKEN" in warned[0]["message"]
    url = sidecar.url("/model/anthropic.claude-3-haiku-20240307-v1:0/converse")
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert requests.post(url, json=body, timeout=30).status_code == 401
    assert requests.post(url, json=body, headers={"x-bedrock-broker-token": token}, timeout=30).status_code == 200

    # From a file named on the command line, nothing to warn about.
    path = tmp_path / "proxy-token"
    path.write_text(token)
    quiet = start_sidecar(irsa_env, args=["--proxy-token", f"@{path}"])
    assert "--proxy-token" not in quiet.log_text(), quiet.log_text()
    assert requests.post(quiet.url("/model/anthropic.claude-3-haiku-20240307-v1:0/converse"), json=body,
                         headers={"x-bedrock-broker-token": token}, timeout=30).status_code == 200
