"""Credential lifecycle against the fake STS: short lifetimes, failures, rotation."""

from __future__ import annotations

import os
import time
import uuid

import openai
import pytest

from conftest import ROLE_ARN, Collector, make_jwt, wait_for
from test_soak import peak_rss_mib
from test_sdk_clients import MODEL_WITH_COLON, bedrock_client, openai_client

FAST = ["--refresh-max-backoff", "500ms"]


def converse(sidecar, tid: str):
    client = bedrock_client(sidecar)

    def add(request, **_):
        request.headers["x-test-id"] = tid

    client.meta.events.register_first("before-sign.bedrock-runtime.*", add)
    return client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])


def expect_expired_token(client) -> None:
    """One Converse that Bedrock's ExpiredTokenException must come back from:
    the rejection passed through, not a wait or a retry that hides it."""
    with pytest.raises(client.exceptions.ClientError) as e:
        client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert e.value.response["Error"]["Code"] == "ExpiredTokenException"


def traffic(sidecar, seconds: float) -> list[str]:
    """Sends requests back to back for a bounded time; returns their test ids."""
    ids = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(ids) < 2000:
        tid = uuid.uuid4().hex
        converse(sidecar, tid)  # raises on any failure
        ids.append(tid)
    return ids


def test_refreshes_credentials_that_live_for_seconds_without_failing_a_request(start_sidecar, irsa_env, fake_aws):
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(irsa_env, FAST)
    ids = traffic(sidecar, 8)
    records = fake_aws.requests()
    assert len(records) == len(ids)
    assert all(r["verified"] and r["status"] == 200 for r in records), [r for r in records if r["status"] != 200][:3]
    keys = {r["access_key_id"] for r in records}
    assert len(keys) >= 3, f"expected several credential generations, saw {keys}"
    calls = fake_aws.sts_calls()
    assert all(c["role_arn"] == ROLE_ARN and c["role_session_name"] == "e2e-session" for c in calls)
    assert sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "success"}) >= 3
    assert sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) == 0
    expiry = sidecar.metric("bedrock_broker_credentials_expiry_timestamp_seconds")
    assert time.time() - 1 < expiry <= time.time() + 3
    assert sidecar.stop() == 0


def test_keeps_serving_while_sts_fails_then_recovers(start_sidecar, irsa_env, fake_aws):
    # Long enough for three retries a second apart (the refresher's minimum
    # interval between STS calls) before the credentials expire.
    fake_aws.configure_sts(lifetime_seconds=10)
    sidecar = start_sidecar(irsa_env, FAST)
    fake_aws.configure_sts(fail_next=3, fail_code="IDPCommunicationError")
    wait_for(
        lambda: sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) >= 3,
        timeout=15,
        what="three failed refreshes",
    )
    # Old credentials are still valid: requests keep working throughout.
    traffic(sidecar, 1)
    wait_for(lambda: sidecar.metric("bedrock_broker_credential_refresh_consecutive_failures") == 0, timeout=15, what="recovery")
    assert sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "transient"}) >= 3
    assert all(r["status"] == 200 for r in fake_aws.requests())
    assert sidecar.ready().status_code == 200


def test_cold_start_answers_503_and_never_sends_unsigned(start_sidecar, irsa_env, fake_aws):
    fake_aws.configure_sts(fail_always=True, fail_code="AccessDenied")
    sidecar = start_sidecar(irsa_env, FAST, wait_ready=False)
    wait_for(lambda: sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) >= 1, what="a failed refresh")

    ready = sidecar.ready()
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert "AccessDenied" in ready.json()["last_error"]

    with pytest.raises(openai.APIStatusError) as e:
        openai_client(sidecar).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503
    assert e.value.response.headers["x-bedrock-broker-error"] == "no_credentials"
    assert e.value.body["code"] == "no_credentials"
    # A condition that passes: SDKs that honour it retry after a second.
    assert e.value.response.headers["retry-after"] == "1"

    client = bedrock_client(sidecar)
    with pytest.raises(client.exceptions.ServiceUnavailableException):
        client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert fake_aws.requests() == [], "nothing may reach Bedrock without credentials"
    assert sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "fatal"}) >= 1

    fake_aws.configure_sts(fail_always=False)
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=15, what="readiness after STS recovers")
    converse(sidecar, uuid.uuid4().hex)


