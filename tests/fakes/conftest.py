"""Fixtures of the tests of the fakes: one fake_aws process (and one with TLS) for the run, reset before each test."""

from __future__ import annotations

import os
import sys

import pytest

from harness import Fake, assume, control, start_fake, stop_fake


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory):
    f = start_fake(tmp_path_factory.mktemp("fake"), "--h2-port", "0")
    yield f
    stop_fake(f)
    if os.environ.get("FAKE_AWS_SHOW_LOG"):
        print(f.stderr(), file=sys.stderr)


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest):
    if "fake" in request.fixturenames:
        control(request.getfixturevalue("fake"), "POST", "/reset", {})
    yield


@pytest.fixture
def sts_creds(fake: Fake) -> dict:
    return assume(fake)["Credentials"]


@pytest.fixture
def static_creds(fake: Fake) -> dict:
    creds = {"AccessKeyId": "AKIASTATICFAKE000001", "SecretAccessKey": "static/secret/key/for/tests/only/0000000"}
    control(fake, "POST", "/static_keys", {"access_key_id": creds["AccessKeyId"], "secret_access_key": creds["SecretAccessKey"]})
    return creds


@pytest.fixture(scope="session")
def tls_fake(tmp_path_factory: pytest.TempPathFactory):
    trustme = pytest.importorskip("trustme")
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    f = start_fake(tmp, "--tls-cert", str(tmp / "server.pem"), "--tls-key", str(tmp / "server.key"), "--h2-port", "0")
    f.ca_path = str(tmp / "ca.pem")
    yield f
    stop_fake(f)
