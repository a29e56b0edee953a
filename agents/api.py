"""Baton's HTTP API for remote agents: JSON in, JSON out, authenticated by the agent's API
key (`Authorization: Bearer bk_<prefix>.<secret>`). No session cookie is involved, so
there is nothing for CSRF to protect and the endpoints are exempt from it.

    POST /api/v1/runs                          {"input": {...}}          start a run
    GET  /api/v1/runs/<id>                                                the run
    POST /api/v1/runs/<id>/steps               {"seq", "tool", "args"}   the gateway's decision
    GET  /api/v1/runs/<id>/steps/<seq>?wait=25                            a step (long poll)
    POST /api/v1/runs/<id>/steps/<seq>/result  {"ok", "result"|"error"}  report an allowed step
    POST /api/v1/runs/<id>/finish              {"output"} or {"error"}   end the run
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from agents import remote
from agents.models import Action, ApiKey, Run
from agents.services import Conflict, NotFound, ServiceError, Unauthorized
from agents.services import Unstorable as UnstorableInput
from audit.jsonsafe import Unstorable, check_text, plain_json

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30
POLL_EVERY_SECONDS = 0.25
# Bodies are small JSON documents; a bigger one is refused before it is parsed.
MAX_BODY_BYTES = 1_000_000
TOOL_NAME_LENGTH = Action._meta.get_field("name").max_length

BAD_JSON = "the body must be a JSON object"
BAD_FIELD = "{field}: {problem}"
BAD_WAIT = "wait: a finite number of seconds from 0 (at most 30 are waited)"
BAD_CONTENT_TYPE = "send the body as JSON, with 'Content-Type: application/json'"
BODY_TOO_LARGE = f"the body may be at most {MAX_BODY_BYTES:,} bytes"
NO_KEY = "send the agent's API key as 'Authorization: Bearer bk_…'"
NOT_AN_ENDPOINT = "no such endpoint: see the API in the README"
INTERNAL = "Baton could not answer this request; it is logged"


class Code:
    """The stable `code` of every error answer; clients branch on it, not on the text."""

    UNAUTHORIZED = "unauthorized"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BODY_TOO_LARGE = "body_too_large"
    BAD_JSON = "bad_json"
    BAD_FIELD = "bad_field"
    UNSTORABLE = "unstorable"
    REFUSED = "refused"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INTERNAL = "internal_error"


def _error(status: int, code: str, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message, "code": code}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BadRequest(ApiError):
    def __init__(self, message: str, code: str = Code.BAD_FIELD) -> None:
        super().__init__(400, code, message)


def _authenticate(request: HttpRequest) -> ApiKey | JsonResponse:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return _error(401, Code.UNAUTHORIZED, NO_KEY, **{"WWW-Authenticate": "Bearer"})
    try:
        return remote.apikey_authenticate(header.removeprefix("Bearer ").strip())
    except Unauthorized as exc:
        return _error(
            401,
            Code.UNAUTHORIZED,
            str(exc),
            **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def _body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, every value in it one the audit trail can store."""
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        raise ApiError(413, Code.BODY_TOO_LARGE, BODY_TOO_LARGE)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(413, Code.BODY_TOO_LARGE, BODY_TOO_LARGE) from None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, Code.BODY_TOO_LARGE, BODY_TOO_LARGE)
    if not raw:
        return {}
    if (request.content_type or "").lower() != "application/json":
        raise ApiError(415, Code.UNSUPPORTED_MEDIA_TYPE, BAD_CONTENT_TYPE)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(BAD_JSON, Code.BAD_JSON) from None
    if not isinstance(body, dict):
        raise BadRequest(BAD_JSON, Code.BAD_JSON)
    try:
        return {check_text(k, "a field name"): plain_json(v, k[:40]) for k, v in body.items()}
    except Unstorable as exc:
        raise BadRequest(str(exc), Code.UNSTORABLE) from None


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], problem: str, default: Any = ...
) -> Any:
    value = body.get(name, default)
    if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(BAD_FIELD.format(field=name, problem=problem))
    return value


def _mapped(exc: Exception) -> JsonResponse:
    """The JSON answer for an error raised while serving an API call: its status and code
    follow from the exception's type, never from its text."""
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.code, str(exc))
    if isinstance(exc, NotFound):
        return _error(404, Code.NOT_FOUND, str(exc))
    if isinstance(exc, Conflict):
        return _error(409, Code.CONFLICT, str(exc))
    if isinstance(exc, Unauthorized):
        return _error(401, Code.UNAUTHORIZED, str(exc))
    if isinstance(exc, Unstorable | UnstorableInput):
        return _error(400, Code.UNSTORABLE, str(exc))
    if isinstance(exc, ServiceError):
        return _error(400, Code.REFUSED, str(exc))
    # An agent gets JSON whatever happens; the failure itself is logged with its trace.
    log.error("API request failed", exc_info=exc)
    return _error(500, Code.INTERNAL, INTERNAL)


