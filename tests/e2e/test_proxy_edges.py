"""What the proxy refuses, how it shuts down, and what never leaks."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import urllib.parse
import uuid
import zlib

import pytest
import requests

from conftest import BINARY, Collector, sidecar_logs_until, wait_for
from test_auth_modes import BODY, CONVERSE, post


@pytest.fixture
def sidecar(start_sidecar, irsa_env):
    return start_sidecar(irsa_env)


def raw(sidecar, method: str, target: str, headers: dict | None = None, body: bytes | None = None):
    u = urllib.parse.urlparse(sidecar.proxy)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(method, target, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r, data


def test_absolute_form_targets_are_refused(sidecar, fake_aws):
    r, data = raw(sidecar, "GET", "http://evil.example/openai/v1/models")
    assert r.status == 400
    assert r.getheader("x-bedrock-broker-error") == "absolute_form_refused"
    assert json.loads(data)["error"]["code"] == "absolute_form_refused"
    assert fake_aws.requests() == []


def test_connect_is_refused(sidecar, fake_aws):
    r, _ = raw(sidecar, "CONNECT", "evil.example:443")
    assert 400 <= r.status < 500
    assert r.getheader("x-bedrock-broker-error") == "connect_refused"
    assert fake_aws.requests() == []


@pytest.mark.parametrize("target", ["/model/../openai/v1/models", "/openai/v1/./models", "/model/%2e%2e/x/converse"])
def test_dot_segments_are_refused(sidecar, fake_aws, target):
    r, _ = raw(sidecar, "GET", target)
    assert r.status == 400
    assert r.getheader("x-bedrock-broker-error") == "invalid_path"
    assert fake_aws.requests() == []


def test_a_header_value_with_a_tab_is_forwarded_unsigned(sidecar, fake_aws):
    # RFC 9110 lets a field value hold a tab. SigV4 canonicalisers disagree
    # on it (aws-sigv4 keeps it, botocore collapses it like a space), so a
    # signed one risked a 403 with a warning blaming --signing-name.
    tid = uuid.uuid4().hex
    r, _ = raw(sidecar, "POST", CONVERSE, {"content-type": "application/json", "x-test-id": tid,
                                           "x-app-note": "a\tb"}, BODY.encode())
    rec = fake_aws.request_for(tid)
    assert rec["verified"] is True, rec["rejection"]
    assert r.status == 200
    assert "x-app-note" not in rec["signed_headers"], rec["signed_headers"]
    # Repeated, with the tab (or a byte past ASCII) in one value only: the
    # name was signed with the other values, which no verifier agrees with.
    for odd in ["a\tb", "caf\xe9".encode("latin-1").decode("latin-1")]:
        tid = uuid.uuid4().hex
        u = urllib.parse.urlparse(sidecar.proxy)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.putrequest("POST", CONVERSE, skip_accept_encoding=True)
        for name, value in [("content-type", "application/json"), ("x-test-id", tid), ("x-app-note", "one"),
                            ("x-app-note", odd), ("content-length", str(len(BODY)))]:
            conn.putheader(name, value)
        conn.endheaders(BODY.encode())
        r = conn.getresponse()
        r.read()
        conn.close()
        rec = fake_aws.request_for(tid)
        assert rec["verified"] is True, (odd, rec["rejection"])
        assert r.status == 200
        assert "x-app-note" not in rec["signed_headers"], rec["signed_headers"]


def exchange(sidecar, head: bytes) -> bytes:
    """Sends raw bytes, returns what came back until the sidecar closed or
    went quiet."""
    u = urllib.parse.urlparse(sidecar.proxy)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(head)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
                if b"\r\n\r\n" in got and b'"}' in got:
                    break
        except TimeoutError:
            pass
        return got


def test_framing_a_proxy_must_not_guess_at_is_refused(sidecar, fake_aws):
    # Two Host lines (the gate read the first) and a transfer coding hyper
    # does not undo (the gzipped body went upstream as if plain).
    two_hosts = exchange(sidecar, b"POST " + CONVERSE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert two_hosts.startswith(b"HTTP/1.1 400"), two_hosts
    assert b"x-bedrock-broker-error: invalid_host" in two_hosts, two_hosts
    body = zlib.compress(BODY.encode())
    gzipped = exchange(sidecar, b"POST " + CONVERSE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n"
                       b"Connection: close\r\n\r\n" + f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n")
    assert gzipped.startswith(b"HTTP/1.1 501"), gzipped
    assert b"x-bedrock-broker-error: transfer_coding_unsupported" in gzipped, gzipped
    assert fake_aws.requests() == []


def test_requests_refused_before_they_could_be_read_are_counted(start_sidecar, irsa_env):
    # hyper answers a broken head with a bare 400 (a too-large one 431) and
    # closes: no request, so no requests_total; only a DEBUG line said so.
    sidecar = start_sidecar(irsa_env)
    name = "bedrock_broker_unread_requests_total"
    # A well-formed request first: were it counted, the count below would
    # be 2 once the malformed one is.
    assert exchange(sidecar, b"GET /openai/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    folded = exchange(sidecar, b"POST /model/m/converse HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n b\r\n\r\n")
    assert folded.startswith(b"HTTP/1.1 400"), folded
    wait_for(lambda: sidecar.metric(name, {"listener": "proxy", "reason": "malformed"}) == 1, timeout=10, what="malformed counted")
    huge = exchange(sidecar, b"GET /openai/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431"), huge[:100]
    wait_for(lambda: sidecar.metric(name, {"listener": "proxy", "reason": "too_large"}) == 1, timeout=10, what="too large counted")
    assert sidecar.metric(name, {"listener": "proxy", "reason": "malformed"}) == 1


def test_a_client_hanging_up_mid_body_is_counted_as_499_not_a_bad_request(sidecar, fake_aws):
    """An abandoned upload is the client going away (499, as a client that
    leaves while Bedrock works), not a malformed request; a body that is
    malformed still is one (400)."""
    import asyncio
    import struct
    import sys as _sys
    from conftest import ROOT
    _sys.path.insert(0, str(ROOT / "tests" / "fakes"))
    from h2client import H2Client

    u = urllib.parse.urlparse(sidecar.proxy)
    head = f"POST {CONVERSE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
    for how, request in [
        ("fin", head + b"Content-Length: 100\r\n\r\n" + b"{" * 10),
        ("fin", head + b"Transfer-Encoding: chunked\r\n\r\n" + b"a\r\n" + b"{" * 5),
        ("rst", head + b"Content-Length: 100\r\n\r\n" + b"{" * 10),
    ]:
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall(request)
        # Hung up once the sidecar is reading the body (a reset before it
        # read the head would take the request with it, unseen).
        wait_for(lambda: sidecar.metric("bedrock_broker_requests_in_flight") == 1, timeout=10, what="the body being read")
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        wait_for(lambda: sidecar.metric("bedrock_broker_requests_in_flight") == 0, timeout=10, what="the hang-up seen")

    async def reset_mid_body(code: int) -> None:
        client = await H2Client.connect(sidecar.proxy)
        try:
            call = await client.start([(":method", "POST"), (":scheme", "http"), (":authority", u.netloc),
                                       (":path", CONVERSE), ("content-length", "100")])
            await call.send(b"{" * 10)
            await asyncio.to_thread(wait_for, lambda: sidecar.metric("bedrock_broker_requests_in_flight") == 1,
                                    timeout=10, what="the body being read")
            client.conn.reset_stream(call.stream_id, error_code=code)
            await client.flush()
            await asyncio.to_thread(wait_for, lambda: sidecar.metric("bedrock_broker_requests_in_flight") == 0,
                                    timeout=10, what="the reset seen")
        finally:
            await client.close()

    # CANCEL, and STREAM_CLOSED (curl's when it abandons a transfer).
    for code in (8, 5):
        asyncio.run(reset_mid_body(code))
    closed = {"operation": "converse", "code": "499", "auth": "sigv4"}
    wait_for(lambda: sidecar.metric("bedrock_broker_requests_total", closed) == 5, timeout=10, what="five hang-ups counted")
    bad_chunk = exchange(sidecar, head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    assert bad_chunk.startswith(b"HTTP/1.1 400"), bad_chunk
    assert b"body_read_failed" in bad_chunk, bad_chunk
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse", "code": "400", "auth": "sigv4"}) == 1
    assert fake_aws.requests() == []


def test_client_host_header_does_not_choose_the_upstream(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, ["--allowed-hosts", "bedrock-broker.internal"])
    # A host that is not this pod's (SSRF, DNS rebinding) is refused before
    # anything is signed.
    r, data = raw(sidecar, "POST", CONVERSE, {"Host": "evil.example", "content-type": "application/json"}, BODY.encode())
    assert r.status == 403
    assert r.getheader("x-bedrock-broker-error") == "host_not_allowed"
    assert json.loads(data)["message"].startswith("bedrock-broker answers only requests for its own pod")
    assert fake_aws.requests() == []
    # A name the operator allowed is answered, and still goes to the
    # configured upstream, signed for it.
    tid = uuid.uuid4().hex
    headers = {"Host": "bedrock-broker.internal:9787", "x-test-id": tid, "content-type": "application/json"}
    r, _ = raw(sidecar, "POST", CONVERSE, headers, BODY.encode())
    assert r.status == 200
    rec = fake_aws.request_for(tid)
    assert rec["verified"]


def test_body_over_the_limit_gets_413(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, ["--max-body-bytes", "1024"])
    r = requests.post(sidecar.url(CONVERSE), data=b"x" * 2048, timeout=10)
    assert r.status_code == 413
    assert r.headers["x-bedrock-broker-error"] == "body_too_large"
    assert "1024" in r.json()["message"]
    # Chunked, with no Content-Length to check up front.
    r = requests.post(sidecar.url("/openai/v1/chat/completions"), data=iter([b"y" * 700, b"y" * 700]), timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    ok = requests.post(sidecar.url(CONVERSE), data=BODY, timeout=10)
    assert ok.status_code == 200
    assert len(fake_aws.requests()) == 1


def test_unreachable_upstream_is_a_502_in_the_clients_dialect(start_sidecar, irsa_env, fake_aws):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(irsa_env, AWS_ENDPOINT_URL_BEDROCK_RUNTIME=f"http://127.0.0.1:{port}")
    sidecar = start_sidecar(env)
    r = requests.post(sidecar.url("/openai/v1/chat/completions"), data="{}", timeout=10)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unreachable"


def test_https_upstream_trusted_through_aws_ca_bundle(start_sidecar, irsa_env, fake_aws_tls, fake_aws, tls_material):
    # STS stays on the plain fake; Bedrock is the TLS fake (sharing no state),
    # so register static keys there and sign with them.
    fake_aws_tls.post("/reset")
    fake_aws_tls.post("/static_keys", {"access_key_id": "AKIDTLSSTATIC", "secret_access_key": "tls-secret"})
    env = {
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDTLSSTATIC",
        "AWS_SECRET_ACCESS_KEY": "tls-secret",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws_tls.bedrock,
    }
    trusted = start_sidecar(dict(env, AWS_CA_BUNDLE=str(tls_material["ca"])))
    tid, r = post(trusted, {})
    assert r.status_code == 200, r.text
    assert fake_aws_tls.request_for(tid)["verified"]

    untrusted = start_sidecar(env)
    _, r = post(untrusted, {})
    assert r.status_code == 502
    assert r.headers["x-bedrock-broker-error"] == "upstream_unreachable"
    # The first error behind a TLS-inspecting proxy: it names the fix.
    message = r.json()["message"]
    assert "UnknownIssuer" in message and "AWS_CA_BUNDLE" in message, message


def test_client_disconnect_cancels_the_upstream_stream(sidecar, fake_aws):
    sid = "dc-" + uuid.uuid4().hex
    r = requests.post(
        sidecar.url("/openai/v1/chat/completions"),
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"x-fake-lockstep": sid, "x-fake-chunks": "5"},
        stream=True,
        timeout=10,
    )
    it = r.iter_lines()
    first = next(line for line in it if line)
    assert first.startswith(b"data:")
    r.close()  # the client goes away mid-stream
    fake_aws.release(sid)
    wait_for(lambda: fake_aws.stream(sid)["client_disconnected"], timeout=10, what="upstream to see the disconnect")
    assert fake_aws.stream(sid)["finished"] is False
    wait_for(lambda: sidecar.metric("bedrock_broker_requests_in_flight") == 0, timeout=5, what="in-flight gauge to drop")


def a_stream_under_way(sidecar):
    """A streamed chat completion whose first chunk has arrived; the fake
    sends each next one on `fake_aws.release(sid)`."""
    sid = "drain-" + uuid.uuid4().hex
    r = requests.post(
        sidecar.url("/openai/v1/chat/completions"),
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"x-fake-lockstep": sid, "x-fake-chunks": "3"},
        stream=True,
        timeout=20,
    )
    reader = Collector(line for line in r.iter_lines() if line)
    reader.start()
    reader.wait_count(1)
    return sid, reader


def test_sigterm_drains_open_streams_then_exits_zero(sidecar, fake_aws):
    sid, reader = a_stream_under_way(sidecar)
    sidecar.proc.send_signal(signal.SIGTERM)
    # New connections are refused once draining starts.
    host, port = sidecar.proxy.removeprefix("http://").split(":")

    def refused():
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return False
        except OSError:
            return True

    wait_for(refused, timeout=10, what="listener to close")
    fake_aws.release(sid)
    fake_aws.release(sid)
    reader.join(timeout=10)
    lines = [line for _, line in reader.items]
    assert lines[-1] == b"data: [DONE]", lines
    assert sidecar.proc.wait(timeout=10) == 0


def test_a_second_signal_stops_at_once(sidecar, fake_aws):
    # Ctrl-C while a stream drains: the first waits for it (up to the
    # grace period), a second one means now, as servers do.
    sid, reader = a_stream_under_way(sidecar)
    sidecar.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "stopped accepting; draining" in sidecar.log_text(), timeout=10, what="draining")
    assert sidecar.proc.poll() is None, "the stream holds the drain"
    sidecar.proc.send_signal(signal.SIGINT)
    assert sidecar.proc.wait(timeout=5) == 130
    assert "second signal" in sidecar.log_text()
    fake_aws.release(sid)
    fake_aws.release(sid)
    reader.join(timeout=10)


def test_secrets_never_reach_logs_metrics_or_error_bodies(start_sidecar, irsa_env, fake_aws, token_dir):
    # The most verbose level a user could set.
    sc = start_sidecar(irsa_env, rust_log="trace")
    token = "bedrock-api-key-" + uuid.uuid4().hex
    post(sc, {"x-llamastack-provider-data": json.dumps({"aws_bearer_token_bedrock": token})})
    post(sc, {"authorization": "Bearer ABSKpassthroughsecret"})
    post(sc, {})
    _, bad = post(sc, {"x-llamastack-provider-data": '{"aws_bearer_token_bedrock": "ABSKinbadjson"'})
    secrets = [token, "ABSKpassthroughsecret", "ABSKinbadjson", token_dir.path.read_text()]
    for c in fake_aws.get("/credentials?include_secrets=1"):
        secrets += [c.get("secret_access_key"), c.get("session_token")]
    secrets = [s for s in secrets if s]
    assert len(secrets) >= 6
    metrics = sc.metrics()
    assert sc.stop() == 0
    surfaces = {"log": sc.log_text(), "error body": bad.text, "metrics": metrics}
    for where, text in surfaces.items():
        for s in secrets:
            assert s not in text, f"a secret leaked into the {where}"


def test_metrics_scrape_has_contract_names(sidecar):
    post(sidecar, {})
    requests.post(sidecar.url("/openai/v1/chat/completions"), json={"model": "m", "messages": []}, timeout=10)
    text = sidecar.metrics()
    for name in [
        "bedrock_broker_credentials_expiry_timestamp_seconds",
        "bedrock_broker_credentials_last_refresh_timestamp_seconds",
        "bedrock_broker_credential_refreshes_total",
        "bedrock_broker_credential_refresh_duration_seconds",
        "bedrock_broker_credential_refresh_consecutive_failures",
        "bedrock_broker_web_identity_token_expiry_timestamp_seconds",
        "bedrock_broker_requests_total",
        "bedrock_broker_request_duration_seconds",
    ]:
        assert name in text, name
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "converse", "code": "200", "auth": "sigv4"}) == 1
    assert sidecar.metric("bedrock_broker_requests_total", {"operation": "chat_completions", "code": "200", "auth": "sigv4"}) == 1
    assert sidecar.metric("bedrock_broker_request_duration_seconds_count", {"operation": "converse"}) == 1
    assert requests.get(sidecar.admin + "/healthz", timeout=5).status_code == 200


def test_bad_configuration_exits_2_naming_every_problem():
    out = subprocess.run(
        [str(BINARY), "sidecar"],
        env={"PATH": "/usr/bin:/bin", "AWS_ROLE_ARN": "not-an-arn", "BEDROCK_BROKER_LISTEN": "nowhere", "AWS_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2
    for name in ["AWS_WEB_IDENTITY_TOKEN_FILE", "BEDROCK_BROKER_LISTEN"]:
        assert name in out.stderr, out.stderr


@pytest.mark.parametrize("command", ["sidecar", "webhook", "inject"])
def test_a_setting_that_is_not_utf8_text_stops_the_start_naming_it(command):
    # Skipped as if unset, a proxy token (or a role policy) not in UTF-8
    # turned its protection off without a word.
    env = {b"PATH": b"/usr/bin:/bin", b"AWS_REGION": b"us-east-1", b"AWS_ACCESS_KEY_ID": b"AKIDEXAMPLE",
           b"AWS_SECRET_ACCESS_KEY": b"secret", b"BEDROCK_BROKER_PROXY_TOKEN": b"abcdefghijklmnopqrstuv\xff",
           b"BEDROCK_BROKER_WEBHOOK_ROLE_POLICY": b"service-account\xc2", b"LC_UNRELATED": b"\xff"}
    out = subprocess.run([str(BINARY), command], env=env, input=b"", capture_output=True, timeout=20)
    assert out.returncode == 2, out.stderr
    err = out.stderr.decode(errors="replace")
    for name in ["BEDROCK_BROKER_PROXY_TOKEN", "BEDROCK_BROKER_WEBHOOK_ROLE_POLICY"]:
        # A log line (`origin=NAME problem=...`), or `NAME: ...` from inject.
        assert any(name in line and "the value is not UTF-8 text" in line for line in err.splitlines()), err
    assert "LC_UNRELATED" not in err and "abcdefghijklmnopqrstuv" not in err, err


def test_a_value_that_is_not_text_is_logged_with_the_other_problems_in_the_format_asked():
    # It was said alone, as plain text, hiding the other problems and
    # ignoring BEDROCK_BROKER_LOG_FORMAT=json.
    env = {b"PATH": b"/usr/bin:/bin", b"AWS_REGION": b"us-east-1", b"AWS_ACCESS_KEY_ID": b"AKIDEXAMPLE",
           b"AWS_SECRET_ACCESS_KEY": b"secret", b"BEDROCK_BROKER_LOG_FORMAT": b"json",
           b"BEDROCK_BROKER_MAX_REQUESTS": b"0", b"BEDROCK_BROKER_PROXY_TOKEN": b"\xff\xfeabcdefghijklmnopq"}
    out = subprocess.run([str(BINARY), "sidecar"], env=env, capture_output=True, timeout=20)
    assert out.returncode == 2, out.stderr
    lines = [json.loads(line) for line in out.stderr.decode().splitlines() if line.strip()]
    problems = {line.get("origin"): line.get("problem") for line in lines if line.get("message") == "invalid configuration"}
    assert problems.get("BEDROCK_BROKER_PROXY_TOKEN") == "the value is not UTF-8 text", lines
    assert "BEDROCK_BROKER_MAX_REQUESTS" in problems, lines
    assert b"abcdefghijklmnopq" not in out.stderr


@pytest.mark.parametrize("cpus", [{0}, None])
@pytest.mark.parametrize("value", ["0", "abc", "-1"])
def test_a_bad_worker_thread_count_is_a_configuration_error_on_any_node(irsa_env, value, cpus):
    # tokio panicked (exit 101) on it with two CPUs or more, and ignored it
    # on one: a manifest that works on one node crash-looped on another.
    out = subprocess.run(
        [str(BINARY), "sidecar"],
        env={"PATH": "/usr/bin:/bin", **irsa_env, "TOKIO_WORKER_THREADS": value},
        capture_output=True, text=True, timeout=20,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    assert out.returncode == 2, out.stderr
    assert "TOKIO_WORKER_THREADS" in out.stderr and "panicked" not in out.stderr, out.stderr


@pytest.mark.parametrize("setting", [["--upstream"], ["--mantle-upstream"], ["env", "AWS_ENDPOINT_URL_STS"], ["env", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"]])
def test_a_url_with_a_password_is_refused_without_repeating_it(irsa_env, setting):
    url = "https://svc:s3cretPW@bedrock.example.com"
    env, args = {"PATH": "/usr/bin:/bin", **irsa_env}, []
    if setting[0] == "env":
        env[setting[1]] = url
    else:
        args = [setting[0], url]
    out = subprocess.run([str(BINARY), "sidecar", *args], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2, out.stderr
    assert "user information" in out.stderr and "s3cretPW" not in out.stderr, out.stderr


@pytest.mark.parametrize("port", ["99999", "0"])
def test_an_upstream_port_that_is_not_one_is_refused(irsa_env, port):
    # 99999 was taken, and the connection went to port 443.
    out = subprocess.run([str(BINARY), "sidecar", "--upstream", f"https://127.0.0.1:{port}"],
                         env={"PATH": "/usr/bin:/bin", **irsa_env}, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2, out.stderr
    assert "--upstream" in out.stderr and "port" in out.stderr, out.stderr


def test_a_container_credentials_url_with_a_password_is_refused_unrepeated():
    # aws-config refused it at every refresh quoting it, into the log and
    # /readyz; such a URL is refused at start now, and never repeated.
    for value in ["http://u:s3cretPW@10.1.2.3/creds", "http://u:s3cret PW@127.0.0.1:1/creds"]:
        out = subprocess.run(
            [str(BINARY), "sidecar"],
            env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "AWS_CONTAINER_CREDENTIALS_FULL_URI": value},
            capture_output=True, text=True, timeout=20,
        )
        assert out.returncode == 2, out.stderr
        assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" in out.stderr and "s3cret" not in out.stderr, out.stderr


def test_a_log_reader_that_goes_away_does_not_take_the_sidecar_down(irsa_env, fake_aws):
    # `bedrock-broker sidecar 2>&1 | head -1`, or a log shipper that died:
    # the next line written to the closed pipe panicked (exit 101).
    fake_aws.configure_sts(lifetime_seconds=3)
    proc = subprocess.Popen(
        [str(BINARY), "sidecar", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--refresh-max-backoff", "500ms"],
        env={"PATH": "/usr/bin:/bin", **irsa_env, "BEDROCK_BROKER_LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        first = json.loads(proc.stderr.readline())
        while first.get("message") != "bedrock-broker sidecar listening":
            first = json.loads(proc.stderr.readline())
        admin = f"http://{first['admin']}"
        proc.stderr.close()  # the reader is gone
        refreshed = lambda: next((float(l.split()[-1]) for l in requests.get(f"{admin}/metrics", timeout=5).text.splitlines()
                                  if l.startswith('bedrock_broker_credential_refreshes_total{result="success"}')), 0)
        wait_for(lambda: proc.poll() is not None or refreshed() >= 4, timeout=20, what="refreshes, each logged")
        assert proc.poll() is None, f"exited with {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_bad_configuration_is_reported_even_with_logging_off():
    out = subprocess.run(
        [str(BINARY), "sidecar"],
        env={"PATH": "/usr/bin:/bin", "RUST_LOG": "off", "BEDROCK_BROKER_LISTEN": "nowhere", "AWS_REGION": "us-east-1"},
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 2
    assert "BEDROCK_BROKER_LISTEN" in out.stderr, out.stderr


@pytest.mark.parametrize("variable", ["AWS_CA_BUNDLE", "BEDROCK_BROKER_PROXY_TOKEN", "BEDROCK_BROKER_SESSION_POLICY"])
def test_a_device_or_pipe_named_as_a_file_fails_at_once(irsa_env, tmp_path, variable):
    # /dev/zero filled memory until the kernel stopped the process; a FIFO
    # hung the start with nothing in the log.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ["/dev/zero", str(fifo)]:
        value = path if variable == "AWS_CA_BUNDLE" else f"@{path}"
        out = subprocess.run([str(BINARY), "sidecar"], env={"PATH": "/usr/bin:/bin", **irsa_env, variable: value},
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 2, out.stderr
        assert variable in out.stderr and "not a regular file" in out.stderr, out.stderr


def test_a_misspelt_variable_is_pointed_out_not_silently_ignored(start_sidecar, irsa_env):
    sidecar = start_sidecar(dict(irsa_env, BEDROCK_BROKER_STS_TIMOUT="3s"))
    warned = [json.loads(line) for line in sidecar.log_text().splitlines() if "nothing reads it" in line]
    assert [w["variable"] for w in warned] == ["BEDROCK_BROKER_STS_TIMOUT"], warned
    assert warned[0]["level"] == "WARN" and "did you mean BEDROCK_BROKER_STS_TIMEOUT?" in warned[0]["message"]


def test_rust_log_naming_only_targets_still_shows_warnings(irsa_env, tmp_path):
    # `RUST_LOG=lots` (a typo, read as a target name) silenced everything,
    # the warning about a misspelt variable too.
    env = dict(irsa_env, RUST_LOG="lots", BEDROCK_BROKER_STS_TIMOUT="3s")
    log = sidecar_logs_until(env, "nothing reads it", tmp_path / "sidecar.log")
    assert "did you mean BEDROCK_BROKER_STS_TIMEOUT?" in log, log


def test_a_port_in_use_names_the_setting_that_chose_it(irsa_env):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = subprocess.run(
            [str(BINARY), "sidecar", "--admin-listen", "127.0.0.1:0"],
            env={"PATH": "/usr/bin:/bin", **irsa_env, "BEDROCK_BROKER_LISTEN": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port} for the proxy (setting: --listen / BEDROCK_BROKER_LISTEN)" in out.stderr, out.stderr


def test_a_query_with_unencoded_colon_and_slash_is_forwarded_as_signed(sidecar, fake_aws):
    # botocore (like some AWS front ends) canonicalises the query as it
    # arrives; the proxy must send it in the one encoding it signed.
    tid = uuid.uuid4().hex
    r, data = raw(sidecar, "GET", "/openai/v1/models?next=http://x:1/&b=a+b&&flag", {"x-test-id": tid})
    assert r.status == 200, data
    rec = fake_aws.request_for(tid)
    assert rec["verified"], rec["rejection"]
    assert rec["query"] == "next=http%3A%2F%2Fx%3A1%2F&b=a%20b&flag="


def test_signature_errors_reach_the_client_without_the_session_token(sidecar, fake_aws):
    tid = uuid.uuid4().hex
    r, data = raw(sidecar, "POST", CONVERSE, {
        "x-test-id": tid, "content-type": "application/json", "x-fake-sigv4-mismatch": "1",
    }, BODY.encode())
    assert r.status == 403
    assert r.getheader("x-amzn-errortype") == "InvalidSignatureException"
    message = json.loads(data)["message"]
    assert "The Canonical String for this request should have been" in message
    assert "x-amz-security-token:** redacted **" in message
    rec = fake_aws.request_for(tid)
    creds = {c["access_key_id"]: c for c in fake_aws.get("/credentials?include_secrets=1")}
    token = creds[rec["access_key_id"]]["session_token"]
    # The fake signed (and quoted) the token; the proxy took it out.
    assert token and rec["security_token_signed"]
    assert token not in data.decode()


def test_refused_signatures_are_logged_for_the_operator_once_a_minute(start_sidecar, irsa_env, fake_aws):
    # The app gets the 403 as it came, but the cause is the sidecar's (a
    # signing name, a hop rewriting signed headers): it logged nothing.
    sidecar = start_sidecar(irsa_env)
    for _ in range(3):
        r, _ = raw(sidecar, "POST", CONVERSE, {"content-type": "application/json", "x-fake-sigv4-mismatch": "1"},
                   BODY.encode())
        assert r.status == 403 and r.getheader("x-amzn-errortype") == "InvalidSignatureException"
    lines = [json.loads(line) for line in sidecar.log_text().splitlines() if "refused the sidecar's signature" in line]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["error"] == "InvalidSignatureException" and line["signing_name"] == "bedrock", line
    assert line["level"] == "WARN" and "--signing-name" in line["message"], line


def test_a_signature_refused_for_the_nodes_clock_names_the_clock(start_sidecar, fake_aws, pod_identity_env):
    # With keys from EKS Pod Identity (or IMDS, or the environment) the
    # sidecar calls no STS, so nothing measured its clock: a node 400 s
    # ahead of AWS had every call refused "Signature expired", and the log
    # line blamed --signing-name. The refusal's Date measures it.
    sidecar = start_sidecar(pod_identity_env)
    assert sidecar.metric("bedrock_broker_clock_skew_seconds") == 0
    fake_aws.configure_sts(clock_offset_seconds=-400)
    for _ in range(3):
        r, data = raw(sidecar, "POST", CONVERSE, {"content-type": "application/json"}, BODY.encode())
        assert r.status == 403 and r.getheader("x-amzn-errortype") == "InvalidSignatureException"
        assert json.loads(data)["message"].startswith("Signature expired"), data
    skew = sidecar.metric("bedrock_broker_clock_skew_seconds")
    assert 395 <= skew <= 405, skew
    lines = [json.loads(line) for line in sidecar.log_text().splitlines() if "refused the sidecar's signature" in line]
    assert len(lines) == 1, lines
    (line,) = lines
    assert "NTP" in line["message"] and "--signing-name" not in line["message"], line
    assert 395 <= line["skew_s"] <= 405 and line["error"] == "InvalidSignatureException", line
    # The clock mended: the next answer measures it again, and the alert
    # on the gauge ends. A 403 for something else (a model the account
    # may not use) accepted the signature too.
    fake_aws.configure_sts(clock_offset_seconds=0)
    denied = "/model/anthropic.fake-denied-v1:0/converse"
    r, data = raw(sidecar, "POST", denied, {"content-type": "application/json"}, BODY.encode())
    assert r.status == 403 and r.getheader("x-amzn-errortype") == "AccessDeniedException", data
    assert abs(sidecar.metric("bedrock_broker_clock_skew_seconds")) <= 2
    r, data = raw(sidecar, "POST", CONVERSE, {"content-type": "application/json"}, BODY.encode())
    assert r.status == 200, data


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_signature_error_reaches_the_client_without_the_session_token(sidecar, fake_aws, coding):
    # Bedrock may compress its error as the client's Accept-Encoding allows;
    # the token must go whatever the coding. The client gets the cleaned
    # message uncompressed.
    fake_aws.post("/bedrock", {"compress": True})
    tid = uuid.uuid4().hex
    r, data = raw(sidecar, "POST", CONVERSE, {
        "x-test-id": tid, "content-type": "application/json", "x-fake-sigv4-mismatch": "1",
        "accept-encoding": coding,
    }, BODY.encode())
    assert r.status == 403
    assert r.getheader("x-amzn-errortype") == "InvalidSignatureException"
    encoding = r.getheader("content-encoding")
    text = (zlib.decompress(data, 47) if encoding in ("gzip", "deflate") else data).decode()
    creds = {c["access_key_id"]: c for c in fake_aws.get("/credentials?include_secrets=1")}
    token = creds[fake_aws.request_for(tid)["access_key_id"]]["session_token"]
    assert token not in text
    assert encoding is None and int(r.getheader("content-length")) == len(data)
    message = json.loads(text)["message"]
    assert "The Canonical String for this request should have been" in message
    assert "x-amz-security-token:** redacted **" in message


def test_http2_clients_are_granted_small_flow_control_windows(sidecar):
    # What an h2c client may send before the proxy reads it sits in the
    # proxy's buffers, outside the request-body budget: hyper's default
    # windows (1 MiB a connection) let 250 connections that never finish
    # their bodies hold 278 MB. The proxy grants HTTP/2's own default.
    import h2.config
    import h2.connection
    import h2.events

    u = urllib.parse.urlparse(sidecar.proxy)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.ping(b"12345678")
        sock.sendall(conn.data_to_send())
        settings, acked = None, False
        while not acked:  # the server's preface comes before its ping answer
            data = sock.recv(65536)
            assert data, "connection closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings = event.changed_settings
                acked = acked or isinstance(event, h2.events.PingAckReceived)
            sock.sendall(conn.data_to_send())
        window = conn.remote_settings.initial_window_size
        assert window <= 65535, settings
        assert conn.outbound_flow_control_window <= 65535
        assert conn.remote_settings.max_concurrent_streams <= 128

