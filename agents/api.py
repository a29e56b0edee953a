"""Baton's HTTP API for remote agents (django-ninja): JSON in, JSON out, authenticated by
the agent's API key (`Authorization: Bearer bk_<prefix>.<secret>`). No session cookie is
involved, so there is nothing for CSRF to protect. The OpenAPI document is served at
/api/v1/openapi.json and the browsable docs at /api/v1/docs.

    POST /api/v1/runs                          {"input": {...}}          start a run
    GET  /api/v1/runs/<id>                                                the run
    POST /api/v1/runs/<id>/steps               {"seq", "tool", "args"}   the gateway's decision
    GET  /api/v1/runs/<id>/steps/<seq>?wait=25                            a step (long poll)
    POST /api/v1/runs/<id>/steps/<seq>/result  {"ok", "result"|"error"}  report an allowed step
    POST /api/v1/runs/<id>/model-calls         {"seq", "model", ...}     journal a model call
    POST /api/v1/runs/<id>/heartbeat                                      may the run go on?
    POST /api/v1/runs/<id>/finish              {"output"} or {"error"}   end the run
    GET  /api/v1/agent                                                    the agent and its switch

Every endpoint calls agents.remote, which takes each step through the one gateway decision
core (agents.gateway.core.decide_step) that hosted agents pass too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, Literal

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.urls import URLPattern
from django.views.decorators.csrf import csrf_exempt
from ninja import Field, Header, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import BeforeValidator, StrictBool, StrictStr

from agents import remote, stepwait
from agents.models import Action, ApiKey
from agents.services import Conflict, NotFound, ServiceError, Unauthorized
from agents.services import Unstorable as UnstorableInput
from audit.jsonsafe import MAX_DEPTH, TOO_DEEP, TOO_LONG, Unstorable, check_text, plain_json

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30
# Bodies are small JSON documents; a bigger one is refused before it is parsed.
MAX_BODY_BYTES = 1_000_000
TOOL_NAME_LENGTH = Action._meta.get_field("name").max_length
MAX_ID = 2**31 - 1  # step numbers beyond this are refused
# A model call's figures, as the KPIs can add them up in Postgres (agents.kpis): tokens
# as integers, costs as doubles whose sum stays finite.
MAX_TOKENS = 2**31 - 1
MAX_COST_EUR = 1e9

BAD_JSON = "the body must be a JSON object"
BAD_FIELD = "{field}: {problem}"
BAD_CONTENT_TYPE = "send the body as JSON, with 'Content-Type: application/json'"
BODY_TOO_LARGE = f"the body may be at most {MAX_BODY_BYTES:,} bytes"
NO_KEY = "send the agent's API key as 'Authorization: Bearer bk_…'"
NOT_AN_ENDPOINT = "no such endpoint: see the API in the README"
NO_ERROR_TEXT = "error: what went wrong, when ok is false"
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
    PAUSED = "paused"
    HALTED = "halted"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal_error"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BadRequest(ApiError):
    def __init__(self, message: str, code: str = Code.BAD_FIELD) -> None:
        super().__init__(400, code, message)


def _error(status: int, code: str, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message, "code": code}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


# --- the body, the key ---------------------------------------------------------------------


def _deep_field(raw: bytes) -> str | None:
    """The top-level field of a JSON object under which it nests deepest: what a body too
    deep to parse is refused for (a scan of its brackets, strings skipped). None unless
    the body is one object whose brackets balance."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text.startswith("{") or not text.endswith("}"):
        return None
    depth, deepest, key, field, i = 0, 0, "", "the body", 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if depth == 1:
                key = text[i + 1 : end]
            i = end
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, field = depth, key[:40] or "the body"
        elif ch in "]}":
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return None
        i += 1
    return field if depth == 0 else None


