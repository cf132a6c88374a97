"""Error answers that quote the request back never hand the client the
pod's session token or the configured API key, however they escape it."""

from __future__ import annotations

import base64
import html
import json
import time
import urllib.parse
import uuid

import pytest
import requests

from test_auth_modes import BODY, CONVERSE

STYLES = ["json", "json-u", "html", "percent", "colon-space", "text"]
# base64, with every character an error body's encoder may escape.
CONFIGURED_KEY = "ABSKY29uZmlndXJlZC1rZXk+a2V5/d2l0aC1zbGFzaGVz+cGx1c2Vz/ZW5k=="


def views(text: str) -> list[str]:
    """What a reader can make of `text`: as it is, JSON-decoded, with HTML
    references and percent escapes undone, and all of these in turn."""
    out = [text]
    try:
        out.append(json.dumps(json.loads(text)))
        out.append(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        pass
    for v in list(out):
        out += [html.unescape(v), urllib.parse.unquote(v), urllib.parse.unquote(html.unescape(v))]
    return out


def assert_no_part_of(secret: str, text: str) -> None:
    # Any 20 characters of it would be a fragment given away.
    pieces = [secret[i:i + 20] for i in range(0, len(secret) - 19)]
    for view in views(text):
        leaked = [p for p in pieces if p in view]
        assert not leaked, f"{leaked[:3]} in {view!r}"


def session_token(fake_aws, tid: str) -> str:
    creds = {c["access_key_id"]: c for c in fake_aws.get("/credentials?include_secrets=1")}
    token = creds[fake_aws.request_for(tid)["access_key_id"]]["session_token"]
    assert "+" in token and "/" in token
    return token


# No secret, though real session tokens hold a run of slashes too.
SLASHES = "a////////////////b"


def echoed(sidecar, style: str, status: int, extra: dict | None = None) -> tuple[str, requests.Response]:
    tid = uuid.uuid4().hex
    headers = {"content-type": "application/json", "x-test-id": tid, "x-fake-echo-headers": style,
               "x-fake-status": str(status), "x-note": SLASHES, **(extra or {})}
    r = requests.post(sidecar.url(CONVERSE), data=BODY, headers=headers, timeout=30)
    return tid, r


def assert_error_passes_through(r: requests.Response, style: str, status: int) -> None:
    assert r.status_code == status, r.text
    assert "x-bedrock-broker-error" not in r.headers, r.headers
    assert "fake relay refused the request; it was sent with" in r.text
    assert "x-test-id" in r.text, "the rest of the echo must pass"
    assert any(SLASHES in v for v in views(r.text)), r.text
    if style != "text":
        kind = "AccessDeniedException" if status == 403 else "InternalServerException"
        assert r.headers["x-amzn-errortype"] == kind
        assert r.json()["code"] == kind


@pytest.mark.parametrize("status", [403, 500])
@pytest.mark.parametrize("style", STYLES)
def test_an_error_quoting_the_request_never_shows_the_session_token(start_sidecar, irsa_env, fake_aws, style, status):
    sidecar = start_sidecar(irsa_env)
    tid, r = echoed(sidecar, style, status)
    assert_error_passes_through(r, style, status)
    assert fake_aws.request_for(tid)["auth_kind"] == "sigv4"
    assert_no_part_of(session_token(fake_aws, tid), r.text)
    assert "** redacted **" in r.text
    if style == "json":
        assert "x-amz-security-token: ** redacted **\n" in r.json()["message"].lower()


@pytest.mark.parametrize("status", [403, 500])
@pytest.mark.parametrize("style", STYLES)
def test_an_error_quoting_the_request_never_shows_the_configured_key(start_sidecar, irsa_env, fake_aws, style, status):
    sidecar = start_sidecar({**irsa_env, "AWS_BEARER_TOKEN_BEDROCK": CONFIGURED_KEY})
    tid, r = echoed(sidecar, style, status)
    assert_error_passes_through(r, style, status)
    assert fake_aws.request_for(tid)["bearer_token"] == CONFIGURED_KEY
    assert_no_part_of(CONFIGURED_KEY, r.text)
    assert "** redacted **" in r.text


def short_term_key() -> str:
    """A short-term key shaped as AWS's token generators mint them: a
    presigned URL, base64, after a public prefix."""
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    url = ("bedrock.amazonaws.com/?Action=CallWithBearerToken&X-Amz-Algorithm=AWS4-HMAC-SHA256"
           f"&X-Amz-Credential=ASIAEXAMPLE%2F{now[:8]}%2Fus-east-1%2Fbedrock%2Faws4_request&X-Amz-Date={now}"
           f"&X-Amz-Expires=43200&X-Amz-Security-Token={uuid.uuid4().hex * 4}"
           f"&X-Amz-Signature={uuid.uuid4().hex * 2}&Version=1")
    return "bedrock-api-key-" + base64.b64encode(url.encode()).decode()


def assert_cut_echo_passes_through(r: requests.Response, status: int, tid: str, cut: str) -> None:
    assert r.status_code == status, r.text
    assert "x-bedrock-broker-error" not in r.headers, r.headers
    # Ordinary words that happen to be in a key's public prefix stay.
    assert "fake bedrock-runtime relay refused the request; it saw (cut)" in r.text
    assert "** redacted **" in r.text
    if cut.startswith("0:"):
        # What is no secret stays: the test id, hex, is written alike in
        # every style.
        assert f"[{tid}]" in r.text, r.text
        assert any(f"[{SLASHES}]" in v for v in views(r.text)), r.text


@pytest.mark.parametrize("cut", ["0:60", "37:45"])
@pytest.mark.parametrize("style", STYLES)
def test_a_piece_of_the_session_token_quoted_without_its_name_is_blanked(start_sidecar, irsa_env, fake_aws, style, cut):
    """A relay's log line cut to a width quotes a piece of a value, and no
    header name before it: neither the whole token nor its label is there
    to find."""
    sidecar = start_sidecar(irsa_env)
    tid, r = echoed(sidecar, style, 500, {"x-fake-echo-cut": cut})
    assert_cut_echo_passes_through(r, 500, tid, cut)
    assert fake_aws.request_for(tid)["auth_kind"] == "sigv4"
    assert_no_part_of(session_token(fake_aws, tid), r.text)


@pytest.mark.parametrize("cut", ["0:40", "30:30"])
@pytest.mark.parametrize("key", ["long-term", "short-term"])
def test_a_piece_of_the_configured_key_quoted_without_its_name_is_blanked(start_sidecar, irsa_env, fake_aws, key, cut):
    configured = CONFIGURED_KEY if key == "long-term" else short_term_key()
    sidecar = start_sidecar({**irsa_env, "AWS_BEARER_TOKEN_BEDROCK": configured})
    tid, r = echoed(sidecar, "json-u", 403, {"x-fake-echo-cut": cut})
    assert_cut_echo_passes_through(r, 403, tid, cut)
    assert fake_aws.request_for(tid)["bearer_token"] == configured
    assert_no_part_of(configured, r.text)


def test_the_clients_own_key_is_no_secret_from_it(start_sidecar, irsa_env, fake_aws):
    # The client sent it: blanking it would only hide what the relay saw.
    own = "ABSKY2xpZW50LWtleQ+b3du/a2V5=="
    sidecar = start_sidecar({**irsa_env, "AWS_BEARER_TOKEN_BEDROCK": CONFIGURED_KEY})
    tid, r = echoed(sidecar, "json", 403, {"authorization": f"Bearer {own}"})
    assert_error_passes_through(r, "json", 403)
    assert fake_aws.request_for(tid)["bearer_token"] == own
    assert f"Bearer {own}" in r.json()["message"]


def test_a_signature_error_typed_only_in_its_body_never_shows_the_session_token(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env)
    tid = uuid.uuid4().hex
    r = requests.post(sidecar.url(CONVERSE), data=BODY, timeout=30, headers={
        "content-type": "application/json", "x-test-id": tid, "x-fake-sigv4-mismatch": "type-in-body",
    })
    assert r.status_code == 403
    assert r.json()["__type"] == "InvalidSignatureException"
    assert "The Canonical String for this request should have been" in r.json()["message"]
    assert_no_part_of(session_token(fake_aws, tid), r.text)


def test_an_echo_the_app_makes_longer_than_the_limit_is_withheld(start_sidecar, irsa_env, fake_aws):
    """The app can make an echo of its own request longer than the 64 KiB
    the proxy holds (a long header, escaped six times over): said to be
    that long, it streamed through unblanked, the session token with it."""
    sidecar = start_sidecar(irsa_env)
    tid, r = echoed(sidecar, "json-u", 500, {f"x-pad-{i}": "+" * 7000 for i in range(4)})
    assert len(r.content) < 64 * 1024, len(r.content)
    assert r.status_code == 500
    assert r.headers["x-bedrock-broker-error"] == "error_body_withheld", r.headers
    assert_no_part_of(session_token(fake_aws, tid), r.text)


@pytest.mark.parametrize("cut", [None, "37:45"])
@pytest.mark.parametrize("secret", ["session token", "configured key"])
def test_an_error_quoting_the_request_in_a_header_never_shows_the_secret(start_sidecar, irsa_env, fake_aws, secret, cut):
    """A relay's debugging header may quote the request's headers, whole or
    cut, as its error body does; the app reads headers as it reads bodies."""
    env = irsa_env if secret == "session token" else {**irsa_env, "AWS_BEARER_TOKEN_BEDROCK": CONFIGURED_KEY}
    sidecar = start_sidecar(env)
    extra = {"x-fake-echo-into-header": "x-relay-saw", **({"x-fake-echo-cut": cut} if cut else {})}
    tid, r = echoed(sidecar, "json", 500, extra)
    assert r.status_code == 500, r.text
    assert "x-bedrock-broker-error" not in r.headers, r.headers
    quoted = r.headers["x-relay-saw"]
    value = session_token(fake_aws, tid) if secret == "session token" else CONFIGURED_KEY
    assert_no_part_of(value, quoted)
    assert_no_part_of(value, r.text)
    assert "** redacted **" in quoted, quoted
    if cut is None:
        # What is no secret stays, in the header as in the body.
        assert f"x-test-id: {tid}" in quoted and f"x-note: {SLASHES}" in quoted, quoted
    assert r.headers["x-amzn-errortype"] == "InternalServerException"
