"""Fake Bedrock runtime on the Bedrock port (HTTP/1.1, or HTTPS with ``--tls-cert``).

Every request is authenticated and recorded first, then routed on the *raw*
path: ``converse``, ``converse-stream``, ``invoke``,
``invoke-with-response-stream``, ``count-tokens``, ApplyGuardrail, the async
invoke operations, the OpenAI-compatible ``/openai/v1`` routes, the
Anthropic Messages API (``/anthropic/v1/messages``) and the
agents runtime's InvokeAgent (answering with the text it was sent).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from email.utils import formatdate
from urllib.parse import unquote

from aiohttp import web

import eventstream  # tests/fakes/eventstream.py, as stream_plans uses it

from .bedrock_auth import authenticate_bedrock
from .bedrock_errors import aws_json_error, echo_error, forced_status_error, parse_cut
from .bedrock_records import finalize_record, new_bedrock_record
from .bedrock_replies import (
    GUARDRAIL_USAGE,
    converse_response,
    invoke_response,
    last_user_text,
    messages_response,
    openai_completion,
    wants_guardrail_trace,
)
from .common import BadFakeHeader, header_int, json_response, new_request_id, parse_json_body
from .h2relay import hold_little
from .state import STATE_KEY, FakeState
from .stream_plans import agent_answer, plan_converse_stream, plan_invoke_stream, plan_messages_stream, plan_openai_stream
from .streaming import StreamControls, send_broken_off, send_stream

MODEL_ROUTE_RE = re.compile(
    r"^/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream|invoke|invoke-with-response-stream|count-tokens)$"
)
GUARDRAIL_ROUTE_RE = re.compile(r"^/guardrail/(?P<id>[^/]+)/version/(?P<version>[^/]+)/apply$")
ASYNC_INVOKE_ROUTE_RE = re.compile(r"^/async-invoke(?:/(?P<arn>[^/]+))?$")
# InvokeAgent, as the agents runtime serves it (the sidecar drops its
# /agent-runtime prefix).
AGENT_ROUTE_RE = re.compile(r"^/agents/[^/]+/agentAliases/[^/]+/sessions/[^/]+/text$")
# A model id containing this is refused as Bedrock refuses a model the role
# may not use: lets a test reach a client's error path without headers.
DENIED_MODEL_MARK = "fake-denied"


def denied_model(model_id: str) -> web.Response | None:
    """403 AccessDeniedException for a model id containing ``fake-denied``."""
    if DENIED_MODEL_MARK not in model_id:
        return None
    return aws_json_error(403, "AccessDeniedException", "You don't have access to the model with the specified model ID.")


async def bedrock_handler(request: web.Request) -> web.StreamResponse:
    """Every Bedrock request: authenticate, record, then route on the raw path."""
    state = request.app[STATE_KEY]
    body = await request.read()
    record = new_bedrock_record(state, request, body)
    if record["http_version"] == "2":
        hold_little(request)
    resp = authenticate_bedrock(state, request, body, record)
    if resp is None:
        try:
            resp = await route_bedrock(state, request, body, record)
        except BadFakeHeader as exc:
            resp = aws_json_error(400, "ValidationException", f"fake: {exc}")
    if record["status"] is None:
        finalize_record(record, resp)
    return resp


async def route_bedrock(state: FakeState, request: web.Request, body: bytes, record: dict) -> web.StreamResponse:
    """Dispatch an authenticated request on the raw (undecoded) path."""
    path = record["raw_path"]
    model_match = MODEL_ROUTE_RE.match(path)
    if model_match and request.method == "POST":
        record["route"] = model_match.group("op")
        record["model_id"] = unquote(model_match.group("model"))
    elif path == "/openai/v1/chat/completions" and request.method == "POST":
        record["route"] = "openai-chat"
    elif path == "/anthropic/v1/messages" and request.method == "POST":
        record["route"] = "anthropic-messages"
    elif path == "/openai/v1/models" and request.method == "GET":
        record["route"] = "openai-models"
    elif GUARDRAIL_ROUTE_RE.match(path) and request.method == "POST":
        record["route"] = "apply-guardrail"
    elif ASYNC_INVOKE_ROUTE_RE.match(path.split("?", 1)[0]):
        record["route"] = "async-invoke"
    elif AGENT_ROUTE_RE.match(path) and request.method == "POST":
        record["route"] = "invoke-agent"
    else:
        return aws_json_error(404, "UnknownOperationException", "UnknownOperationException")

    # Simulated model latency before any response header is sent.
    response_delay_ms = header_int(request, "x-fake-response-delay-ms", 0) or 0
    if response_delay_ms > 0:
        await asyncio.sleep(response_delay_ms / 1000.0)

    forced = header_int(request, "x-fake-status", None)
    echo = request.headers.get("x-fake-echo-headers")
    if echo:
        cut = parse_cut(request.headers.get("x-fake-echo-cut"))
        into = request.headers.get("x-fake-echo-into-header")
        return echo_error(forced if forced is not None and forced >= 400 else 403, echo, request.headers, cut, into)
    if forced is not None and forced >= 400:
        return aws_json_error(*forced_status_error(forced))

    if record["route"] == "async-invoke":
        return handle_async_invoke(request, path, body)
    if record["route"] == "openai-models":
        return json_response(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in state.bedrock.models]})
    data = parse_json_body(body)
    if data is None:
        return aws_json_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
    if record["route"] == "openai-chat":
        return await handle_openai_chat(state, request, record, data)
    if record["route"] == "anthropic-messages":
        return await handle_anthropic_messages(state, request, record, data)
    if record["route"] == "apply-guardrail":
        return handle_apply_guardrail(data)
    if record["route"] == "invoke-agent":
        # The agent answers with the text it was given: a test chooses it.
        return web.Response(status=200, body=agent_answer(str(data.get("inputText", ""))),
                            headers={"Content-Type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": new_request_id(),
                                     "x-amzn-bedrock-agent-content-type": "application/json"})
    return await handle_model_op(state, request, record, data)


def handle_apply_guardrail(data: dict) -> web.Response:
    """ApplyGuardrail: blocks any text containing the word "forbidden"."""
    texts = [c.get("text", {}).get("text", "") for c in data.get("content", []) if isinstance(c, dict)]
    blocked = any("forbidden" in t for t in texts)
    return json_response(200, {
        "usage": dict(GUARDRAIL_USAGE),
        "action": "GUARDRAIL_INTERVENED" if blocked else "NONE",
        "outputs": [{"text": "blocked by fake guardrail"}] if blocked else [],
        "assessments": [],
    }, headers={"x-amzn-RequestId": new_request_id()})


ASYNC_ARN = "arn:aws:bedrock:us-east-1:123456789012:async-invoke/fake0001"


def handle_async_invoke(request: web.Request, path: str, body: bytes) -> web.Response:
    """StartAsyncInvoke (POST /async-invoke), GetAsyncInvoke, ListAsyncInvokes."""
    rid = {"x-amzn-RequestId": new_request_id()}
    summary = {"invocationArn": ASYNC_ARN, "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-reel-v1:0",
               "status": "InProgress", "submitTime": "2026-01-01T00:00:00Z",
               "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}}}
    if request.method == "POST":
        if parse_json_body(body) is None:
            return aws_json_error(400, "ValidationException", "Malformed input request")
        return json_response(200, {"invocationArn": ASYNC_ARN}, headers=rid)
    match = ASYNC_INVOKE_ROUTE_RE.match(path.split("?", 1)[0])
    if match and match.group("arn"):
        if unquote(match.group("arn")) != ASYNC_ARN:
            return aws_json_error(404, "ResourceNotFoundException", "no such invocation")
        return json_response(200, summary, headers=rid)
    return json_response(200, {"asyncInvokeSummaries": [summary]}, headers=rid)


async def handle_model_op(state: FakeState, request: web.Request, record: dict, data: dict) -> web.StreamResponse:
    """converse / converse-stream / invoke / invoke-with-response-stream."""
    op, model_id = record["route"], record["model_id"]
    denied = denied_model(model_id)
    if denied is not None:
        return denied
    user_text = last_user_text(data)
    rid = {"x-amzn-RequestId": new_request_id()}
    if op == "converse":
        cached = max(0, header_int(request, "x-fake-cached-tokens", 0) or 0)
        reply = converse_response(model_id, user_text, wants_guardrail_trace(data), cached)
        if request.headers.get("x-fake-break-body"):
            return await send_broken_off(request, reply, rid)
        return json_response(200, reply, headers=rid)
    if op == "count-tokens":
        text = json.dumps(data.get("input", {}))
        return json_response(200, {"inputTokens": max(1, len(text.split()))}, headers=rid)
    if op == "invoke":
        out = invoke_response(model_id, user_text)
        headers = {
            **rid,
            "X-Amzn-Bedrock-Input-Token-Count": str(out["usage"]["input_tokens"]),
            "X-Amzn-Bedrock-Output-Token-Count": str(out["usage"]["output_tokens"]),
            "X-Amzn-Bedrock-Invocation-Latency": "1",
        }
        if request.headers.get("x-fake-break-body"):
            return await send_broken_off(request, out, headers)
        return json_response(200, out, headers=headers)
    ctl = StreamControls.from_request(request)
    if op == "converse-stream":
        plan = plan_converse_stream(model_id, user_text, ctl.chunks, ctl.pad, wants_guardrail_trace(data))
    else:
        plan = plan_invoke_stream(model_id, user_text, ctl.chunks, ctl.pad)
    failure = request.headers.get("x-fake-stream-exception")
    if failure:
        # Bedrock's in-stream failure after the 200: the exception message
        # takes the place of the stream's end (no usage).
        plan.trailer = eventstream.exception(failure, json.dumps({"message": f"fake {failure}"}).encode())
    return await send_stream(state, request, record, op, model_id, plan, ctl)


def body_model_request(request: web.Request, record: dict, data: dict) -> tuple:
    """``(model, denial or None, user text, cached tokens)`` of a request
    naming its model in the body (OpenAI chat, Anthropic Messages)."""
    model = str(data.get("model") or "unknown-model")
    record["model_id"] = model
    cached = max(0, header_int(request, "x-fake-cached-tokens", 0) or 0)
    return model, denied_model(model), last_user_text(data), cached


async def handle_openai_chat(state: FakeState, request: web.Request, record: dict, data: dict) -> web.StreamResponse:
    """OpenAI-compatible chat completions (JSON or SSE)."""
    model, denied, user_text, cached = body_model_request(request, record, data)
    if denied is not None:
        return denied
    if not data.get("stream"):
        reply = openai_completion(model, user_text, cached)
        return json_response(200, reply, headers={"x-amzn-RequestId": new_request_id()})
    ctl = StreamControls.from_request(request)
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    plan = plan_openai_stream(model, user_text, ctl.chunks, ctl.pad, include_usage, cached)
    failure = request.headers.get("x-fake-stream-exception")
    if failure:
        # OpenAI's in-stream failure: an error chunk instead of the end.
        error = {"error": {"message": f"fake {failure}", "type": failure, "code": None}}
        plan.trailer = b"data: " + json.dumps(error).encode() + b"\n\n"
    return await send_stream(state, request, record, "openai-chat-stream", model, plan, ctl)


async def handle_anthropic_messages(state: FakeState, request: web.Request, record: dict, data: dict) -> web.StreamResponse:
    """The Anthropic Messages API (JSON or SSE), as the runtime's
    ``/anthropic`` and Mantle's ``/anthropic`` serve it."""
    model, denied, user_text, cached = body_model_request(request, record, data)
    if denied is not None:
        return denied
    if not data.get("stream"):
        return json_response(200, messages_response(model, user_text, cached), headers={"x-amzn-RequestId": new_request_id()})
    ctl = StreamControls.from_request(request)
    plan = plan_messages_stream(model, user_text, ctl.chunks, ctl.pad, cached)
    failure = request.headers.get("x-fake-stream-exception")
    if failure:
        # Anthropic's in-stream failure: an error event instead of the end.
        error = {"type": "error", "error": {"type": failure, "message": f"fake {failure}"}}
        plan.trailer = b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    return await send_stream(state, request, record, "anthropic-messages-stream", model, plan, ctl)


@web.middleware
async def compress_if_configured(request: web.Request, handler) -> web.StreamResponse:
    """With ``compress`` on, every answer is compressed as the request's
    Accept-Encoding allows (aiohttp picks gzip or deflate; none: identity).
    Streams are already sent by then: ``streaming.py`` enables it for them."""
    response = await handler(request)
    if request.app[STATE_KEY].bedrock.compress and not response.prepared:
        response.enable_compression()
    return response


def build_bedrock_app(state: FakeState) -> web.Application:
    """The Bedrock application: one catch-all handler routing on the raw path."""
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[compress_if_configured])
    app[STATE_KEY] = state
    app.router.add_route("*", "/{tail:.*}", bedrock_handler)
    app.on_response_prepare.append(date_by_aws_clock)
    return app


async def date_by_aws_clock(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer's ``Date`` is AWS's time (``clock_offset_seconds`` of
    ``POST /_control/sts`` sets it off this machine's), as STS's are."""
    offset = request.app[STATE_KEY].sts.clock_offset_seconds
    if offset:
        response.headers["Date"] = formatdate(time.time() + offset, usegmt=True)