class JsonBody(Parser):
    """The request's JSON object, every value in it one the audit trail can store: 413
    past the limit, 415 unless it is sent as JSON, 400 `bad_json` or `unstorable`."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            declared = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0
        if declared > MAX_BODY_BYTES:
            raise ApiError(413, Code.BODY_TOO_LARGE, BODY_TOO_LARGE)
        raw = request.body
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, Code.BODY_TOO_LARGE, BODY_TOO_LARGE)
        if (request.content_type or "").lower() != "application/json":
            raise ApiError(415, Code.UNSUPPORTED_MEDIA_TYPE, BAD_CONTENT_TYPE)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(BAD_JSON, Code.BAD_JSON) from None
        except RecursionError:
            # Only a body nested far deeper than the trail holds exhausts the parser (how
            # deep that is depends on the stack the request already runs in).
            field = _deep_field(raw)
            if field is None:  # not one balanced object: malformed, however deep
                raise BadRequest(BAD_JSON, Code.BAD_JSON) from None
            too_deep = TOO_DEEP.format(where=field, limit=MAX_DEPTH)
            raise BadRequest(too_deep, Code.UNSTORABLE) from None
        if not isinstance(body, dict):
            raise BadRequest(BAD_JSON, Code.BAD_JSON)
        try:
            return {check_text(k, "a field name"): plain_json(v, k[:40]) for k, v in body.items()}
        except Unstorable as exc:
            raise BadRequest(str(exc), Code.UNSTORABLE) from None


class AgentKey(HttpBearer):
    """The agent's API key as a Bearer token (agents.remote.apikey_authenticate)."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey:
        return remote.apikey_authenticate(token.strip())


DESCRIPTION = f"""Baton's API for remote agents: every step passes the same gateway as a
hosted agent's (kill switches, journal, policy, rate limits, approvals, audit).

Authenticate with the agent's API key: `Authorization: Bearer bk_<prefix>.<secret>`.
Bodies are JSON objects (`Content-Type: application/json`) of at most
{MAX_BODY_BYTES:,} bytes; a bigger one is answered 413 `body_too_large`.

Every error is JSON `{{"error": text, "code": stable code}}`; branch on `code`:
`bad_json`, `bad_field` (the text names the field), `unstorable`, `refused` (400),
`unauthorized` (401), `not_found` (404), `method_not_allowed` (405), `conflict` (409),
`body_too_large` (413), `unsupported_media_type` (415), `paused` / `halted` (423, a kill
switch), `rate_limited` (429, with `Retry-After` in whole seconds), `internal_error` (500).
"""

HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": 'Bearer, with error="invalid_token" for a wrong key',
            "schema": {"type": "string"},
            "required": True,
        }
    },
    429: {
        "Retry-After": {
            "description": "whole seconds to wait before asking again",
            "schema": {"type": "integer", "minimum": 1},
            "required": True,
        }
    },
}


