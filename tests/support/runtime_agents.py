"""Programs and tools for the runtime's fault and load tests (tests/agents/test_lock_order.py,
test_faults.py, test_load.py). Loaded with tests.support.agents, into the test process and
the workers it starts; side effects are counted in Redis, like the tools there."""

from __future__ import annotations

from typing import Any

from agents.errors import ActionRejected
from agents.registry import program


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