def test_a_call_made_before_the_first_credentials_waits_for_them(start_sidecar, irsa_env, fake_aws):
    # Containers of a pod start together (classic mode, or an app that
    # does not wait for readiness): the app's first call can beat STS's
    # first answer. It waits for that answer instead of failing at once,
    # and the SDK is told to make no retry of its own.
    fake_aws.configure_sts(delay_seconds=2)
    sidecar = start_sidecar(irsa_env, FAST, wait_ready=False)
    assert sidecar.ready().status_code == 503, "the first credentials are still on their way"
    resp = openai_client(sidecar).chat.completions.create(
        model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "first call"}])
    assert "first call" in resp.choices[0].message.content
    assert len(fake_aws.sts_calls()) == 1


def test_expired_credentials_are_never_used(start_sidecar, irsa_env, fake_aws):
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(irsa_env, FAST)
    fake_aws.configure_sts(fail_always=True, fail_code="InternalFailure", fail_status=500)
    wait_for(lambda: sidecar.ready().status_code == 503, timeout=10, what="credentials to expire")
    client = bedrock_client(sidecar)
    before = len(fake_aws.requests())
    with pytest.raises(client.exceptions.ServiceUnavailableException) as e:
        client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-bedrock-broker-error"] == "credentials_expired"
    assert len(fake_aws.requests()) == before
    fake_aws.configure_sts(fail_always=False)
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=10, what="recovery")


def test_rereads_the_token_file_after_kubelet_rotation(start_sidecar, irsa_env, fake_aws, token_dir):
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(irsa_env, FAST)
    first_token = token_dir.path.read_text()
    new_token = make_jwt(exp=time.time() + 7200, marker="rotated")
    # From now on only the new token is valid; the old one is "expired".
    fake_aws.configure_sts(accept_tokens=[new_token])
    token_dir.write(new_token)
    wait_for(lambda: any(c.get("token") == new_token and c.get("result") == "ok" for c in fake_aws.sts_calls()), timeout=10, what="STS call with the rotated token")
    assert any(c.get("token") == first_token for c in fake_aws.sts_calls())
    converse(sidecar, uuid.uuid4().hex)
    token_exp = sidecar.metric("bedrock_broker_web_identity_token_expiry_timestamp_seconds")
    wait_for(lambda: sidecar.metric("bedrock_broker_web_identity_token_expiry_timestamp_seconds") > time.time() + 3600, timeout=10, what="token expiry gauge update")
    assert token_exp is not None


def test_rejected_token_is_classified_and_retried(start_sidecar, irsa_env, fake_aws, token_dir):
    good = make_jwt(marker="good")
    fake_aws.configure_sts(accept_tokens=[good])
    sidecar = start_sidecar(irsa_env, FAST, wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "token"}) or 0) >= 1, what="token error")
    assert sidecar.ready().status_code == 503
    token_dir.write(good)
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=10, what="readiness with a valid token")


def test_static_credentials_for_local_development(start_sidecar, fake_aws):
    fake_aws.post("/static_keys", {"access_key_id": "AKIDSTATICDEV", "secret_access_key": "static-dev-secret"})
    sidecar = start_sidecar({
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDSTATICDEV",
        "AWS_SECRET_ACCESS_KEY": "static-dev-secret",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    })
    tid = uuid.uuid4().hex
    converse(sidecar, tid)
    record = fake_aws.request_for(tid)
    assert record["access_key_id"] == "AKIDSTATICDEV" and record["verified"]
    assert sidecar.metric("bedrock_broker_credentials_expiry_timestamp_seconds") == float("inf")
    assert fake_aws.sts_calls() == []


def test_request_rejected_as_expired_is_retried_once_with_fresh_credentials(start_sidecar, irsa_env, fake_aws):
    """Credentials revoked or expired early on the AWS side: the sidecar heals the request."""
    sidecar = start_sidecar(irsa_env, FAST)
    first = converse(sidecar, uuid.uuid4().hex)
    assert first["output"]
    calls_before = len(fake_aws.sts_calls())
    fake_aws.post("/credentials/expire", {})  # every STS credential is now expired at the fake
    tid = uuid.uuid4().hex
    converse(sidecar, tid)  # must succeed
    attempts = fake_aws.get(f"/bedrock/requests?test_id={tid}")
    assert [a["status"] for a in attempts] == [403, 200], attempts
    assert attempts[0]["access_key_id"] != attempts[1]["access_key_id"]
    assert len(fake_aws.sts_calls()) == calls_before + 1
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "retried"}) == 1


