"""Bedrock's REST-JSON errors, including the ones ``x-fake-status`` injects."""

from __future__ import annotations

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
