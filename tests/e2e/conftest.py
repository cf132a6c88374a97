"""End-to-end fixtures: real processes on real loopback sockets.

* ``fake_aws``: tests/fakes/fake_aws (a package, run as a script), a fake STS
  and a fake Bedrock that verifies every SigV4 signature with botocore (not
  with our signer).
* ``start_sidecar``: the real ``bedrock-broker sidecar`` binary, configured only
  through CONTRACT flags and standard AWS environment variables.
* ``token_dir``: a projected service-account token laid out the way the
  kubelet does it (``token -> ..data/token``, ``..data -> ..<timestamp>``), so
  rotation is an atomic symlink swap.

Waiting is always polling with a deadline, never a bare sleep.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
FAKE_AWS = ROOT / "tests" / "fakes" / "fake_aws"
BINARY = Path(os.environ.get("BEDROCK_BROKER_BIN", ROOT / "target" / "debug" / "bedrock-broker"))


def shipped_env() -> dict[str, str]:
    """The environment the image gives the binary (the runtime stage's
    ``ENV`` lines of the Dockerfile), so memory is measured as it ships:
    glibc's allocator settings there decide how much freed memory is kept."""
    env: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            env = {}
        elif line.startswith("ENV "):
            name, _, value = line[4:].strip().partition("=")
            env[name] = value
    assert env, "the Dockerfile's runtime stage sets no environment"
    return env
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/chat-app"


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Polls ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")


def make_jwt(exp: float | None = None, sub: str = "system:serviceaccount:default:chat-app", marker: str | None = None) -> str:
    """An unsigned JWT shaped like a Kubernetes projected token (the fake STS does not verify it)."""

    def enc(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    payload = {
        "aud": ["sts.amazonaws.com"],
        "iss": "https://oidc.example.test/id/ABC",
        "sub": sub,
        "exp": int(exp if exp is not None else time.time() + 86400),
        "iat": int(time.time()),
        "jti": marker or uuid.uuid4().hex,
    }
    return f"{enc({'alg': 'RS256', 'kid': 'k'})}.{enc(payload)}.c2lnbmF0dXJl"


class TokenDir:
    """A kubelet-style projected volume holding one token file."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = root / "token"
        self.generation = 0

    def write(self, token: str) -> None:
        """Publishes ``token`` atomically, exactly like the kubelet's AtomicWriter."""
        self.generation += 1
        data_dir = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.generation}"
        data_dir.mkdir()
        (data_dir / "token").write_text(token)
        tmp_link = self.root / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(data_dir.name)
        os.replace(tmp_link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/token")


class FakeAws:
    """Handle on the running fake STS + fake Bedrock."""

    def __init__(self, info: dict, proc: subprocess.Popen):
        self.sts = info["sts"]
        self.bedrock = info["bedrock"]
        # HTTP/2 listener (InvokeModelWithBidirectionalStream), with --h2-port.
        self.bedrock_h2 = info.get("bedrock_h2")
        # STS over TLS, with --tls-cert.
        self.sts_tls = info.get("sts_tls")
        self.control = info["control"]
        self.proc = proc
        self.http = requests.Session()

    def post(self, path: str, body: dict | None = None) -> dict:
        r = self.http.post(f"{self.control}{path}", json=body or {}, timeout=10)
        r.raise_for_status()
        return r.json() if r.content else {}

    def get(self, path: str):
        r = self.http.get(f"{self.control}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def configure_sts(self, **settings) -> None:
        self.post("/sts", settings)

    def sts_calls(self) -> list[dict]:
        return self.get("/sts/calls")

    def requests(self) -> list[dict]:
        return self.get("/bedrock/requests")

    def request_for(self, test_id: str) -> dict:
        matches = self.get(f"/bedrock/requests?test_id={test_id}")
        assert len(matches) == 1, f"expected one upstream request with x-test-id={test_id}, got {matches}"
        return matches[0]

    def release(self, stream_id: str) -> None:
        self.post("/stream/release", {"stream_id": stream_id})

    def stream(self, stream_id: str) -> dict:
        return self.get(f"/stream/{stream_id}")


def _start_fake(tmp: Path, extra_args: list[str]) -> FakeAws:
    ready = tmp / f"fake-ready-{uuid.uuid4().hex}.json"
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_AWS), "--sts-port", "0", "--bedrock-port", "0", "--region", REGION, "--ready-file", str(ready), *extra_args],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"fake-aws-{uuid.uuid4().hex}.log", "wb"),
    )
    info = wait_for(lambda: ready.exists() and ready.stat().st_size > 0 and json.loads(ready.read_text()), timeout=30, what="fake AWS to start")
    return FakeAws(info, proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def fake_aws_session(tmp_path_factory) -> FakeAws:
    fake = _start_fake(tmp_path_factory.mktemp("fake"), [])
    yield fake
    _stop(fake.proc)


@pytest.fixture
def fake_aws(fake_aws_session: FakeAws) -> FakeAws:
    """The shared fake, reset to defaults for each test."""
    fake_aws_session.post("/reset")
    return fake_aws_session


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory):
    """A throwaway CA and a certificate for 127.0.0.1, made with trustme."""
    import trustme

    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert_path = d / "server.pem"
    key_path = d / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        with open(cert_path, "ab") as f:
            f.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(key_path))
    return {"ca": ca_path, "cert": cert_path, "key": key_path}