def test_keys_refused_even_fresh_from_sts_cost_one_refresh_not_one_per_request(start_sidecar, irsa_env, fake_aws):
    # An account that has not enabled the (opt-in) region: Bedrock refuses
    # every key STS issues. One refresh shows that; a refresh per rejected
    # request called STS every second from every pod, and hid it at INFO.
    sidecar = start_sidecar(irsa_env, FAST)
    fake_aws.post("/bedrock", {"region_enabled": False})
    calls_before = len(fake_aws.sts_calls())
    client = bedrock_client(sidecar)
    for _ in range(5):
        with pytest.raises(client.exceptions.ClientError) as e:
            client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
        assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert len(fake_aws.sts_calls()) == calls_before + 1
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "retried"}) == 1
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 4
    warned = [line for line in sidecar.log_text().splitlines() if "rejected credentials just obtained" in line]
    assert len(warned) == 1 and "UnrecognizedClientException" in warned[0], warned


def test_rejection_is_passed_through_when_no_fresher_credentials_come(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, FAST + ["--sts-timeout", "1s"])
    fake_aws.configure_sts(fail_always=True, fail_code="InternalFailure", fail_status=500)
    fake_aws.post("/credentials/expire", {})
    client = bedrock_client(sidecar)
    expect_expired_token(client)
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 1


def test_a_rejection_is_passed_through_as_soon_as_the_refresh_it_asked_for_fails(start_sidecar, irsa_env, fake_aws):
    # STS failing at once: waiting on for the self-heal window (here a
    # minute, --sts-timeout plus a second) only holds the app's request.
    sidecar = start_sidecar(irsa_env, FAST + ["--sts-timeout", "60s"])
    fake_aws.configure_sts(fail_always=True, fail_code="InternalFailure", fail_status=500)
    fake_aws.post("/credentials/expire", {})
    client = bedrock_client(sidecar, read_timeout=20)
    expect_expired_token(client)
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 1


def test_requests_rejected_while_sts_fails_do_not_call_it_again(start_sidecar, irsa_env, fake_aws):
    # Revoked credentials during an STS outage: every request Bedrock
    # rejected asked for a refresh, and each ask cut the backoff, so STS
    # was called once a second (and each request held until that call
    # failed) for as long as the app kept calling.
    sidecar = start_sidecar(irsa_env, ["--sts-timeout", "60s"])
    fake_aws.configure_sts(fail_always=True, fail_code="InternalFailure", fail_status=500)
    fake_aws.post("/credentials/expire", {})
    client = bedrock_client(sidecar, read_timeout=20)
    before = len(fake_aws.sts_calls())
    expect_expired_token(client)  # asks; the refresh it asked for fails
    assert len(fake_aws.sts_calls()) == before + 1
    for _ in range(10):
        expect_expired_token(client)
    # The backoff's own retries only (the first waits at least a second):
    # not one call per request.
    assert len(fake_aws.sts_calls()) <= before + 3, fake_aws.sts_calls()[before:]
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 11


def test_a_token_rotated_to_one_without_exp_leaves_no_stale_expiry(start_sidecar, irsa_env, fake_aws, token_dir):
    # The gauge is the token's `exp`: after a rotation to a token that has
    # none (an opaque token from another issuer), the old time would read as
    # the current token's, hours off.
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(irsa_env, FAST)
    name = "bedrock_broker_web_identity_token_expiry_timestamp_seconds"
    assert sidecar.metric(name) is not None
    opaque = "opaque-token-without-claims-" + uuid.uuid4().hex
    fake_aws.configure_sts(accept_tokens=[opaque])
    token_dir.write(opaque)
    wait_for(lambda: any(c.get("token") == opaque and c.get("result") == "ok" for c in fake_aws.sts_calls()),
             timeout=10, what="STS call with the opaque token")
    wait_for(lambda: sidecar.metric(name) is None, timeout=10, what="the old token's expiry to go")


def test_a_token_rotated_during_an_sts_outage_shows_its_expiry(start_sidecar, irsa_env, fake_aws, token_dir):
    # Whether the kubelet still rotates the token is the first question in an
    # STS outage ("is it the token or STS?"): the gauge follows the token the
    # sidecar read, not only the last one STS accepted.
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(irsa_env, FAST)
    name = "bedrock_broker_web_identity_token_expiry_timestamp_seconds"
    before = sidecar.metric(name)
    fake_aws.configure_sts(fail_always=True, fail_code="InternalFailure", fail_status=500)
    exp = int(time.time()) + 7200
    rotated = make_jwt(exp=exp, marker="rotated-in-outage")
    token_dir.write(rotated)
    wait_for(lambda: any(c.get("token") == rotated for c in fake_aws.sts_calls()),
             timeout=10, what="STS called with the rotated token")
    assert before is not None and before != exp
    wait_for(lambda: sidecar.metric(name) == exp, timeout=10, what="the rotated token's expiry")
    assert sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) >= 1


