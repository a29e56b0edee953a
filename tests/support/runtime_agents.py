"""Programs and tools for the runtime's fault and load tests (tests/agents/test_lock_order.py,
test_faults.py, test_load.py). Loaded with tests.support.agents, into the test process and
the workers it starts; side effects are counted in Redis, like the tools there."""

from __future__ import annotations

from typing import Any

from agents.errors import ActionRejected
from agents.llm import register_model
from agents.registry import ToolCall, program, tool
from tests.support.agents import COUNT_SCHEMA


@program
def decided(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """A step, a step people decide (approve rule on test.held), a step: a rejection or an
    expiry is an answer the agent handles, so every run of it ends `succeeded`."""
    label = input["label"]
    ctx.tool("test.count", label=f"{label}:before")
    try:
        ctx.tool("test.held", label=label)
        outcome = "approved"
    except ActionRejected:
        outcome = "rejected"
    ctx.tool("test.count", label=f"{label}:after")
    return {"outcome": outcome}


def _redis() -> Any:
    from tests.support.agents import r

    return r()


def _wait_at_gate(gate: str) -> None:
    """Say the gate is reached, then wait until the test opens it: a step as long as the
    test wants, ended by an observable event rather than a sleep."""
    _redis().rpush(f"test:reached:{gate}", 1)
    _redis().blpop([f"test:open:{gate}"], timeout=120)


@tool("test.slow_once", schema=COUNT_SCHEMA, idempotent=False)
def slow_once(call: ToolCall) -> dict[str, Any]:
    """A non-idempotent step that lasts until the test opens its gate."""
    total = _redis().incr(f"test:exec:{call.args['label']}")
    _wait_at_gate(f"tool:{call.args['label']}")
    return {"label": call.args["label"], "executions": total}


class GatedModel:
    """A model call that lasts until the test opens its gate; counts how often it is billed."""

    name = "gated"

    def complete(self, *, prompt: str, purpose: str, config: dict[str, Any]) -> dict[str, Any]:
        billed = _redis().incr(f"test:exec:model:{purpose}")
        _wait_at_gate(f"model:{purpose}")
        return {
            "output": {"answer": f"considered {purpose}", "billed": billed},
            "tokens_in": 10,
            "tokens_out": 5,
            "cost_eur": 0.01,
            "rationale": "waited for the test",
        }


register_model(GatedModel())


@program
def slow_steps(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """A model call and a tool call, each as long as the test keeps its gate shut."""
    label = input["label"]
    answer = ctx.model(f"think about {label}", purpose=label)
    done = ctx.tool("test.slow_once", label=label)
    return {"answer": answer, "executions": done["executions"]}


@tool("test.pause_me", schema=COUNT_SCHEMA, idempotent=True)
def pause_me(call: ToolCall) -> dict[str, Any]:
    """Engages a pause on the calling agent, as a supervisor would between two steps."""
    from agents.models import Agent
    from agents.services import killswitch_engage

    total = _redis().incr(f"test:exec:{call.args['label']}")
    agent = Agent.objects.get(slug=call.agent_slug)
    killswitch_engage(scope="agent", agent=agent, mode="pause", reason="look first", user=None)
    return {"executions": total}


@program
def clock(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """A step, then the clock and a random number: values are steps too."""
    ctx.tool(input.get("first", "test.count"), label=input["label"])
    return {"now": ctx.now().isoformat(), "random": ctx.random()}


class RefusingMailBackend:
    """An e-mail backend whose relay refuses everything, with an error no one expected."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send_messages(self, messages: Any) -> int:
        raise RuntimeError("the mail relay refused")


@program
def load_payout(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """The load test's agent: a step, a payout (held for people above a limit), a step,
    with a pause between them so that kills and restarts land mid-run."""
    import time

    claim = input["claim_id"]
    ctx.tool("test.count", label=f"{claim}:before")
    time.sleep(input.get("pause", 0))
    try:
        ctx.tool("test.pay", claim_id=claim, amount=input["amount"])
        outcome = "paid"
    except ActionRejected:
        outcome = "rejected"
    time.sleep(input.get("pause", 0))
    ctx.tool("test.count", label=f"{claim}:after")
    return {"outcome": outcome}
