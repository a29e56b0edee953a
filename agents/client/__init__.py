"""A Python client for Baton's API for remote agents, and `governed`: one line puts a
function under Baton as a governed tool call.

    from agents.client import Baton, governed

    baton = Baton("https://baton.example.com", key=os.environ["BATON_API_KEY"])
    session = baton.session(input={"claim": "C-17"})

    @governed(session, tool="payments.pay")
    def pay(claim_id: str, amount: float) -> dict: ...

It needs only httpx and the standard library (no Django, nothing else of Baton), so it
can be copied into any agent's code as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar, overload

from agents.client._core import Retries
from agents.client.aio import AsyncBaton, AsyncGoverned, AsyncSession
from agents.client.errors import (
    ApiError,
    BadRequest,
    BatonError,
    Conflict,
    ConnectionFailed,
    Denied,
    Halted,
    NotFound,
    Paused,
    RateLimited,
    Rejected,
    ServerError,
    StepFailed,
    StillPending,
    Stopped,
    Unauthorized,
)
from agents.client.sync import Baton, Session
from agents.client.types import AgentInfo, AgentState, Decision, Heartbeat, Run, Step

P = ParamSpec("P")
R = TypeVar("R")


@overload
def governed(
    session: Session, *, tool: str, timeout: float | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def governed(
    session: AsyncSession, *, tool: str, timeout: float | None = None
) -> AsyncGoverned: ...


def governed(
    session: Session | AsyncSession, *, tool: str, timeout: float | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]] | AsyncGoverned:
    """`@governed(session, tool="payments.pay")`: the same as `@session.governed(...)`."""
    return session.governed(tool, timeout=timeout)


__all__ = [
    "AgentInfo",
    "AgentState",
    "ApiError",
    "AsyncBaton",
    "AsyncSession",
    "BadRequest",
    "Baton",
    "BatonError",
    "Conflict",
    "ConnectionFailed",
    "Decision",
    "Denied",
    "Halted",
    "Heartbeat",
    "NotFound",
    "Paused",
    "RateLimited",
    "Rejected",
    "Retries",
    "Run",
    "ServerError",
    "Session",
    "Step",
    "StepFailed",
    "StillPending",
    "Stopped",
    "Unauthorized",
    "governed",
]
