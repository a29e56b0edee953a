"""The synchronous client, `Baton`, and its `Session`: a run whose steps are numbered for
you and whose tool functions are governed by decorating them."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import httpx

from agents.client import _core
from agents.client._core import MAX_WAIT, Attempts, Call, Retries
from agents.client._governed import RUN, call_args, error_text, from_args, reportable, settle
from agents.client.errors import BatonError, Conflict, RateLimited, ServerError
from agents.client.types import AgentInfo, Heartbeat, Run, Step

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

ASYNC_TOOL = "{name} is a coroutine function: govern it with an AsyncBaton session"


class Baton:
    """Baton's API for one remote agent, authenticated by its API key.

    baton = Baton("https://baton.example.com", key="bk_…")
    run = baton.start_run({"claim": "C-17"}, idempotency_key="claim-C-17")
    step = baton.submit_step(run.id, 1, "payments.pay", {"amount": 120})
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 10.0,
        retries: Retries | None = None,
        approval_timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries or Retries()
        self.timeout = timeout
        self.approval_timeout = approval_timeout
        self._http = httpx.Client(
            base_url=_core.base_url(url),
            headers=_core.client_headers(key),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _do(self, call: Call[T]) -> T:
        attempts = Attempts(call, self.retries)
        while True:
            try:
                response = self._http.send(_core.request_of(self._http, call))
                return call.parse(_core.answer(response))
            except httpx.TransportError as exc:
                failed, unsent = _core.transport_error(exc)
                pause = attempts.pause(failed, unsent=unsent)
                if pause is None:
                    raise failed from exc
            except (RateLimited, ServerError) as error:
                pause = attempts.pause(error)
                if pause is None:
                    raise
            self._sleep(pause)

    # --- the API, call by call ---------------------------------------------------------------

    def start_run(
        self, input: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> Run:
        return self._do(_core.start_run(input, idempotency_key))

    def run(self, run_id: int) -> Run:
        return self._do(_core.run(run_id))

    def submit_step(self, run_id: int, seq: int, tool: str, args: dict[str, Any]) -> Step:
        return self._do(_core.submit_step(run_id, seq, tool, args))

    def step(self, run_id: int, seq: int, wait: float = 0) -> Step:
        """The step now, or with `wait` (at most 30 s) when people decide it, if sooner."""
        return self._do(_core.step(run_id, seq, wait, self.timeout))

    def wait_for_decision(self, run_id: int, seq: int, timeout: float) -> Step:
        """Long-polls the step, 30 s at a time, until it is no longer pending or `timeout`
        seconds have passed (then it is returned still pending)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            step = self.step(run_id, seq, wait=max(0.0, min(MAX_WAIT, left)))
            if step.decision != "pending" or deadline - time.monotonic() <= 0.01:
                return step

    def report(
        self,
        run_id: int,
        seq: int,
        ok: bool,
        result: Any = None,
        error: str | None = None,
    ) -> Step:
        return self._do(_core.report(run_id, seq, ok, result, error))

    def model_call(
        self,
        run_id: int,
        seq: int,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        purpose: str = "",
        cost_eur: float | None = None,
        output: Any = None,
    ) -> Step:
        call = _core.model_call(
            run_id, seq, model, tokens_in, tokens_out, purpose, cost_eur, output
        )
        return self._do(call)

    def heartbeat(self, run_id: int) -> Heartbeat:
        return self._do(_core.heartbeat(run_id))

    def finish(self, run_id: int, output: Any = None, error: str | None = None) -> Run:
        try:
            return self._do(_core.finish(run_id, output, error))
        except Conflict:
            # A repeat whose first answer was lost: the run is already what we asked.
            run = self.run(run_id)
            if _core.finished_alike(run, output, error):
                return run
            raise

    def agent_state(self) -> AgentInfo:
        return self._do(_core.agent_state())

    # --- sessions ----------------------------------------------------------------------------

    def session(
        self, input: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> Session:
        """Start a run (or, with an idempotency key used before, take up the run it started:
        its steps replay from 1, and a step done before is not run again)."""
        return Session(self, self.start_run(input, idempotency_key))

    def resume(self, run_id: int) -> Session:
        """A session on a run started before, replaying its steps from 1."""
        return Session(self, self.run(run_id))


class Session:
    """One run: numbers its steps 1, 2, … and governs the functions it decorates.

    session = baton.session(input={"claim": "C-17"})

    @session.governed("payments.pay")
    def pay(claim_id: str, amount: float) -> dict: ...

    pay(claim_id="C-17", amount=120)   # a step of the run, decided by Baton's gateway
    """

    def __init__(self, client: Baton, run: Run) -> None:
        self.client = client
        self.run = run
        self.finished: Run | None = None
        self._next = 1
        self._lock = threading.Lock()

    @property
    def run_id(self) -> int:
        return self.run.id

    @property
    def next_seq(self) -> int:
        return self._next

    def _numbered(self, send: Callable[[int], Step]) -> Step:
        # A step number is used once the server journaled it: a refused submission (rate
        # limit, kill switch, lost connection) leaves it for the next call. Submissions go
        # in order, one at a time: the server takes a new step only as the next number.
        with self._lock:
            step = send(self._next)
            self._next += 1
            return step

    def submit(self, tool: str, args: dict[str, Any]) -> Step:
        return self._numbered(lambda seq: self.client.submit_step(self.run_id, seq, tool, args))

    def governed(
        self, tool: str, *, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """A decorator: each call of the function becomes a step `tool` of this run, its
        keyword arguments the step's args. Allowed: the function runs with the args as
        Baton returns them (a person may have edited them) and its result or exception is
        reported. Denied: `Denied`. Held for people: waits up to `timeout` seconds (the
        client's approval_timeout by default), then runs or raises `Rejected` or
        `StillPending`. Shadow: the simulated result, the function is not called."""

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(ASYNC_TOOL.format(name=fn.__qualname__))
            signature = inspect.signature(fn)

            @functools.wraps(fn)
            def governed_call(*args: P.args, **kwargs: P.kwargs) -> R:
                return self._govern(tool, fn, signature, args, kwargs, timeout)

            return governed_call

        return decorate

    def call(self, tool: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """One governed call of `fn`, without decorating it."""
        return self.governed(tool)(fn)(*args, **kwargs)

    def _govern(
        self,
        tool: str,
        fn: Callable[..., Any],
        signature: inspect.Signature,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        step = self.submit(tool, call_args(signature, args, kwargs))
        waited = 0.0
        if step.decision == "pending":
            waited = self.client.approval_timeout if timeout is None else timeout
            step = self.client.wait_for_decision(self.run_id, step.seq, waited)
        outcome = settle(step, tool, waited)
        if outcome is not RUN:
            return outcome
        positional, keywords = from_args(signature, step.args)
        try:
            result = fn(*positional, **keywords)
        except Exception as exc:
            self.client.report(self.run_id, step.seq, ok=False, error=error_text(exc))
            raise
        self.client.report(self.run_id, step.seq, ok=True, result=reportable(result))
        return result

    def model_call(
        self,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        purpose: str = "",
        cost_eur: float | None = None,
        output: Any = None,
    ) -> Step:
        """Journal a model call the agent made, as the run's next step."""
        return self._numbered(
            lambda seq: self.client.model_call(
                self.run_id,
                seq,
                model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                purpose=purpose,
                cost_eur=cost_eur,
                output=output,
            )
        )

    def heartbeat(self) -> Heartbeat:
        return self.client.heartbeat(self.run_id)

    def finish(self, output: Any = None, error: str | None = None) -> Run:
        self.finished = self.client.finish(self.run_id, output, error)
        return self.finished

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Finishes the run if the block did not: failed with the exception's text if one
        ends the block (a run a kill switch stopped cannot be finished; that is no news)."""
        if self.finished is not None:
            return
        if exc is None:
            self.finish()
            return
        with contextlib.suppress(BatonError):  # the block's own exception says more
            self.finish(error=error_text(exc))
