"""Small helpers shared by several of the fake's services: ids, times, JSON and ``x-fake-*`` headers."""

from __future__ import annotations

import json
import secrets
import string
import time
import uuid
from typing import Any, Optional

from aiohttp import web


def random_chars(n: int, alphabet: str = string.ascii_uppercase + string.digits) -> str:
    """``n`` random characters from ``alphabet``."""
    return "".join(secrets.choice(alphabet) for _ in range(n))


def iso8601_floor(epoch: float) -> str:
    """Format ``epoch`` as ``YYYY-MM-DDTHH:MM:SSZ``, rounding down."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def new_request_id() -> str:
    """A UUID4 string like AWS request ids."""
    return str(uuid.uuid4())


def json_response(status: int, payload: Any, headers: Optional[dict] = None) -> web.Response:
    """Compact JSON response."""
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )


def json_bytes(obj: Any) -> bytes:
    """Compact JSON, as event-stream payloads carry it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_json_body(body: bytes) -> Optional[dict]:
    """Body as a JSON object, or None if it is not one."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class BadFakeHeader(ValueError):
    """An ``x-fake-*`` control header has an unusable value."""


def header_int(request: Any, name: str, default: Optional[int]) -> Optional[int]:
    """Integer value of a request header, or ``default`` (``request``: anything with ``.headers``)."""
    raw = request.headers.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise BadFakeHeader(f"header {name} must be an integer, got {raw!r}") from None