class Api(NinjaAPI):
    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        """What ninja does not write itself: an optional body is a JSON object or nothing
        (not `null`), and the headers of 401 and 429 answers."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for methods in schema["paths"].values():
            for operation in methods.values():
                for status, header in HEADERS.items():
                    if status in operation["responses"]:
                        operation["responses"][status]["headers"] = header
                content = operation.get("requestBody", {}).get("content", {})
                for media in content.values():
                    choices = media["schema"].get("anyOf", [])
                    if len(choices) == 2 and {"type": "null"} in choices:
                        media["schema"] = next(c for c in choices if c != {"type": "null"})
        return schema


api = Api(
    title="Baton API for remote agents",
    version="1",
    description=DESCRIPTION,
    auth=AgentKey(),
    parser=JsonBody(),
    urls_namespace="api",
)


# --- schemas -------------------------------------------------------------------------------


def _whole(value: Any) -> Any:
    """A JSON integer: 3 or 3.0 (JSON does not tell them apart), never true or "3"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("should be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("should be a whole number")
        return int(value)
    return value


Whole = Annotated[int, BeforeValidator(_whole)]


class Error(Schema):
    error: str = Field(description="what went wrong, for people")
    code: str = Field(description="the stable code, for programs")


class Body(Schema):
    """A request body: a field the API does not know is refused (a typo such as
    `arguments` for `args` would otherwise run the step without its arguments)."""

    model_config = {"extra": "forbid"}


class RunStart(Body):
    input: dict[str, Any] = Field(default_factory=dict, description="the run's input")


class RunOut(Schema):
    run: int
    agent: str = Field(description="the agent's slug")
    version: int = Field(description="the version the run is on")
    status: str
    output: Any
    error: str
    steps: int = Field(description="how many steps the journal holds")


class StepIn(Body):
    seq: Whole = Field(ge=1, le=MAX_ID, description="the step's number: 1, 2, …")
    tool: StrictStr = Field(max_length=TOOL_NAME_LENGTH)
    args: dict[str, Any] = Field(default_factory=dict)


class StepBase(Schema):
    seq: int
    tool: str
    status: str = Field(description="the journal's status of the step")


class StepAllow(StepBase):
    decision: Literal["allow"]
    args: dict[str, Any] = Field(description="run the tool with these (a person may edit them)")
    idempotency_key: str


class StepPending(StepBase):
    decision: Literal["pending"]


class StepShadow(StepBase):
    decision: Literal["shadow"]
    result: Any = Field(description="the simulated result; the tool is not run")


class StepDone(StepBase):
    decision: Literal["done"]
    result: Any
    error: str


class StepDeny(StepBase):
    decision: Literal["deny"]
    reason: str


class StepRejected(StepBase):
    decision: Literal["rejected"]
    reason: str


StepAnswer = Annotated[
    StepAllow | StepPending | StepShadow | StepDone | StepDeny | StepRejected,
    Field(discriminator="decision"),
]


class Stopped(Schema):
    """423: a kill switch covers the agent; nothing was journaled."""

    seq: int
    decision: Literal["paused", "halted"]
    reason: str
    code: Literal["paused", "halted"]
    error: str


class RetryLater(Schema):
    """429: a rate limit; nothing was journaled. Ask again after `retry_after` seconds."""

    seq: int
    decision: Literal["retry"]
    retry_after: float
    reason: str
    code: Literal["rate_limited"]
    error: str


class StepReport(Body):
    model_config = {
        # ok false needs the error's text.
        "json_schema_extra": {
            "if": {"properties": {"ok": {"const": False}}},
            "then": {"required": ["error"], "properties": {"error": {"type": "string"}}},
        }
    }

    ok: StrictBool
    result: Any = None
    error: StrictStr | None = Field(None, description="required when ok is false")


class ModelCall(Body):
    seq: Whole = Field(ge=1, le=MAX_ID)
    model: StrictStr = Field(min_length=1, max_length=TOOL_NAME_LENGTH)
    purpose: StrictStr = ""
    tokens_in: Whole = Field(ge=0, le=MAX_TOKENS)
    tokens_out: Whole = Field(ge=0, le=MAX_TOKENS)
    cost_eur: float | None = Field(None, ge=0, le=MAX_COST_EUR, allow_inf_nan=False)
    output: Any = None


class RunFinish(Body):
    output: Any = None
    error: StrictStr = Field("", description="set it when the run failed")


AgentState = Literal["active", "paused", "halted"]


class Heartbeat(Schema):
    run: int
    status: str
    agent_state: AgentState


class AgentOut(Schema):
    agent: str
    name: str
    state: AgentState
    live_version: int | None


# Path ids are digits (a Django int converter); one that names nothing is a 404.
RunId = Annotated[int, Path(description="the run's id")]
Seq = Annotated[int, Path(description="the step's number")]
ERRORS: dict[int, Any] = {
    400: Error,
    401: Error,
    404: Error,
    405: Error,
    409: Error,
    413: Error,
    415: Error,
    500: Error,
}
STEP_ERRORS: dict[int, Any] = {**ERRORS, 423: Stopped, 429: RetryLater}


# --- errors --------------------------------------------------------------------------------


def _field_name(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "payload")]
    return ".".join(loc) or "body"


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    if first.get("type") == "string_too_long":  # a column's limit: `unstorable`, as ever
        limit = first.get("ctx", {}).get("max_length")
        return _error(400, Code.UNSTORABLE, TOO_LONG.format(where=_field_name(first), limit=limit))
    # pydantic's words, said of the field: "seq: should be a valid integer".
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    problem = message.removeprefix("Input ").lower()
    return _error(400, Code.BAD_FIELD, BAD_FIELD.format(field=_field_name(first), problem=problem))


@api.exception_handler(AuthenticationError)
def _no_key(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(401, Code.UNAUTHORIZED, NO_KEY, **{"WWW-Authenticate": "Bearer"})


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, Exception):  # the body parser's own error (JsonBody)
        return _mapped(exc.__cause__)
    return _error(exc.status_code, Code.BAD_JSON if exc.status_code == 400 else "", str(exc))


@api.exception_handler(Exception)
def _any(request: HttpRequest, exc: Exception) -> HttpResponse:
    return _mapped(exc)


