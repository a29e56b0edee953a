"""The asynchronous client, `AsyncBaton`, and its `AsyncSession`: the same methods as
`Baton` and `Session` (agents.client.sync), awaited."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, overload

import httpx

from agents.client import _core
from agents.client._core import MAX_WAIT, Attempts, Call, Retries
from agents.client._governed import RUN, call_args, error_text, from_args, reportable, settle
from agents.client.errors import BatonError, Conflict, RateLimited, ServerError
from agents.client.types import AgentInfo, Heartbeat, Run, Step

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class AsyncBaton:
    """Baton's API for one remote agent, for asyncio programs (see agents.client.Baton)."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 10.0,
        retries: Retries | None = None,
        approval_timeout: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries or Retries()
        self.timeout = timeout
        self.approval_timeout = approval_timeout
        self._http = httpx.AsyncClient(
            base_url=_core.base_url(url),
            headers=_core.client_headers(key),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _do(self, call: Call[T]) -> T:
        attempts = Attempts(call, self.retries)
        while True:
            try:
                response = await self._http.send(_core.request_of(self._http, call))
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
            await self._sleep(pause)

    # --- the API, call by call ---------------------------------------------------------------

    async def start_run(
        self, input: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> Run:
        return await self._do(_core.start_run(input, idempotency_key))

    async def run(self, run_id: int) -> Run:
        return await self._do(_core.run(run_id))

    async def submit_step(self, run_id: int, seq: int, tool: str, args: dict[str, Any]) -> Step:
        return await self._do(_core.submit_step(run_id, seq, tool, args))

    async def step(self, run_id: int, seq: int, wait: float = 0) -> Step:
        return await self._do(_core.step(run_id, seq, wait, self.timeout))

    async def wait_for_decision(self, run_id: int, seq: int, timeout: float) -> Step:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            step = await self.step(run_id, seq, wait=max(0.0, min(MAX_WAIT, left)))
            if step.decision != "pending" or deadline - loop.time() <= 0.01:
                return step

    async def report(
        self,
        run_id: int,
        seq: int,
        ok: bool,
        result: Any = None,
        error: str | None = None,
    ) -> Step:
        return await self._do(_core.report(run_id, seq, ok, result, error))

    async def model_call(
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
        return await self._do(call)

    async def heartbeat(self, run_id: int) -> Heartbeat:
        return await self._do(_core.heartbeat(run_id))

    async def finish(self, run_id: int, output: Any = None, error: str | None = None) -> Run:
        try:
            return await self._do(_core.finish(run_id, output, error))
        except Conflict:
            run = await self.run(run_id)
            if _core.finished_alike(run, output, error):
                return run
            raise

    async def agent_state(self) -> AgentInfo:
        return await self._do(_core.agent_state())

    # --- sessions ----------------------------------------------------------------------------

    async def session(
        self, input: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> AsyncSession:
        return AsyncSession(self, await self.start_run(input, idempotency_key))

    async def resume(self, run_id: int) -> AsyncSession:
        return AsyncSession(self, await self.run(run_id))


class AsyncSession:
    """One run for an asyncio agent (see agents.client.Session). It governs coroutine
    functions, and plain functions too (called on the event loop's thread)."""

    def __init__(self, client: AsyncBaton, run: Run) -> None:
        self.client = client
        self.run = run
        self.finished: Run | None = None
        self._next = 1
        self._lock = asyncio.Lock()

    @property
    def run_id(self) -> int:
        return self.run.id

    @property
    def next_seq(self) -> int:
        return self._next

    async def _numbered(self, send: Callable[[int], Awaitable[Step]]) -> Step:
        async with self._lock:
            step = await send(self._next)
            self._next += 1
            return step

    async def submit(self, tool: str, args: dict[str, Any]) -> Step:
        return await self._numbered(
            lambda seq: self.client.submit_step(self.run_id, seq, tool, args)
        )

    def governed(self, tool: str, *, timeout: float | None = None) -> AsyncGoverned:
        return AsyncGoverned(self, tool, timeout)

    async def _govern(
        self,
        tool: str,
        fn: Callable[..., Any],
        signature: inspect.Signature,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        step = await self.submit(tool, call_args(signature, args, kwargs))
        waited = 0.0
        if step.decision == "pending":
            waited = self.client.approval_timeout if timeout is None else timeout
            step = await self.client.wait_for_decision(self.run_id, step.seq, waited)
        outcome = settle(step, tool, waited)
        if outcome is not RUN:
            return outcome
        positional, keywords = from_args(signature, step.args)
        try:
            result = fn(*positional, **keywords)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            await self.client.report(self.run_id, step.seq, ok=False, error=error_text(exc))
            raise
        await self.client.report(self.run_id, step.seq, ok=True, result=reportable(result))
        return result

    async def model_call(
        self,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        purpose: str = "",
        cost_eur: float | None = None,
        output: Any = None,
    ) -> Step:
        return await self._numbered(
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

    async def heartbeat(self) -> Heartbeat:
        return await self.client.heartbeat(self.run_id)

    async def finish(self, output: Any = None, error: str | None = None) -> Run:
        self.finished = await self.client.finish(self.run_id, output, error)
        return self.finished

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.finished is not None:
            return
        if exc is None:
            await self.finish()
            return
        with contextlib.suppress(BatonError):  # the block's own exception says more
            await self.finish(error=error_text(exc))


class AsyncGoverned:
    """The decorator AsyncSession.governed returns: a coroutine function or a plain one
    becomes a coroutine function whose every call is a governed step."""

    def __init__(self, session: AsyncSession, tool: str, timeout: float | None) -> None:
        self.session = session
        self.tool = tool
        self.timeout = timeout

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
        signature = inspect.signature(fn)
        session, tool, timeout = self.session, self.tool, self.timeout

        @functools.wraps(fn)
        async def governed_call(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await session._govern(tool, fn, signature, args, kwargs, timeout)

        return governed_call