def api(*methods: str) -> Callable[..., Any]:
    """Method check, key authentication and error mapping for one API endpoint."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                return _error(
                    405,
                    Code.METHOD_NOT_ALLOWED,
                    f"use {' or '.join(methods)}",
                    Allow=", ".join(methods),
                )
            key = _authenticate(request)
            if isinstance(key, JsonResponse):
                return key
            try:
                return view(request, key, *args, **kwargs)
            except Exception as exc:
                return _mapped(exc)

        return wrapper

    return decorate


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any other address under /api/: JSON, like every answer of the API."""
    return _error(404, Code.NOT_FOUND, NOT_AN_ENDPOINT)


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "run": run.pk,
        "agent": run.agent.slug,
        "version": run.version.number,
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "steps": run.actions.count(),
    }


@api("POST")
def run_create(request: HttpRequest, key: ApiKey) -> JsonResponse:
    body = _body(request)
    run_input = _field(body, "input", dict, "an object", default={})
    run = remote.remote_run_start(key=key, input=run_input)
    return JsonResponse(_run_json(run), status=201)


@api("GET")
def run_show(request: HttpRequest, key: ApiKey, run_id: int) -> JsonResponse:
    return JsonResponse(_run_json(remote.remote_run(key, run_id)))


@api("POST")
def step_submit(request: HttpRequest, key: ApiKey, run_id: int) -> JsonResponse:
    body = _body(request)
    seq = _field(body, "seq", int, "a step number from 1")
    if seq < 1:
        raise BadRequest(BAD_FIELD.format(field="seq", problem="a step number from 1"))
    tool = check_text(_field(body, "tool", str, "a tool name"), "tool", TOOL_NAME_LENGTH)
    args = _field(body, "args", dict, "an object", default={})
    run = remote.remote_run(key, run_id)
    return JsonResponse(remote.remote_action_submit(run=run, seq=seq, tool=tool, args=args))


@api("POST")
def step_result(request: HttpRequest, key: ApiKey, run_id: int, seq: int) -> JsonResponse:
    body = _body(request)
    ok = _field(body, "ok", bool, "true or false")
    error = "" if ok else _field(body, "error", str, "what went wrong, when ok is false")
    run = remote.remote_run(key, run_id)
    return JsonResponse(
        remote.remote_action_report(run=run, seq=seq, ok=ok, result=body.get("result"), error=error)
    )


@api("POST")
def run_finish(request: HttpRequest, key: ApiKey, run_id: int) -> JsonResponse:
    body = _body(request)
    error = _field(body, "error", str, "text", default="")
    run = remote.remote_run_finish(
        run=remote.remote_run(key, run_id), output=body.get("output"), error=error
    )
    return JsonResponse(_run_json(run))


def wait_seconds(raw: str | None) -> float:
    """The long poll's `wait`: a finite number of seconds from 0, capped at 30."""
    try:
        wait = float(raw) if raw is not None else 0.0
    except ValueError:
        raise BadRequest(BAD_WAIT) from None
    if not math.isfinite(wait) or wait < 0:
        raise BadRequest(BAD_WAIT)
    return min(wait, MAX_WAIT_SECONDS)


@csrf_exempt
async def step_show(request: HttpRequest, run_id: int, seq: int) -> JsonResponse:
    """A step's state. With ?wait=N (up to 30 s) it answers when a pending step is decided,
    or after N seconds with it still pending: a long poll, read from Postgres each time."""
    if request.method != "GET":
        return _error(405, Code.METHOD_NOT_ALLOWED, "use GET", Allow="GET")
    key = await sync_to_async(_authenticate)(request)
    if isinstance(key, JsonResponse):
        return key
    try:
        wait = wait_seconds(request.GET.get("wait"))
        deadline = asyncio.get_running_loop().time() + wait
        run = await sync_to_async(remote.remote_run)(key, run_id)
        while True:
            state = await sync_to_async(remote.remote_action_poll)(run=run, seq=seq)
            if state["decision"] != "pending" or asyncio.get_running_loop().time() >= deadline:
                return JsonResponse(state)
            await asyncio.sleep(POLL_EVERY_SECONDS)
    except Exception as exc:
        return _mapped(exc)