def _mapped(exc: Exception) -> JsonResponse:
    """The JSON answer for an error raised while serving an API call: its status and code
    follow from the exception's type, never from its text."""
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.code, str(exc))
    if isinstance(exc, RequestDataTooBig):
        return _error(413, Code.BODY_TOO_LARGE, BODY_TOO_LARGE)
    if isinstance(exc, NotFound | Http404):
        return _error(404, Code.NOT_FOUND, str(exc) or NOT_AN_ENDPOINT)
    if isinstance(exc, Conflict):
        return _error(409, Code.CONFLICT, str(exc))
    if isinstance(exc, Unauthorized):
        return _error(
            401, Code.UNAUTHORIZED, str(exc), **{"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    if isinstance(exc, Unstorable | UnstorableInput):
        return _error(400, Code.UNSTORABLE, str(exc))
    if isinstance(exc, ServiceError):
        return _error(400, Code.REFUSED, str(exc))
    # An agent gets JSON whatever happens; the failure itself is logged with its trace.
    log.error("API request failed", exc_info=exc)
    return _error(500, Code.INTERNAL, INTERNAL)


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any other address under /api/: JSON, like every answer of the API."""
    return _error(404, Code.NOT_FOUND, NOT_AN_ENDPOINT)


def _json_405(view: Callable[..., Any]) -> Callable[..., Any]:
    """ninja answers a wrong method in plain text; the API answers JSON, with Allow."""

    def converted(response: HttpResponseBase) -> HttpResponseBase:
        if response.status_code != 405:
            return response
        allow = response.get("Allow", "")
        return _error(405, Code.METHOD_NOT_ALLOWED, f"use {allow}", Allow=allow)

    if iscoroutinefunction(view):

        @wraps(view)
        async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            return converted(await view(request, *args, **kwargs))

        return csrf_exempt(async_view)

    @wraps(view)
    def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return converted(view(request, *args, **kwargs))

    return csrf_exempt(sync_view)


def urls() -> tuple[list[Any], str, str]:
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = _json_405(pattern.callback)
    return patterns, app_name, namespace


# --- the endpoints -------------------------------------------------------------------------


def _key(request: HttpRequest) -> ApiKey:
    return request.auth  # type: ignore[attr-defined, no-any-return]


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "run": run.pk,
        "agent": run.agent.slug,
        "version": run.version.number,
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "steps": run.actions.count(),
    }


def _answer(state: dict[str, Any], response: HttpResponse) -> Status[dict[str, Any]]:
    """A decision as the API answers it: 429 for a rate limit (with Retry-After), 423 for
    a pause or halt, 200 for everything the journal holds."""
    decision = state["decision"]
    if decision == "retry":
        response["Retry-After"] = str(max(1, math.ceil(state["retry_after"])))
        return Status(429, {**state, "code": Code.RATE_LIMITED, "error": state["reason"]})
    if decision in ("paused", "halted"):
        return Status(423, {**state, "code": decision, "error": state["reason"]})
    return Status(200, state)


@api.post(
    "/runs",
    response={201: RunOut, 200: RunOut, **ERRORS},
    summary="Start a run",
    description="With an `Idempotency-Key` header the same key (per agent) starts one run: "
    "201 the first time, 200 with the same run after; the same key with another input is 409.",
)
def run_create(
    request: HttpRequest,
    payload: RunStart | None = None,
    idempotency_key: Annotated[
        str, Header(alias="Idempotency-Key", max_length=200, pattern=r"^[\x21-\x7e]*$")
    ] = "",
) -> Status[dict[str, Any]]:
    run_input = payload.input if payload is not None else {}
    run, new = remote.remote_run_begin(
        key=_key(request), input=run_input, start_key=idempotency_key
    )
    return Status(201 if new else 200, _run_json(run))


@api.get("/runs/{int:run_id}", response={200: RunOut, **ERRORS}, summary="Read a run")
def run_show(request: HttpRequest, run_id: RunId) -> dict[str, Any]:
    return _run_json(remote.remote_run(_key(request), run_id))


@api.post(
    "/runs/{int:run_id}/steps",
    response={200: StepAnswer, **STEP_ERRORS},
    summary="Submit a step: the gateway's decision",
    description="allow (run it now, then report), deny, shadow, pending (long-poll the step), "
    "done or rejected (a resubmission: the same seq with the same call answers the same); "
    "429 rate limited, 423 paused or halted (nothing journaled). The same seq with another "
    "call is 409.",
)
def step_submit(
    request: HttpRequest, run_id: RunId, payload: StepIn, response: HttpResponse
) -> Status[dict[str, Any]]:
    tool = check_text(payload.tool, "tool", TOOL_NAME_LENGTH)
    run = remote.remote_run(_key(request), run_id)
    state = remote.remote_action_submit(run=run, seq=payload.seq, tool=tool, args=payload.args)
    return _answer(state, response)


@api.get(
    "/runs/{int:run_id}/steps/{int:seq}",
    response={200: StepAnswer, **STEP_ERRORS},
    summary="Read a step (long poll)",
    description=f"With `wait` (seconds, at most {MAX_WAIT_SECONDS} are waited) a pending step "
    "is answered when people decide it, or after `wait` with it still pending. An approved "
    "step is admitted here: the answer is allow.",
)
async def step_show(
    request: HttpRequest,
    run_id: RunId,
    seq: Seq,
    response: HttpResponse,
    wait: Annotated[float, Query(ge=0, allow_inf_nan=False)] = 0,
) -> Status[dict[str, Any]]:
    key = _key(request)
    run = await sync_to_async(remote.remote_run)(key, run_id)
    poll = sync_to_async(remote.remote_action_poll)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, MAX_WAIT_SECONDS)
    # Join the run's doorbell before the first read: a decision committed after the read
    # rings a bell already listening (agents.stepwait).
    async with stepwait.run_bell(run.pk) as bell:
        state = await poll(run=run, seq=seq)
        while state["decision"] == "pending" and loop.time() < deadline:
            if await bell.wait(deadline - loop.time()):
                state = await poll(run=run, seq=seq)
    return _answer(state, response)


@api.post(
    "/runs/{int:run_id}/steps/{int:seq}/result",
    response={200: StepAnswer, **ERRORS},
    summary="Report an allowed step's outcome",
)
def step_result(
    request: HttpRequest, run_id: RunId, seq: Seq, payload: StepReport
) -> dict[str, Any]:
    if not payload.ok and payload.error is None:
        raise BadRequest(NO_ERROR_TEXT)
    run = remote.remote_run(_key(request), run_id)
    return remote.remote_action_report(
        run=run, seq=seq, ok=payload.ok, result=payload.result, error=payload.error or ""
    )


@api.post(
    "/runs/{int:run_id}/model-calls",
    response={201: StepDone, 200: StepDone, **STEP_ERRORS},
    summary="Journal a model call the agent made",
    description="The call is a step of the run (its own `seq`): 201 when journaled, 200 when "
    "the same call was journaled before; 423 when a kill switch covers the agent.",
)
def model_call(
    request: HttpRequest, run_id: RunId, payload: ModelCall, response: HttpResponse
) -> Status[dict[str, Any]]:
    run = remote.remote_run(_key(request), run_id)
    state, new = remote.remote_model_record(
        run=run,
        seq=payload.seq,
        model=check_text(payload.model, "model", TOOL_NAME_LENGTH),
        purpose=payload.purpose,
        tokens_in=payload.tokens_in,
        tokens_out=payload.tokens_out,
        cost_eur=payload.cost_eur,
        output=payload.output,
    )
    answer = _answer(state, response)
    return Status(201, state) if answer.status_code == 200 and new else answer


@api.post(
    "/runs/{int:run_id}/heartbeat",
    response={200: Heartbeat, **ERRORS},
    summary="May the run go on?",
    description="The run's status and whether a kill switch pauses or halts the agent.",
)
def heartbeat(request: HttpRequest, run_id: RunId) -> dict[str, Any]:
    return remote.remote_heartbeat(run=remote.remote_run(_key(request), run_id))


@api.post("/runs/{int:run_id}/finish", response={200: RunOut, **ERRORS}, summary="End the run")
def run_finish(request: HttpRequest, run_id: RunId, payload: RunFinish | None = None) -> Any:
    done = payload or RunFinish(output=None, error="")
    run = remote.remote_run_finish(
        run=remote.remote_run(_key(request), run_id), output=done.output, error=done.error
    )
    return _run_json(run)


@api.get("/agent", response={200: AgentOut, **ERRORS}, summary="The agent and its kill switch")
def agent_show(request: HttpRequest) -> dict[str, Any]:
    return remote.remote_agent(_key(request))