def test_rejected_static_keys_are_passed_through_without_waiting(start_sidecar, fake_aws):
    # Static temporary keys (local development) that expire or are revoked:
    # nothing can refresh them, so Bedrock's 403 goes back at once instead of
    # after --sts-timeout plus a second, holding a request slot meanwhile.
    issued = fake_aws.get("/credentials?include_secrets=1")
    before = {c["access_key_id"] for c in issued}
    # A pair of temporary keys from the fake's STS, as `aws sts` would give.
    fake_aws.http.post(fake_aws.sts, data={"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                                                  "RoleArn": ROLE_ARN, "RoleSessionName": "dev",
                                                  "WebIdentityToken": make_jwt()}, timeout=10).raise_for_status()
    keys = next(c for c in fake_aws.get("/credentials?include_secrets=1") if c["access_key_id"] not in before)
    sidecar = start_sidecar({
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": keys["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": keys["secret_access_key"], "AWS_SESSION_TOKEN": keys["session_token"],
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_aws.bedrock,
    }, ["--sts-timeout", "120s"])
    client = bedrock_client(sidecar)  # reads for at most 30 s
    client.converse(modelId=MODEL_WITH_COLON, messages=[{"role": "user", "content": [{"text": "x"}]}])
    fake_aws.post("/credentials/expire", {"access_key_id": keys["access_key_id"]})
    # Held for --sts-timeout plus a second (121 s), the answer would reach
    # the client after its 30 s read timeout, as a ReadTimeoutError.
    expect_expired_token(client)
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 1


def test_rejections_are_passed_through_at_once_while_sts_throttles(start_sidecar, irsa_env, fake_aws):
    # A throttled refresher waits its backoff out, whatever asks: a request
    # Bedrock rejected must not wait --sts-timeout plus a second for
    # credentials that cannot come sooner, holding its slot and body.
    fake_aws.configure_sts(lifetime_seconds=20)
    sidecar = start_sidecar(irsa_env, ["--sts-timeout", "120s"])
    fake_aws.configure_sts(fail_always=True, fail_code="Throttling", fail_status=400)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "transient"}) or 0) >= 1,
             timeout=20, what="a throttled refresh")
    fake_aws.post("/credentials/expire", {})
    client = bedrock_client(sidecar)  # reads for at most 30 s
    # Held for the self-heal wait (121 s), the answer would reach the client
    # after its read timeout, as a ReadTimeoutError.
    expect_expired_token(client)
    assert sidecar.metric("bedrock_broker_upstream_auth_retries_total", {"result": "gave_up"}) == 1


def test_a_rejection_whose_refresh_is_throttled_is_passed_through(start_sidecar, irsa_env, fake_aws):
    # The usual order: Bedrock rejects the credentials, the refresh that
    # asks for is throttled. The request waiting for it is let go then.
    sidecar = start_sidecar(irsa_env, ["--sts-timeout", "120s"])
    fake_aws.configure_sts(fail_always=True, fail_code="Throttling", fail_status=400)
    fake_aws.post("/credentials/expire", {})
    client = bedrock_client(sidecar)  # reads for at most 30 s
    expect_expired_token(client)
    assert sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "transient"}) == 1
    assert sidecar.metric("bedrock_broker_credential_refresh_throttled_total") == 1


def test_token_rotation_with_healthy_credentials_waits_for_the_next_refresh(start_sidecar, irsa_env, fake_aws, token_dir):
    """A rotation hurries only a failing refresh: refreshing at every rotation brought back the
    refresh waves of pods started together (docs/fleet.md); the next scheduled refresh reads the new token."""
    fake_aws.configure_sts(lifetime_seconds=3600)
    sidecar = start_sidecar(irsa_env)
    assert len(fake_aws.sts_calls()) == 1
    token_dir.write(make_jwt(exp=time.time() + 7200, marker="rotated-long"))
    wait_for(lambda: "web identity token rotated" in sidecar.log_text(), what="the rotation to be noticed")
    assert len(fake_aws.sts_calls()) == 1
    assert sidecar.ready().status_code == 200


