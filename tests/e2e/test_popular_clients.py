"""Popular Bedrock clients, unmodified, in an injected pod (docs/clients.md).

Each client runs as its own process (``clients/*``) with exactly the
environment ``bedrock-broker inject`` writes into the app container of
``clients/pod.yaml`` (plus PATH and an empty HOME), against the real
sidecar and the fake Bedrock, which verifies every signature with botocore.
A client that ignored the injected variables would call
``bedrock-runtime.us-east-1.amazonaws.com`` and fail; one that used its own
credentials would have no valid signature. The snippet each script marks is
the one docs/clients.md shows, checked verbatim.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import BINARY, ROOT

CLIENTS = Path(__file__).resolve().parent / "clients"
DOC = ROOT / "docs" / "clients.md"
VENV_BIN = Path(sys.executable).parent
SNIPPET = re.compile(r"^(?P<indent>[ \t]*)(?:#|//) --- snippet(?:: [a-z]+)? ---\n(?P<body>.*?)^[ \t]*(?:#|//) --- end snippet ---", re.M | re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def injected(port: int) -> tuple[dict[str, str], dict[str, str]]:
    """(app env, sidecar env) from `bedrock-broker inject` on clients/pod.yaml."""
    docs = list(yaml.safe_load_all((CLIENTS / "pod.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Pod")
    pod["metadata"]["annotations"]["bedrock-broker.io/port"] = str(port)
    out = subprocess.run([str(BINARY), "inject"], input=yaml.safe_dump_all(docs), capture_output=True, text=True,
                         timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    spec = next(d for d in yaml.safe_load_all(out.stdout) if d["kind"] == "Pod")["spec"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "bedrock-broker")
    values = lambda c: {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}  # noqa: E731
    return values(app), values(sidecar)


@pytest.fixture(scope="module")
def pod_env():
    port = free_port()
    app, sidecar = injected(port)
    return {"port": port, "app": app, "listen": sidecar["BEDROCK_BROKER_LISTEN"]}


@pytest.fixture
def sidecar(start_sidecar, irsa_env, fake_aws, pod_env):
    # The fake serves the agents runtime's InvokeAgent on its one port.
    env = dict(irsa_env, AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME=fake_aws.bedrock)
    return start_sidecar(env, listen=pod_env["listen"])


def run_client(argv: list[str], env: dict[str, str], tmp_path: Path, timeout: float = 120, expect_ok: bool = True) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home), **env}
    proc = subprocess.run(argv, env=full, cwd=CLIENTS, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert not expect_ok or "crashed" not in result, f"{result['crashed']}\n{result.get('traceback')}\n{proc.stderr[-3000:]}"
    result["stdout"], result["stderr"], result["returncode"] = proc.stdout, proc.stderr, proc.returncode
    return result


def python_client(name: str):
    return [sys.executable, str(CLIENTS / f"{name}.py")]


def assert_through_sidecar(fake_aws, routes: set[str]) -> list[dict]:
    """Every request the fake saw was signed by the sidecar with STS-issued
    credentials (the clients have none), and the expected routes were hit."""
    seen = fake_aws.requests()
    assert seen, "no request reached Bedrock through the sidecar"
    issued = {c["access_key_id"] for c in fake_aws.get("/credentials") if c["kind"] == "sts"}
    for r in seen:
        assert r["auth_kind"] == "sigv4" and r["verified"] is True, r
        assert r["access_key_id"] in issued, r
    assert routes <= {r["route"] for r in seen}, [r["route"] for r in seen]
    return seen


def assert_reply(result: dict) -> None:
    assert "fake reply from" in (result.get("reply") or ""), result
    if "chunks" in result:
        assert len(result["chunks"]) >= 2 and "<chunk" in "".join(result["chunks"]), result["chunks"]
    assert result["denied"]["error"], result["denied"]
    assert result["denied_is_own_type"], result["denied"]


def test_the_injector_writes_what_each_client_reads(pod_env):
    env, base = pod_env["app"], f"http://127.0.0.1:{pod_env['port']}"
    assert env == {
        "BEDROCK_BROKER_URL": base,
        "OPENAI_BASE_URL": f"{base}/openai/v1",
        "OPENAI_API_KEY": "bedrock-broker-placeholder",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": base,
        "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME": f"{base}/agent-runtime",
        "AWS_BEDROCK_RUNTIME_ENDPOINT": base,
        "ANTHROPIC_BEDROCK_BASE_URL": base,
    }


def test_openai_sdk(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("openai_sdk"), pod_env["app"], tmp_path)
    assert_reply(result)
    seen = assert_through_sidecar(fake_aws, {"openai-chat"})
    # The injected placeholder key never reached Bedrock.
    assert all("bedrock-broker-placeholder" not in json.dumps(r) for r in seen)
    assert sidecar.metric("bedrock_broker_tokens_total", {"direction": "output"})


def test_anthropic_messages_api(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("anthropic_messages"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert_through_sidecar(fake_aws, {"anthropic-messages"})
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "messages", "code": "200", "auth": "sigv4"}) == 2
    assert sidecar.metric("bedrock_broker_tokens_total", {"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "direction": "input"})


def test_boto3_without_credentials(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("boto3_unsigned"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert result["endpoint"] == pod_env["app"]["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"]
    seen = assert_through_sidecar(fake_aws, {"converse", "converse-stream"})
    # UNSIGNED: the client sent no authentication at all; the sidecar signed.
    assert all(r["auth_kind"] == "sigv4" for r in seen)


def test_boto3_agents_runtime(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("boto3_agent_runtime"), pod_env["app"], tmp_path)
    assert result["reply"] == "fake reply from the agent", result
    assert result["endpoint"] == pod_env["app"]["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"]
    assert result["missing"]["error"].endswith(":UnknownOperationException"), result["missing"]
    assert_through_sidecar(fake_aws, {"invoke-agent"})
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "invoke_agent", "code": "200", "auth": "sigv4"}) == 2


def test_litellm(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("litellm_client"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert "<chunk" in "".join(result["async_chunks"]) and "fake reply" in result["invoke"], result
    assert_through_sidecar(fake_aws, {"converse", "converse-stream", "invoke", "invoke-with-response-stream"})


def test_anthropic_sdk(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("anthropic_sdk"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert "<chunk" in "".join(result["async_chunks"]), result
    assert_through_sidecar(fake_aws, {"invoke", "invoke-with-response-stream"})


def test_langchain_aws(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("langchain_aws_client"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert "fake reply" in result["legacy_reply"] and len(result["legacy_chunks"]) >= 2, result
    assert_through_sidecar(fake_aws, {"converse", "converse-stream", "invoke", "invoke-with-response-stream"})


def test_strands_agents(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("strands_client"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert_through_sidecar(fake_aws, {"converse-stream"})


def test_pydantic_ai(sidecar, fake_aws, pod_env, tmp_path):
    result = run_client(python_client("pydantic_ai_client"), pod_env["app"], tmp_path)
    assert_reply(result)
    assert "fake reply" in result["openai_reply"], result
    assert_through_sidecar(fake_aws, {"converse", "converse-stream", "openai-chat"})


def test_javascript_sdk(sidecar, fake_aws, pod_env, tmp_path):
    node_modules = ROOT / "tests" / "e2e" / "js" / "node_modules"
    assert node_modules.exists(), "run hack/node-deps.sh (make js) first"
    result = run_client(["node", str(ROOT / "tests/e2e/js/converse_client.mjs")], pod_env["app"], tmp_path)
    assert_reply(result)
    assert_through_sidecar(fake_aws, {"converse", "converse-stream"})


def test_vercel_ai_sdk(sidecar, fake_aws, pod_env, tmp_path):
    node_modules = ROOT / "tests" / "e2e" / "js" / "node_modules"
    assert node_modules.exists(), "run hack/node-deps.sh (make js) first"
    result = run_client(["node", str(ROOT / "tests/e2e/js/ai_sdk_client.mjs")], pod_env["app"], tmp_path)
    assert_reply(result)
    assert result["denied"]["status"] == 403, result["denied"]
    assert_through_sidecar(fake_aws, {"converse", "converse-stream"})
    # The usage the SDK read from both answers is what the sidecar counted.
    model = {"model": "anthropic.claude-3-haiku-20240307-v1:0", "direction": "output"}
    assert result["output_tokens"] > 0 and sidecar.metric("bedrock_broker_tokens_total", model) == result["output_tokens"]


def shell_snippets(name: str) -> list[str]:
    return [textwrap.dedent(m.group("body")) for m in SNIPPET.finditer((CLIENTS / name).read_text())]


def run_shell(snippet: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home), **env}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", snippet], env=full, capture_output=True, text=True, timeout=120)


def test_aws_cli(sidecar, fake_aws, pod_env, tmp_path):
    (snippet,) = shell_snippets("aws_cli.sh")
    ok = run_shell(snippet, pod_env["app"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "fake reply from" in json.loads(ok.stdout)["output"]["message"]["content"][0]["text"]
    denied = run_shell(snippet.replace("claude-3-haiku", "fake-denied"), pod_env["app"], tmp_path)
    # The CLI's own error: AWS CLI v1 exits 255 on a service error, naming the code.
    assert denied.returncode == 255 and "AccessDeniedException" in denied.stderr, denied
    assert_through_sidecar(fake_aws, {"converse"})


def test_curl(sidecar, fake_aws, pod_env, tmp_path):
    converse, stream = shell_snippets("curl.sh")
    ok = run_shell(converse, pod_env["app"], tmp_path)
    assert ok.returncode == 0 and "fake reply from" in json.loads(ok.stdout)["output"]["message"]["content"][0]["text"], ok
    streamed = run_shell(stream, pod_env["app"], tmp_path)
    events = [line for line in streamed.stdout.splitlines() if line.startswith("data: ")]
    assert len(events) >= 3 and events[-1] == "data: [DONE]", streamed.stdout
    denied = run_shell(converse.replace("claude-3-haiku", "fake-denied").replace("curl -s ", "curl -s -w '\\n%{http_code}' "),
                       pod_env["app"], tmp_path)
    body, status = denied.stdout.rsplit("\n", 1)
    assert status == "403" and "have access" in json.loads(body)["message"], denied.stdout
    assert_through_sidecar(fake_aws, {"converse", "openai-chat"})


@pytest.mark.parametrize("client, variable", [
    ("litellm_client", "AWS_BEDROCK_RUNTIME_ENDPOINT"),
    ("anthropic_sdk", "ANTHROPIC_BEDROCK_BASE_URL"),
    ("openai_sdk", "OPENAI_BASE_URL"),
    ("boto3_unsigned", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
    ("boto3_agent_runtime", "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"),
    ("ai_sdk_client.mjs", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
])
def test_without_its_variable_a_client_bypasses_the_sidecar(sidecar, fake_aws, pod_env, tmp_path, client, variable):
    """Each injected variable is what sends its client to the sidecar: without
    it the client goes for the public endpoint (unreachable here) instead."""
    env = {k: v for k, v in pod_env["app"].items() if k != variable}
    argv = ["node", str(ROOT / "tests/e2e/js" / client)] if client.endswith(".mjs") else python_client(client)
    result = run_client(argv, env, tmp_path, expect_ok=False)
    assert "crashed" in result, result
    assert fake_aws.requests() == []


@pytest.mark.parametrize("script", sorted(p.name for p in CLIENTS.iterdir() if p.suffix in (".py", ".sh") and not p.name.startswith("_"))
                         + ["../js/converse_client.mjs", "../js/ai_sdk_client.mjs"])
def test_docs_show_each_tested_snippet_verbatim(script):
    doc = DOC.read_text()
    snippets = [textwrap.dedent(m.group("body")) for m in SNIPPET.finditer((CLIENTS / script).read_text())]
    assert snippets, f"{script} marks no snippet"
    for snippet in snippets:
        assert snippet.strip() in doc, f"docs/clients.md does not show the snippet of {script}:\n{snippet}"


def test_build_info_names_this_build(sidecar):
    revision = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert sidecar.metric("bedrock_broker_build_info", {"version": version, "revision": revision or "unknown"}) == 1
