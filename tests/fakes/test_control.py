"""The control API's own rules: what it lists, the keys it accepts, and what reset restores."""

from __future__ import annotations

from harness import HTTP, Fake, bedrock_requests, control, control_status, send


def test_credentials_listing_hides_secrets_unless_asked(fake: Fake, sts_creds: dict):
    # STS-issued credentials survive /reset, so pick ours out of the list.
    def mine(path: str) -> dict:
        (cred,) = [c for c in control(fake, "GET", path) if c["access_key_id"] == sts_creds["AccessKeyId"]]
        return cred

    plain = mine("/credentials")
    assert plain["kind"] == "sts" and not plain["expired"] and "secret_access_key" not in plain
    full = mine("/credentials?include_secrets=1")
    assert full["secret_access_key"] == sts_creds["SecretAccessKey"] and full["session_token"] == sts_creds["SessionToken"]


def test_control_rejects_unknown_keys(fake: Fake):
    assert control_status(fake, "POST", "/sts", {"lifetime": 3}) == 400
    assert control_status(fake, "POST", "/sts", {"fail_code": "Nope"}) == 400
    assert control_status(fake, "POST", "/bedrock", {"signing": "x"}) == 400
    assert control_status(fake, "POST", "/stream/release", {}) == 400
    assert HTTP.request("GET", fake.control + "/stream/nope").status == 404


def test_reset_restores_defaults(fake: Fake, static_creds: dict):
    control(fake, "POST", "/sts", {"fail_always": True, "lifetime_seconds": 5})
    control(fake, "POST", "/bearer_tokens", {"tokens": ["x"]})
    control(fake, "POST", "/reset", {})
    cfg = control(fake, "GET", "/sts")
    assert cfg["fail_always"] is False and cfg["lifetime_seconds"] is None
    assert control(fake, "GET", "/sts/calls") == [] and bedrock_requests(fake) == []
    assert send(f"{fake.bedrock}/openai/v1/models", b"", {"Authorization": "Bearer ABSK1"}, method="GET").status == 200
    keys = [c["access_key_id"] for c in control(fake, "GET", "/credentials")]
    assert static_creds["AccessKeyId"] not in keys