@pytest.fixture(scope="session")
def fake_aws_tls(tmp_path_factory, tls_material) -> FakeAws:
    fake = _start_fake(
        tmp_path_factory.mktemp("fake-tls"),
        ["--tls-cert", str(tls_material["cert"]), "--tls-key", str(tls_material["key"])],
    )
    yield fake
    _stop(fake.proc)


@pytest.fixture(scope="session")
def fake_aws_h2(tmp_path_factory, tls_material) -> FakeAws:
    """A fake whose Bedrock also listens for HTTP/2 over TLS (ALPN), as the
    real bidirectional-streaming endpoint does."""
    fake = _start_fake(
        tmp_path_factory.mktemp("fake-h2"),
        ["--tls-cert", str(tls_material["cert"]), "--tls-key", str(tls_material["key"]), "--h2-port", "0"],
    )
    yield fake
    _stop(fake.proc)


@dataclass
class Sidecar:
    proc: subprocess.Popen
    proxy: str
    admin: str
    log_path: Path
    lines: list[dict] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.proxy}{path}"

    def metrics(self) -> str:
        return requests.get(f"{self.admin}/metrics", timeout=5).text

    def metric(self, name: str, labels: dict | None = None) -> float | None:
        """Value of one sample, parsed with the official Prometheus parser."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return sample.value
        return None

    def ready(self) -> requests.Response:
        return requests.get(f"{self.admin}/readyz", timeout=5)

    def listening_line(self) -> dict:
        """The start-up log line: where it listens, what it signs for, how it schedules."""
        line = _read_listening_line(self.log_path)
        assert line is not None, self.log_text()
        return line

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def _read_listening_line(log_path: Path) -> dict | None:
    if not log_path.exists():
        return None
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("message") == "bedrock-broker sidecar listening":
            return obj
    return None


def sidecar_logs_until(env: dict[str, str], needle: str, log_path: Path) -> str:
    """Runs ``bedrock-broker sidecar`` with exactly ``env`` (and any-port
    listeners) until its log shows ``needle``, for logs the ``start_sidecar``
    fixture cannot read (text format, levels without the start-up line);
    returns the log."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BINARY), "sidecar", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdout=subprocess.DEVNULL, stderr=log,
        )
        try:
            wait_for(lambda: needle in log_path.read_text(errors="replace"), timeout=20, what=repr(needle))
        finally:
            proc.kill()
            proc.wait(timeout=10)
    return log_path.read_text(errors="replace")


