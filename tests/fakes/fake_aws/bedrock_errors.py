"""Bedrock's REST-JSON errors, including the ones ``x-fake-status`` injects."""

from __future__ import annotations

import json
from urllib.parse import quote

from aiohttp import web

from .common import json_response, new_request_id

# AWS error type used for ``x-fake-status`` responses.
BEDROCK_STATUS_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def aws_json_error(status: int, error_type: str, message: str) -> web.Response:
    """AWS REST-JSON error: ``{"message"}`` body plus ``x-amzn-ErrorType``."""
    return json_response(
        status,
        {"message": message},
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": new_request_id()},
    )


def forced_status_error(forced: int) -> tuple:
    """``(status, error type, message)`` for an ``x-fake-status`` of 400 or more."""
    err = BEDROCK_STATUS_ERRORS.get(forced, "InternalServerException" if forced >= 500 else "ValidationException")
    return forced, err, f"fake {err} (x-fake-status {forced})"


def _entities(text: str) -> str:
    """HTML character references for ``+``, ``/`` and ``=``, in the mix of
    decimal, hexadecimal and named forms encoders write."""
    return text.replace("+", "&#43;").replace("/", "&#x2F;").replace("=", "&equals;")


def parse_cut(text: str | None) -> tuple[int, int] | None:
    """``x-fake-echo-cut``: ``N`` (the first N characters of each value)
    or ``SKIP:N`` (N characters from SKIP on)."""
    if text is None:
        return None
    skip, _, n = text.rpartition(":")
    try:
        cut = (int(skip or 0), int(n))
    except ValueError:
        return None
    return cut if cut[0] >= 0 and cut[1] > 0 else None


def echo_error(status: int, style: str, headers, cut: tuple[int, int] | None = None,
               into: str | None = None) -> web.Response:
    """An error that quotes the request's headers back, as a relay or a
    non-AWS upstream may (``x-fake-echo-headers``). ``style`` is how the
    body writes them: ``json``, ``json-u`` (System.Text.Json's default,
    ``+``, ``/`` and ``=`` as ``\\uXXXX``), ``html`` (character
    references), ``percent`` (values percent-encoded), ``colon-space``
    (``Name : value``) or ``text`` (a plain-text body). With ``cut``
    (``x-fake-echo-cut``) it quotes only a piece of each value, without
    its name, as a log line cut to a width does. With ``into``
    (``x-fake-echo-into-header``) the same lines, joined by ``; ``, are
    also sent in a response header of that name, as a relay's debugging
    header may."""
    sep = " : " if style == "colon-space" else ": "
    lines = []
    for name, value in headers.items():
        if cut is not None:
            value = value[cut[0]:cut[0] + cut[1]]
        if style == "percent":
            value = quote(value, safe="")
        lines.append(f"[{value}]" if cut is not None else f"{name}{sep}{value}")
    if cut is None:
        message = "fake relay refused the request; it was sent with\n" + "\n".join(lines)
    else:
        message = "fake bedrock-runtime relay refused the request; it saw (cut)\n" + "\n".join(lines)
    error_type = BEDROCK_STATUS_ERRORS.get(status, "InternalServerException")
    extra = {"x-amzn-RequestId": new_request_id()}
    if into:
        extra[into] = "; ".join(lines).replace("\r", " ").replace("\n", " ")
    if style == "text":
        return web.Response(status=status, text=message, headers=extra)
    if style == "html":
        message = _entities(message)
    body = json.dumps({"message": message, "code": error_type})
    if style == "json-u":
        body = body.replace("+", "\\u002B").replace("/", "\\u002f").replace("=", "\\u003D")
    extra["x-amzn-ErrorType"] = error_type
    return web.Response(status=status, body=body.encode(), content_type="application/json", headers=extra)
