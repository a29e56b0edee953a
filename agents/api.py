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
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from agents import remote
from agents.models import Action, ApiKey, Run
from agents.services import ServiceError

MAX_WAIT_SECONDS = 30
POLL_EVERY_SECONDS = 0.25
BAD_JSON = "the body must be a JSON object"
BAD_FIELD = "{field}: {problem}"
NO_KEY = "send the agent's API key as 'Authorization: Bearer bk_…'"


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


class BadRequest(Exception):
    pass


def _authenticate(request: HttpRequest) -> ApiKey | JsonResponse:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return _error(401, NO_KEY, **{"WWW-Authenticate": "Bearer"})
    try:
        return remote.apikey_authenticate(header.removeprefix("Bearer ").strip())
    except ServiceError as exc:
        return _error(401, str(exc), **{"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(BAD_JSON) from None
    if not isinstance(body, dict):
        raise BadRequest(BAD_JSON)
    return body


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], problem: str, default: Any = ...
) -> Any:
    value = body.get(name, default)
    if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(BAD_FIELD.format(field=name, problem=problem))
    return value


def api(*methods: str) -> Callable[..., Any]:
    """Method check, key authentication and error mapping for one API endpoint."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                return _error(405, f"use {' or '.join(methods)}", Allow=", ".join(methods))
            key = _authenticate(request)
            if isinstance(key, JsonResponse):
                return key
            try:
                return view(request, key, *args, **kwargs)
            except BadRequest as exc:
                return _error(400, str(exc))
            except (Run.DoesNotExist, Action.DoesNotExist) as exc:
                return _error(404, str(exc))
            except remote.Conflict as exc:
                return _error(409, str(exc))
            except ServiceError as exc:
                return _error(400, str(exc))

        return wrapper

    return decorate


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
    tool = _field(body, "tool", str, "a tool name")
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


@csrf_exempt
async def step_show(request: HttpRequest, run_id: int, seq: int) -> JsonResponse:
    """A step's state. With ?wait=N (up to 30 s) it answers when a pending step is decided,
    or after N seconds with it still pending: a long poll, read from Postgres each time."""
    if request.method != "GET":
        return _error(405, "use GET", Allow="GET")
    key = await sync_to_async(_authenticate)(request)
    if isinstance(key, JsonResponse):
        return key
    try:
        wait = min(float(request.GET.get("wait", 0)), MAX_WAIT_SECONDS)
    except ValueError:
        return _error(400, BAD_FIELD.format(field="wait", problem="seconds to wait, up to 30"))
    deadline = asyncio.get_running_loop().time() + max(wait, 0)
    try:
        run = await sync_to_async(remote.remote_run)(key, run_id)
        while True:
            state = await sync_to_async(remote.remote_action_poll)(run=run, seq=seq)
            if state["decision"] != "pending" or asyncio.get_running_loop().time() >= deadline:
                return JsonResponse(state)
            await asyncio.sleep(POLL_EVERY_SECONDS)
    except (Run.DoesNotExist, Action.DoesNotExist) as exc:
        return _error(404, str(exc))
    except remote.Conflict as exc:
        return _error(409, str(exc))
