"""What the sync and the async client share: each API call as a value (method, path, body,
how to read the answer, whether it may be sent again), how an answer becomes a value or an
exception, and when to try again. No I/O happens here."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from agents.client.errors import (
    BY_CODE,
    BY_STATUS,
    ApiError,
    BatonError,
    ConnectionFailed,
    RateLimited,
    ServerError,
)
from agents.client.types import AgentInfo, Heartbeat, Run, Step

T = TypeVar("T")

API_PREFIX = "/api/v1"
# The server waits at most this long in one long poll (agents.api.MAX_WAIT_SECONDS).
MAX_WAIT = 30.0
USER_AGENT = "baton-python-client/1"


@dataclass(frozen=True)
class Retries:
    """When the client asks again by itself.

    A 429 (nothing was journaled) is asked again after its `Retry-After`, for any call,
    until `rate_limit_wait` seconds of waiting are used up. A connection error or a 5xx is
    asked again up to `attempts` times in all, with doubling pauses from `backoff`, only for
    a call that is safe to repeat (every call but a run start without an idempotency key;
    a request that never reached the server is always safe)."""

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 5.0
    rate_limit_wait: float = 60.0


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    read_timeout: float | None = None


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def client_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT}


def request_of(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    timeout = http.timeout
    if call.read_timeout is not None:
        timeout = httpx.Timeout(
            connect=timeout.connect, read=call.read_timeout, write=timeout.write, pool=timeout.pool
        )
    return http.build_request(
        call.method,
        call.path,
        json=call.body,
        params=call.params or None,
        headers=call.headers or None,
        timeout=timeout,
    )


def answer(response: httpx.Response) -> Any:
    """The answer's JSON, or the exception its status and `code` stand for."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if response.status_code < 400:
        return body
    details = body if isinstance(body, dict) else {}
    code = str(details.get("code") or "")
    message = str(details.get("error") or response.reason_phrase or response.status_code)
    status = response.status_code
    if status == 429:
        raise RateLimited(status, code, message, body, retry_after=retry_after(response, details))
    kind = BY_CODE.get(code) or BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else ApiError
    raise kind(status, code, message, body)


def retry_after(response: httpx.Response, details: dict[str, Any]) -> float:
    header = response.headers.get("Retry-After", "")
    if header.strip().isdigit():
        return float(header)
    value = details.get("retry_after")
    if isinstance(value, int | float) and value >= 0:
        return float(math.ceil(value))
    return 1.0


class Attempts:
    """The retry bookkeeping of one call."""

    def __init__(self, call: Call[Any], retries: Retries) -> None:
        self.call = call
        self.retries = retries
        self.tries = 0
        self.rate_waited = 0.0

    def pause(self, error: BatonError, *, unsent: bool = False) -> float | None:
        """Seconds to wait before the next attempt, or None: raise `error`."""
        self.tries += 1
        if isinstance(error, RateLimited):
            if self.rate_waited + error.retry_after > self.retries.rate_limit_wait:
                return None
            self.rate_waited += error.retry_after
            return error.retry_after
        repeatable = isinstance(error, ServerError | ConnectionFailed) and (
            self.call.idempotent or unsent
        )
        if not repeatable or self.tries >= self.retries.attempts:
            return None
        return min(self.retries.max_backoff, self.retries.backoff * 2 ** (self.tries - 1))


def transport_error(exc: httpx.TransportError) -> tuple[ConnectionFailed, bool]:
    """The exception to raise for a transport failure, and whether the request surely never
    reached the server (then repeating it is safe whatever it is)."""
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    failed = ConnectionFailed(f"{type(exc).__name__}: {exc}")
    failed.__cause__ = exc
    return failed, unsent


# --- the calls -------------------------------------------------------------------------------


def start_run(input: dict[str, Any] | None, idempotency_key: str | None) -> Call[Run]:
    return Call(
        "POST",
        "/runs",
        Run.of,
        body={"input": input or {}},
        headers={"Idempotency-Key": idempotency_key} if idempotency_key else {},
        # Without a key a repeated start would start a second run.
        idempotent=bool(idempotency_key),
    )


def run(run_id: int) -> Call[Run]:
    return Call("GET", f"/runs/{run_id}", Run.of)


def submit_step(run_id: int, seq: int, tool: str, args: dict[str, Any]) -> Call[Step]:
    # Idempotent by (run, seq): the same call again answers the same step.
    return Call(
        "POST", f"/runs/{run_id}/steps", Step.of, body={"seq": seq, "tool": tool, "args": args}
    )


def step(run_id: int, seq: int, wait: float, timeout: float) -> Call[Step]:
    wait = max(0.0, min(wait, MAX_WAIT))
    return Call(
        "GET",
        f"/runs/{run_id}/steps/{seq}",
        Step.of,
        params={"wait": f"{wait:g}"} if wait else {},
        read_timeout=wait + timeout,
    )


def report(run_id: int, seq: int, ok: bool, result: Any, error: str | None) -> Call[Step]:
    body: dict[str, Any] = {"ok": ok, "result": result}
    if not ok:
        body["error"] = error or "failed"
    return Call("POST", f"/runs/{run_id}/steps/{seq}/result", Step.of, body=body)


def model_call(
    run_id: int,
    seq: int,
    model: str,
    tokens_in: int,
    tokens_out: int,
    purpose: str,
    cost_eur: float | None,
    output: Any,
) -> Call[Step]:
    body = {
        "seq": seq,
        "model": model,
        "purpose": purpose,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "output": output,
    }
    if cost_eur is not None:
        body["cost_eur"] = cost_eur
    return Call("POST", f"/runs/{run_id}/model-calls", Step.of, body=body)


def heartbeat(run_id: int) -> Call[Heartbeat]:
    return Call("POST", f"/runs/{run_id}/heartbeat", Heartbeat.of)


def finish(run_id: int, output: Any, error: str | None) -> Call[Run]:
    body: dict[str, Any] = {"error": error} if error else {"output": output}
    return Call("POST", f"/runs/{run_id}/finish", Run.of, body=body)


def finished_alike(run: Run, output: Any, error: str | None) -> bool:
    """Whether `run` is what finishing it with `output` / `error` makes: a repeated finish
    whose first answer was lost finds it so (the API answers the repeat 409)."""
    if error:
        return run.status == "failed" and run.error == error
    return run.status == "succeeded" and run.output == json.loads(json.dumps(output))


def agent_state() -> Call[AgentInfo]:
    return Call("GET", "/agent", AgentInfo.of)
