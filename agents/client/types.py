"""What the API answers, as typed values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "pending", "shadow", "done", "deny", "rejected"]
AgentState = Literal["active", "paused", "halted"]


@dataclass(frozen=True)
class Run:
    id: int
    agent: str
    version: int
    status: str
    output: Any
    error: str
    steps: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> Run:
        return cls(
            id=data["run"],
            agent=data["agent"],
            version=data["version"],
            status=data["status"],
            output=data.get("output"),
            error=data.get("error") or "",
            steps=data.get("steps", 0),
        )


@dataclass(frozen=True)
class Step:
    """A step and the gateway's decision on it.

    allow: run the tool now with `args` (as approved: a person may have edited them), then
    report; pending: people decide, wait for it; shadow: `result` is simulated, do not run
    the tool; done: reported before (`result`, `error`); deny / rejected: `reason`."""

    seq: int
    tool: str
    status: str
    decision: Decision
    args: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = ""
    result: Any = None
    error: str = ""
    reason: str = ""

    @classmethod
    def of(cls, data: dict[str, Any]) -> Step:
        return cls(
            seq=data["seq"],
            tool=data["tool"],
            status=data["status"],
            decision=data["decision"],
            args=data.get("args") or {},
            idempotency_key=data.get("idempotency_key") or "",
            result=data.get("result"),
            error=data.get("error") or "",
            reason=data.get("reason") or "",
        )


@dataclass(frozen=True)
class Heartbeat:
    run: int
    status: str
    agent_state: AgentState

    @classmethod
    def of(cls, data: dict[str, Any]) -> Heartbeat:
        return cls(run=data["run"], status=data["status"], agent_state=data["agent_state"])


@dataclass(frozen=True)
class AgentInfo:
    agent: str
    name: str
    state: AgentState
    live_version: int | None

    @classmethod
    def of(cls, data: dict[str, Any]) -> AgentInfo:
        return cls(
            agent=data["agent"],
            name=data["name"],
            state=data["state"],
            live_version=data.get("live_version"),
        )
