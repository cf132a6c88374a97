"""The record of every Bedrock request from either listener, rejected ones included (``GET /_control/bedrock/requests``)."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Optional

from aiohttp import web
from multidict import CIMultiDict

from .h2relay import RELAY_MARKER
from .state import FakeState

log = logging.getLogger(__name__)

BODY_RECORD_LIMIT = 64 * 1024

# Headers whose presence (not value) is recorded for every Bedrock request.
PRESENCE_HEADERS = (
    "authorization",
    "x-amz-security-token",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-user-agent",
    "x-llamastack-provider-data",
    "x-api-key",
    "x-forwarded-for",
    "cookie",
    "proxy-authorization",
    "content-type",
    "content-length",
    "transfer-encoding",
    "accept",
    "accept-encoding",
    "user-agent",
    "x-test-id",
)


def new_bedrock_record(state: FakeState, request: web.Request, body: bytes) -> dict:
    """Create and store the record of one Bedrock request (HTTP/1.1 listener).

    A request the HTTP/2 listener relayed (``h2relay``) is recorded as the
    client sent it: HTTP/2, from the client's port, without the marker."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    peer_port = peer[1] if peer else None
    http_version = f"{request.version.major}.{request.version.minor}"
    headers = request.headers
    relay = state.h2_relay
    if relay is not None and RELAY_MARKER in headers:
        relayed, client_port = relay.read_marker(headers.get(RELAY_MARKER))
        if relayed:
            http_version, peer_port = "2", client_port
            headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() != RELAY_MARKER)
    return store_bedrock_record(
        state,
        method=request.method,
        raw_path=request.raw_path,
        headers=headers,
        body=body,
        peer_port=peer_port,
        http_version=http_version,
    )


def store_bedrock_record(
    state: FakeState,
    *,
    method: str,
    raw_path: str,
    headers: Any,
    body: bytes,
    peer_port: Optional[int],
    http_version: str,
) -> dict:
    """Create and store the record of one Bedrock request, from either listener."""
    path, _, query = raw_path.partition("?")
    names = [k.lower() for k in headers.keys()]
    record = {
        "seq": state.next_seq(),
        "time": time.time(),
        "method": method,
        "http_version": http_version,
        "raw_path": path,
        "query": query,
        "route": None,
        "model_id": None,
        "auth_kind": "none",
        "auth": "none",
        "access_key_id": None,
        "principal_arn": None,
        "bearer_token": None,
        "verified": False,
        "rejection": None,
        "status": None,
        "error_type": None,
        "header_names": names,
        "headers_present": {h: h in names for h in PRESENCE_HEADERS},
        "x_test_id": headers.get("x-test-id"),
        "user_agent": headers.get("User-Agent"),
        "signed_headers": None,
        "security_token_signed": None,
        "canonical_request": None,
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body": body[:BODY_RECORD_LIMIT].decode("utf-8", "replace"),
        "stream_id": None,
        "bidi": None,  # invoke-with-bidirectional-stream only: per-frame verification
        "peer_port": peer_port,  # same port = same (keep-alive) connection
    }
    state.bedrock_requests.append(record)
    return record


def finalize_record(record: dict, resp: web.StreamResponse) -> None:
    """Store the response status/error type in the record and log one line."""
    record["status"] = resp.status
    record["error_type"] = resp.headers.get("x-amzn-ErrorType")
    log_bedrock_record(record)


def log_bedrock_record(record: dict) -> None:
    """One log line per Bedrock request, once its status is known."""
    log.info(
        "bedrock%s %s %s auth=%s -> %d%s",
        "-h2" if record["http_version"] == "2" else "",
        record["method"],
        record["raw_path"],
        record["auth"] if record["auth_kind"] != "bearer" else "bearer:" + (record["bearer_token"] or "")[:20],
        record["status"],
        f" ({record['rejection']})" if record["rejection"] else "",
    )