def test_a_rotated_token_is_tried_at_once_while_refreshes_fail(start_sidecar, irsa_env, fake_aws, token_dir):
    good = make_jwt(marker="good-after-rotation")
    fake_aws.configure_sts(accept_tokens=[good])
    # Default backoff: after three token errors the next retry may be 16 s away.
    sidecar = start_sidecar(irsa_env, wait_ready=False)
    wait_for(
        lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "token"}) or 0) >= 3,
        timeout=20,
        what="three token errors",
    )
    token_dir.write(good)
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=3, what="readiness right after the rotation")


def test_a_node_clock_ahead_of_sts_is_measured_from_its_answers(start_sidecar, irsa_env, fake_aws):
    # STS's clock two minutes behind this machine's: the skew comes from the
    # Date header of the real SDK's STS answer.
    fake_aws.configure_sts(clock_offset_seconds=-120)
    sidecar = start_sidecar(irsa_env)
    skew = sidecar.metric("bedrock_broker_clock_skew_seconds")
    assert skew is not None and 115 <= skew <= 125, skew
    # Told once, with what to check.
    assert sidecar.log_text().count("differs from STS's") == 1
    assert "NTP" in sidecar.log_text()


def test_a_clock_that_breaks_a_chained_role_is_measured_and_named(start_sidecar, irsa_env, fake_aws):
    # The node 400 s ahead of STS: the web identity hop (unsigned) works,
    # the chained AssumeRole (signed) is refused "Signature expired" every
    # time. The skew comes from the refusals, and the hint names the clock,
    # not the keys.
    fake_aws.configure_sts(clock_offset_seconds=-400)
    chained = "arn:aws:iam::210987654321:role/chained"
    sidecar = start_sidecar(dict(irsa_env, BEDROCK_BROKER_CHAIN_ROLE_ARN=chained), wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) or 0) >= 1,
             timeout=20, what="a failed refresh")
    skew = sidecar.metric("bedrock_broker_clock_skew_seconds")
    assert skew is not None and 395 <= skew <= 405, skew
    failure = next(line for line in sidecar.log_text().splitlines() if "credential refresh failed" in line)
    assert "Signature expired" in failure and "NTP" in failure, failure
    assert "secret key" not in failure, failure


def test_a_failed_token_read_is_not_taken_for_clock_skew(start_sidecar, irsa_env, fake_aws, token_dir):
    # The refresh after a success fails before STS is called: no answer,
    # so no skew reading. Taking the last success's Date for this attempt's
    # made the seconds since then read as the node's clock being ahead.
    fake_aws.configure_sts(lifetime_seconds=8)
    sidecar = start_sidecar(irsa_env, FAST)
    token_dir.path.unlink()
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "token"}) or 0) >= 1,
             timeout=20, what="a refresh that cannot read the token")
    skew = sidecar.metric("bedrock_broker_clock_skew_seconds")
    # The refresh came 2.4 s or more after the success; a real reading on
    # this machine is within the Date header's second.
    assert skew is not None and abs(skew) <= 1.5, skew


def test_an_honest_clock_shows_no_skew(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env)
    skew = sidecar.metric("bedrock_broker_clock_skew_seconds")
    assert skew is not None and abs(skew) <= 3, skew
    assert "differs from STS's" not in sidecar.log_text()


def test_on_one_cpu_refresh_streams_and_requests_share_one_thread(start_sidecar, irsa_env, fake_aws):
    """A CPU limit under two cores (or a pinned container) gives the sidecar
    tokio's current-thread scheduler: the refresher, a held-open stream,
    new requests and the admin port all take turns on one thread."""
    fake_aws.configure_sts(lifetime_seconds=3)
    sidecar = start_sidecar(irsa_env, FAST, cpus={0})
    line = sidecar.listening_line()
    assert (line["scheduler"], line["workers"]) == ("CurrentThread", 1), line

    sid = "one-cpu-" + uuid.uuid4().hex
    stream = openai_client(sidecar).chat.completions.create(
        model="openai.gpt-oss-20b-1:0",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        extra_headers={"x-fake-lockstep": sid, "x-fake-chunks": "2"},
    )
    reader = Collector(stream)
    reader.start()
    reader.wait_count(1, timeout=10)
    ids = traffic(sidecar, 5)
    fake_aws.release(sid)
    reader.join(timeout=10)
    assert reader.error is None, reader.error
    assert fake_aws.stream(sid)["finished"] is True

    records = fake_aws.requests()
    assert len(records) == len(ids) + 1
    assert all(r["verified"] and r["status"] == 200 for r in records)
    assert len({r["access_key_id"] for r in records}) >= 2, "no refresh happened while serving"
    assert sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "failure"}) == 0
    assert sidecar.stop() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_on_two_cpus_the_sidecar_uses_a_worker_per_core(start_sidecar, irsa_env, fake_aws):
    sidecar = start_sidecar(irsa_env, cpus=set(sorted(os.sched_getaffinity(0))[:2]))
    line = sidecar.listening_line()
    assert (line["scheduler"], line["workers"]) == ("MultiThread", 2), line
    converse(sidecar, uuid.uuid4().hex)
    assert sidecar.stop() == 0