@pytest.fixture
def start_sidecar(tmp_path):
    """Starts ``bedrock-broker sidecar`` with exactly the given environment and flags."""
    started: list[Sidecar] = []

    def start(env: dict[str, str], args: list[str] | None = None, wait_ready: bool = True, rust_log: str = "info",
              listen: str = "127.0.0.1:0", cpus: set[int] | None = None,
              admin_listen: str = "127.0.0.1:0") -> Sidecar:
        assert BINARY.exists(), f"{BINARY} missing: run cargo build first"
        log_path = tmp_path / f"sidecar-{len(started)}.log"
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BEDROCK_BROKER_LOG_FORMAT": "json",
            "RUST_LOG": rust_log,
            **env,
        }
        proc = subprocess.Popen(
            [str(BINARY), "sidecar", "--listen", listen, "--admin-listen", admin_listen, *(args or [])],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=open(log_path, "wb"),
            # As a CPU limit or a pinned container would: the process sees only these CPUs.
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )

        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {proc.returncode}:\n{log_path.read_text()}")
            return _read_listening_line(log_path)

        line = wait_for(listening, timeout=20, what="sidecar to listen")
        sc = Sidecar(proc=proc, proxy=f"http://{line['proxy']}", admin=f"http://{line['admin']}", log_path=log_path)
        started.append(sc)
        if wait_ready:
            wait_for(lambda: sc.ready().status_code == 200, timeout=20, what="sidecar readiness")
        return sc

    yield start
    for sc in started:
        if sc.proc.poll() is None:
            sc.proc.kill()
            sc.proc.wait(timeout=10)


@pytest.fixture
def token_dir(tmp_path) -> TokenDir:
    td = TokenDir(tmp_path / "serviceaccount")
    td.write(make_jwt())
    return td


@pytest.fixture
def h2_env(fake_aws_h2, token_dir, tls_material) -> dict[str, str]:
    """The sidecar's environment against the fake's HTTP/2 port (TLS, ALPN
    h2), as Bedrock's endpoints are reached; the fake reset first."""
    fake_aws_h2.post("/reset")
    return {
        "AWS_REGION": REGION,
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_dir.path),
        "AWS_ENDPOINT_URL_STS": fake_aws_h2.sts,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws_h2.bedrock_h2,
        "AWS_CA_BUNDLE": str(tls_material["ca"]),
    }


@pytest.fixture
def irsa_env(fake_aws: FakeAws, token_dir: TokenDir) -> dict[str, str]:
    """The environment the EKS Pod Identity Webhook (or our injector) gives a pod."""
    return {
        "AWS_REGION": REGION,
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_dir.path),
        "AWS_ROLE_SESSION_NAME": "e2e-session",
        "AWS_ENDPOINT_URL_STS": fake_aws.sts,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    }


@pytest.fixture
def pod_identity_env(fake_aws: FakeAws) -> dict[str, str]:
    """The environment EKS Pod Identity gives a pod: credentials from the
    container endpoint (the fake's), no STS call of the sidecar's own."""
    return {
        "AWS_REGION": REGION,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": fake_aws.sts + "/ecs/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ecs-test-token",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    }


class Collector(threading.Thread):
    """Reads an iterator in the background, timestamping each item."""

    def __init__(self, iterable):
        super().__init__(daemon=True)
        self.iterable = iterable
        self.items: list[tuple[float, object]] = []
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def run(self):
        try:
            for item in self.iterable:
                with self.cond:
                    self.items.append((time.monotonic(), item))
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - surfaced by wait_count
            self.error = e
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    done = False

    def wait_count(self, n: int, timeout: float = 10) -> list:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.items) < n and not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if len(self.items) < n:
                raise AssertionError(f"only {len(self.items)} of {n} items arrived (error: {self.error!r})")
            return [i for _, i in self.items]
