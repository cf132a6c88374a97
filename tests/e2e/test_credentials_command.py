"""`bedrock-broker credentials`: one-shot diagnosis against the fake STS."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import urllib.parse
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import BINARY, ROLE_ARN, sidecar_logs_until, wait_for


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BINARY), "credentials", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_prints_who_we_are_and_when_it_expires(irsa_env, fake_aws, token_dir):
    out = run(irsa_env)
    assert out.returncode == 0, out.stderr
    assert f"role:     {ROLE_ARN}" in out.stdout
    assert "account:  123456789012" in out.stdout
    assert "assumed-role/chat-app/e2e-session" in out.stdout
    assert "expires:" in out.stdout and "(in " in out.stdout
    assert "sub=system:serviceaccount:default:chat-app" in out.stdout
    # GetCallerIdentity was signed with the STS credentials and verified by botocore.
    calls = fake_aws.sts_calls()
    assert [c["action"] for c in calls] == ["AssumeRoleWithWebIdentity", "GetCallerIdentity"]
    assert calls[1]["result"] == "ok"
    issued = fake_aws.get("/credentials?include_secrets=1")
    for c in issued:
        for secret in (c.get("secret_access_key"), c.get("session_token")):
            if secret:
                assert secret not in out.stdout + out.stderr
    assert token_dir.path.read_text() not in out.stdout + out.stderr


def test_access_denied_explains_the_trust_policy(irsa_env, fake_aws):
    fake_aws.configure_sts(fail_always=True, fail_code="AccessDenied")
    out = run(irsa_env)
    assert out.returncode == 1
    assert "AccessDenied" in out.stderr
    assert "trust policy" in out.stderr
    assert "system:serviceaccount" in out.stderr


def test_invalid_token_explains_the_oidc_provider(irsa_env, fake_aws):
    fake_aws.configure_sts(accept_tokens=["only-this-token"])
    out = run(irsa_env)
    assert out.returncode == 1
    assert "InvalidIdentityToken" in out.stderr
    assert "OIDC" in out.stderr


def test_credentials_expired_on_arrival_are_refused_as_the_sidecar_refuses_them(irsa_env, fake_aws):
    # STS's answer already expired by this machine's clock: the sidecar
    # will not store it, so `credentials` must not call it working.
    fake_aws.configure_sts(lifetime_seconds=-60)
    out = run(irsa_env)
    assert out.returncode == 1, out.stdout
    assert "ok: credentials work" not in out.stdout
    assert "had expired 60 s before they arrived" in out.stderr, out.stderr
    assert "NTP" in out.stderr
    assert [c["action"] for c in fake_aws.sts_calls()] == ["AssumeRoleWithWebIdentity"]


def test_missing_configuration_exits_2():
    out = run({})
    assert out.returncode == 2
    assert "AWS_ROLE_ARN" in out.stderr and "AWS_ACCESS_KEY_ID" in out.stderr


def test_a_refused_chained_role_points_at_that_role_not_the_token(irsa_env, fake_aws):
    # The token exchange works; the second hop is refused. Its fix is the
    # chained role's trust policy, not the OIDC trust of the first role.
    chained = "arn:aws:iam::210987654321:role/denied"
    fake_aws.configure_sts(deny_roles=[chained])
    out = run(dict(irsa_env, BEDROCK_BROKER_CHAIN_ROLE_ARN=chained))
    assert out.returncode == 1
    assert "AssumeRole failed: AccessDenied" in out.stderr
    hint = next(line for line in out.stderr.splitlines() if "hint:" in line)
    assert "OIDC" not in hint and "service account" not in hint, hint
    assert "chained role's trust policy" in hint and "sts:AssumeRole" in hint, hint


@pytest.mark.parametrize("chained", [False, True])
def test_a_session_token_quoted_back_is_blanked(irsa_env, fake_aws, chained):
    """A relay in STS's place quoting the session token a signed call (the
    chained AssumeRole, GetCallerIdentity) carried: it was printed whole."""
    fake_aws.configure_sts(quote_security_token=True)
    env = dict(irsa_env, BEDROCK_BROKER_CHAIN_ROLE_ARN="arn:aws:iam::210987654321:role/chained") if chained else irsa_env
    out = run(env)
    assert out.returncode == 1, out
    quoted = re.search(r"The security token '([^']*)' included", out.stderr)
    assert quoted, out.stderr
    assert quoted.group(1) == "** redacted **", out.stderr
    tokens = [c["session_token"] for c in fake_aws.get("/credentials?include_secrets=1") if c["kind"] == "sts"]
    assert tokens and "InvalidClientTokenId" in out.stderr
    for token in tokens:
        assert token not in out.stderr and token[:40] not in out.stderr


def test_sts_out_of_reach_is_said_plainly(irsa_env):
    out = run(dict(irsa_env, AWS_ENDPOINT_URL_STS="http://127.0.0.1:1"))
    assert out.returncode == 1
    assert "Connection refused" in out.stderr, out.stderr
    # The causes once, as text: no Rust debug dump of the same error.
    assert "DispatchFailure(" not in out.stderr and "{" not in out.stderr, out.stderr


@contextmanager
def sts_stand_in(answer):
    """An HTTP server where STS should be, answering each POST with
    ``answer(form) -> (status, content type, body)``."""

    class Page(BaseHTTPRequestHandler):
        def do_POST(self):
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("content-length", 0))).decode())
            status, content_type, body = answer(form)
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def not_sts(status: int, content_type: str, body: bytes):
    """Something other than STS where STS should be: an egress proxy's
    refusal page, a captive portal, a wrong AWS_ENDPOINT_URL_STS."""
    return sts_stand_in(lambda _form: (status, content_type, body))


@pytest.mark.parametrize("status,content_type,body", [
    (403, "text/html", b"<html><body><h1>Access denied by corporate proxy</h1></body></html>"),
    (200, "text/html", b"<html><body>Welcome to the guest network</body></html>"),
    # STS-shaped, but cut short: no key, no expiry.
    (200, "text/xml", b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                      b"<AssumeRoleWithWebIdentityResult><Credentials><SessionToken>x</SessionToken>"),
])
def test_an_answer_that_is_not_from_sts_is_called_that(irsa_env, status, content_type, body):
    with not_sts(status, content_type, body) as url:
        out = run(dict(irsa_env, AWS_ENDPOINT_URL_STS=url))
    assert out.returncode == 1, out.stdout
    hint = next((line for line in out.stderr.splitlines() if "hint:" in line), "")
    assert "something other than STS answered" in hint, out.stderr
    # Not taken for an expired token, a trust policy or a clock problem.
    assert "NTP" not in out.stderr and "trust policy" not in out.stderr, out.stderr
    if status != 200:
        assert f"HTTP {status}" in out.stderr, out.stderr


def sts_echoing_the_token(in_code: bool):
    """An STS-shaped error whose message (or error code) quotes the token it
    was sent and carries a line break, as a misbehaving gateway or IdP
    relay might."""

    def answer(form) -> tuple[int, str, bytes]:
        echoed = f"{form.get('WebIdentityToken', [''])[0]}\nlevel=error msg=forged"
        code, message = ("InvalidIdentityToken" + echoed, "rejected") if in_code else ("InvalidIdentityToken", f"rejected {echoed}")
        return 400, "text/xml", (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message>"
            "</Error><RequestId>r</RequestId></ErrorResponse>"
        ).encode()

    return sts_stand_in(answer)


@pytest.mark.parametrize("in_code", [False, True], ids=["in-message", "in-code"])
def test_an_sts_error_quoting_the_token_or_breaking_lines_is_tamed(irsa_env, token_dir, start_sidecar, tmp_path, in_code):
    token = token_dir.path.read_text()
    with sts_echoing_the_token(in_code) as url:
        env = dict(irsa_env, AWS_ENDPOINT_URL_STS=url)
        out = run(env)
        sidecar = start_sidecar(env, wait_ready=False)
        wait_for(lambda: "credential refresh failed" in sidecar.log_text(), timeout=20, what="a failed refresh")
        ready = sidecar.ready()
        # The text log format, where a line break would start a line of
        # its own, read by collectors as another record.
        text_log = sidecar_logs_until(dict(env, BEDROCK_BROKER_LOG_FORMAT="text"), "credential refresh failed",
                                      tmp_path / "text.log")
    assert out.returncode == 1, out.stdout
    assert "InvalidIdentityToken" in out.stderr
    assert ready.status_code == 503 and "InvalidIdentityToken" in ready.text, ready.text
    for where in (out.stdout + out.stderr, sidecar.log_text(), ready.text, text_log):
        assert token not in where
    for where in (out.stderr, text_log):
        assert not [line for line in where.splitlines() if line.startswith("level=error msg=forged")], where


def test_a_host_that_does_not_resolve_is_named(irsa_env):
    # FIPS in a region without a FIPS STS host: the DNS error names no
    # host, the report does.
    env = {k: v for k, v in irsa_env.items() if k != "AWS_ENDPOINT_URL_STS"}
    out = run(dict(env, AWS_REGION="ca-west-1", AWS_USE_FIPS_ENDPOINT="true", BEDROCK_BROKER_STS_TIMEOUT="2s"))
    assert out.returncode == 1, out.stdout
    assert "sts:      https://sts-fips.ca-west-1.amazonaws.com\n" in out.stderr, out.stderr


def test_a_silent_sts_names_the_timeout_to_look_at(irsa_env):
    # Accepted, never answered: a firewall or proxy swallowing the request.
    # "Could not be reached" sent operators to DNS and network policy.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        out = run(dict(irsa_env, AWS_ENDPOINT_URL_STS=f"http://127.0.0.1:{port}", BEDROCK_BROKER_STS_TIMEOUT="1s"))
    assert out.returncode == 1, out.stdout
    hint = next(line for line in out.stderr.splitlines() if "hint:" in line)
    assert "did not answer within --sts-timeout (BEDROCK_BROKER_STS_TIMEOUT)" in hint, out.stderr


def test_a_token_path_that_is_a_directory_is_called_that(irsa_env, token_dir):
    out = run(dict(irsa_env, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_dir.path.parent)))
    assert out.returncode == 1, out.stdout
    hint = next(line for line in out.stderr.splitlines() if "hint:" in line)
    assert "must name the token file itself" in hint, out.stderr


def test_paths_with_a_trailing_newline_name_their_file(irsa_env, tls_material):
    # A value from a ConfigMap's `|` block ends in a newline: the messages
    # named a file that looked right and "did not exist".
    env = dict(irsa_env, AWS_WEB_IDENTITY_TOKEN_FILE=irsa_env["AWS_WEB_IDENTITY_TOKEN_FILE"] + "\n",
               AWS_CA_BUNDLE=f" {tls_material['ca']}\n")
    out = run(env)
    assert out.returncode == 0, out.stderr
    assert "ok: credentials work" in out.stdout


def test_a_skewed_clock_is_named(irsa_env, fake_aws):
    # The first troubleshooting step for signatures AWS refuses; the
    # sidecar warns about it, the diagnosis said nothing.
    out = run(irsa_env)
    assert out.returncode == 0 and "clock:" not in out.stdout, out.stdout
    fake_aws.post("/sts", {"clock_offset_seconds": 120})
    out = run(irsa_env)
    assert out.returncode == 0, out.stderr
    clock = next(line for line in out.stdout.splitlines() if line.startswith("clock:"))
    assert "behind STS" in clock and "NTP" in clock, clock
    assert int(re.search(r"node is (\d+)s behind", clock).group(1)) in range(118, 123), clock


def test_an_api_key_is_not_claimed_to_work(fake_aws):
    # Nothing but Bedrock can check an API key; the command must not say
    # it checked one.
    out = run({"AWS_REGION": "us-east-1", "AWS_BEARER_TOKEN_BEDROCK": "ABSKZmFrZWtleQ=="})
    assert out.returncode == 0, out.stderr
    assert "credentials work" not in out.stdout
    assert "not checked" in out.stdout, out.stdout
    assert "ABSKZmFrZWtleQ==" not in out.stdout + out.stderr
    assert "no region" not in out.stdout
    # Without a region the sidecar would not know where to send requests.
    out = run({"AWS_BEARER_TOKEN_BEDROCK": "ABSKZmFrZWtleQ=="})
    assert out.returncode == 0 and "no region (AWS_REGION)" in out.stdout, out.stdout + out.stderr
    # A key pasted with its scheme would go out as `Bearer Bearer ...`.
    out = run({"AWS_REGION": "us-east-1", "AWS_BEARER_TOKEN_BEDROCK": "Bearer ABSKZmFrZWtleQ=="})
    assert out.returncode == 2 and "AWS_BEARER_TOKEN_BEDROCK" in out.stderr and "set the key alone" in out.stderr, out.stderr
    assert "ABSKZmFrZWtleQ==" not in out.stdout + out.stderr


def test_plain_http_sts_off_the_node_needs_the_flag_it_names(irsa_env):
    env = dict(irsa_env, AWS_ENDPOINT_URL_STS="http://sts.internal.invalid:8080")
    refused = run(env)
    assert refused.returncode == 2 and "--allow-plaintext-upstream" in refused.stderr, refused.stderr
    # With the flag the command goes on to STS (which is not there).
    allowed = run(env, "--allow-plaintext-upstream", "true")
    assert allowed.returncode == 1, allowed.stderr
    assert "STS could not be reached" in allowed.stderr, allowed.stderr
    # A value that is no boolean is named, not read as "no".
    bad = run(irsa_env, "--allow-plaintext-upstream", "maybe")
    assert bad.returncode == 2 and "--allow-plaintext-upstream" in bad.stderr and "maybe" in bad.stderr, bad.stderr


def test_sts_over_tls_is_trusted_through_aws_ca_bundle(irsa_env, fake_aws_tls, tls_material):
    # A TLS-inspecting proxy or a private STS endpoint: the CA bundle that
    # lets the sidecar reach Bedrock must let it reach STS as well.
    env = dict(irsa_env, AWS_ENDPOINT_URL_STS=fake_aws_tls.sts_tls)
    trusted = run(dict(env, AWS_CA_BUNDLE=str(tls_material["ca"])))
    assert trusted.returncode == 0, trusted.stderr
    assert "ok: credentials work" in trusted.stdout
    untrusted = run(env)
    assert untrusted.returncode == 1
    assert "UnknownIssuer" in untrusted.stderr, untrusted.stderr
    # The first error behind a TLS-inspecting proxy: it names the fix.
    hint = next(line for line in untrusted.stderr.splitlines() if "hint:" in line)
    assert "not trusted" in hint and "AWS_CA_BUNDLE" in hint, hint


def test_a_bundle_with_a_torn_certificate_is_refused_at_start(irsa_env, fake_aws_tls, tls_material, tmp_path):
    # One base64 line lost in a paste: PEM still, no certificate. The STS
    # client's TLS layer panicked on it (exit 101), the good CA beside it
    # or not.
    lines = tls_material["ca"].read_text().splitlines(keepends=True)
    torn = tmp_path / "torn.pem"
    torn.write_text(tls_material["ca"].read_text() + "".join(lines[:3] + lines[4:]))
    out = run(dict(irsa_env, AWS_ENDPOINT_URL_STS=fake_aws_tls.sts_tls, AWS_CA_BUNDLE=str(torn)))
    assert out.returncode == 2, out.stderr
    assert "panicked" not in out.stderr
    assert "AWS_CA_BUNDLE" in out.stderr and "certificate 2 of 2 cannot be read" in out.stderr, out.stderr


def test_a_region_typo_is_pointed_out(irsa_env):
    # The fake STS answers for any region name; against AWS the host built
    # from it would not resolve, with nothing pointing at the typo.
    out = run(dict(irsa_env, AWS_REGION="us-east1"))
    assert "warning: AWS_REGION" in out.stderr and "not shaped like an AWS region" in out.stderr, out.stderr
    assert "warning" not in run(irsa_env).stderr


def run_into_closed_pipe(env: dict[str, str], closed: str, *args: str) -> subprocess.CompletedProcess:
    """Runs the command with its stdout or stderr a pipe nobody reads any
    more, as in `bedrock-broker credentials | head -1` once head exits."""
    read, write = os.pipe()
    os.close(read)
    try:
        streams = {"stdout": write, "stderr": subprocess.PIPE}
        if closed == "stderr":
            streams = {"stdout": subprocess.PIPE, "stderr": write}
        return subprocess.run(
            [str(BINARY), "credentials", *args],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            text=True,
            timeout=60,
            **streams,
        )
    finally:
        os.close(write)


def test_a_reader_that_went_away_does_not_crash_the_report(irsa_env, fake_aws):
    out = run_into_closed_pipe(irsa_env, "stdout")
    # The diagnosis ran and succeeded; only its report had nowhere to go.
    assert out.returncode == 0, out.stderr
    assert "panicked" not in out.stderr
    assert [c["action"] for c in fake_aws.sts_calls()] == ["AssumeRoleWithWebIdentity", "GetCallerIdentity"]


def test_a_failure_with_stderr_gone_keeps_its_exit_status(irsa_env, fake_aws):
    fake_aws.configure_sts(fail_always=True, fail_code="AccessDenied")
    out = run_into_closed_pipe(irsa_env, "stderr")
    assert out.returncode == 1, out.stdout
    out = run_into_closed_pipe({}, "stderr")
    assert out.returncode == 2, out.stdout