def test_an_sts_answer_past_any_real_size_is_refused_not_read_whole(start_sidecar, irsa_env, fake_aws):
    """An STS (or a relay in its place) padding a valid answer with 200 MiB:
    read whole, it took the sidecar past the 128 MiB limit the injector
    sets, an OOM kill at every restart. STS's answers are about 2 KiB."""
    fake_aws.post("/sts", {"pad_answer_bytes": 200 * 1024 * 1024})
    sidecar = start_sidecar(irsa_env, wait_ready=False)
    failures = {"result": "failure"}
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refreshes_total", failures) or 0) >= 1, timeout=20,
             what="the oversized answer refused")
    assert sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "success"}) == 0
    refused = sidecar.ready()
    assert refused.status_code == 503
    assert "length limit exceeded" in refused.json()["last_error"], refused.json()
    assert peak_rss_mib(sidecar.proc.pid) < 128
    # An answer of a normal size works as ever.
    fake_aws.post("/sts", {"pad_answer_bytes": 0})
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=20, what="ready on a normal answer")


def test_a_credential_field_quoted_by_the_parser_is_blanked(start_sidecar, irsa_env, fake_aws):
    """A 200 whose secret key the SDK cannot read: its parser's message
    quoted the key itself, into the log, /readyz and `credentials`."""
    fake_aws.post("/sts", {"garbled_secret": True})
    sidecar = start_sidecar(irsa_env, FAST, wait_ready=False)
    wait_for(lambda: "answer not understood" in (sidecar.ready().json().get("last_error") or ""), timeout=20,
             what="the unreadable answer reported")
    error = sidecar.ready().json()["last_error"]
    assert "escape" in error and "** redacted **" in error, error
    secrets = [c["secret_access_key"] for c in fake_aws.get("/credentials?include_secrets=1") if c["kind"] == "sts"]
    assert secrets
    sidecar.stop()
    for secret in secrets:
        assert secret not in error and secret not in sidecar.log_text()


def test_a_success_that_is_no_sts_answer_is_retried_soon_and_named(start_sidecar, irsa_env, fake_aws):
    """A 200 the SDK cannot read (a proxy's login page, a cut answer) was
    `fatal`, retried minutes apart like an IAM problem, with an error that
    hid what was wrong with it."""
    fake_aws.post("/sts", {"html_answer": True})
    sidecar = start_sidecar(irsa_env, FAST, wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "transient"}) or 0) >= 1,
             timeout=20, what="the unreadable answer classified")
    assert sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "fatal"}) is None
    assert "HTTP 200 answer not understood" in sidecar.ready().json()["last_error"]
    fake_aws.post("/sts", {"html_answer": False})
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=20, what="ready once STS answers")


def test_the_sts_round_trip_histogram_counts_only_sts_calls(start_sidecar, irsa_env, fake_aws, tmp_path):
    """An attempt that stopped at a missing token file made no STS call:
    counted in the round-trip histogram, its microseconds dragged the STS
    latency down just while the mount was broken."""
    token = tmp_path / "not-yet" / "token"
    env = {**irsa_env, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token)}
    sidecar = start_sidecar(env, FAST, wait_ready=False)
    wait_for(lambda: (sidecar.metric("bedrock_broker_credential_refresh_errors_total", {"class": "token"}) or 0) >= 2,
             timeout=20, what="two attempts stopped at the token file")
    assert fake_aws.sts_calls() == []
    assert sidecar.metric("bedrock_broker_credential_refresh_duration_seconds_count") == 0
    token.parent.mkdir()
    token.write_text(make_jwt())
    wait_for(lambda: sidecar.ready().status_code == 200, timeout=20, what="ready once the token is there")
    assert sidecar.metric("bedrock_broker_credential_refresh_duration_seconds_count") == len(fake_aws.sts_calls()) == 1
