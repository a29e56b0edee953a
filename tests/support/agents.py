"""Programs and tools for the suite, loaded into the test process and into the real
Celery workers it starts (BATON_AGENT_MODULES). Their side effects are counted in Redis
so a test can see how many times a tool body really ran, across processes."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any, cast

import redis

from agents.errors import ActionRejected
from agents.models import Payment
from agents.registry import Risk, ToolCall, program, tool

_redis = None


def r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _redis


def executions(key: str) -> int:
    # redis-py types a sync client's reply as maybe awaitable.
    return int(cast("bytes | None", r().get(f"test:exec:{key}")) or 0)


COUNT_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["label"],
    "additionalProperties": False,
}


@tool("test.count", schema=COUNT_SCHEMA, idempotent=True)
def count(call: ToolCall) -> dict[str, Any]:
    """Counts how often its body runs, per label."""
    total = r().incr(f"test:exec:{call.args['label']}")
    return {"label": call.args["label"], "executions": total}


@tool("test.count_once", schema=COUNT_SCHEMA, idempotent=False)
def count_once(call: ToolCall) -> dict[str, Any]:
    """Like test.count, but declares no idempotency: a crash mid-step holds it."""
    total = r().incr(f"test:exec:{call.args['label']}")
    return {"label": call.args["label"], "executions": total}


PAY_SCHEMA = {
    "type": "object",
    "properties": {
        "claim_id": {"type": "string"},
        "amount": {"type": "number", "exclusiveMinimum": 0},
        "gate": {"type": "string"},
    },
    "required": ["claim_id", "amount"],
    "additionalProperties": False,
}


@tool("test.pay", schema=PAY_SCHEMA, risk=Risk.HIGH, idempotent=True)
def pay(call: ToolCall) -> dict[str, Any]:
    """Pays (sandbox ledger, keyed by the idempotency key), then waits at an optional
    gate: a test can kill the worker after the side effect and before the outcome."""
    r().incr(f"test:exec:pay:{call.args['claim_id']}")
    payment, _ = Payment.objects.get_or_create(
        idempotency_key=call.idempotency_key,
        defaults={
            "claim_id": call.args["claim_id"],
            "payee": "test",
            "amount": Decimal(str(call.args["amount"])),
            "currency": "EUR",
        },
    )
    gate = call.args.get("gate")
    if gate:
        r().rpush(f"test:reached:{gate}", 1)
        r().blpop([f"test:open:{gate}"], timeout=30)
    return {"payment_id": payment.pk, "amount": str(payment.amount)}


@program
def counter(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Calls test.count `steps` times, then optionally a held step, then counts again."""
    results = [
        ctx.tool("test.count", label=input["label"], n=i)["executions"]
        for i in range(input.get("steps", 3))
    ]
    return {"results": results}


@program
def slow_counter(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Many small steps, each waiting a little at a gate-free sleep: a busy agent."""
    import time

    done = 0
    for i in range(input.get("steps", 200)):
        ctx.tool("test.count", label=input["label"], n=i)
        done += 1
        time.sleep(input.get("pause", 0.02))
    return {"done": done}


@program
def gated_payout(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    before = ctx.tool("test.count", label=f"{input['claim_id']}:before")
    paid = ctx.tool(
        "test.pay", claim_id=input["claim_id"], amount=input["amount"], gate=input.get("gate", "")
    )
    after = ctx.tool("test.count", label=f"{input['claim_id']}:after")
    return {"paid": paid, "before": before["executions"], "after": after["executions"]}


@program
def fragile(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """A non-idempotent step the worker dies in the middle of."""
    done = ctx.tool("test.count_once", label=input["label"])
    return {"executions": done["executions"]}


@program
def divergent(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Asks for a different tool on replay when a flag in Redis changes: a program that
    is not deterministic given its journal."""
    first = "test.count" if r().get(f"test:flip:{input['label']}") is None else "test.pay"
    if first == "test.count":
        ctx.tool("test.count", label=input["label"])
    else:
        ctx.tool("test.pay", claim_id=input["label"], amount=1)
    ctx.tool("test.held", label=input["label"])
    return {}


@tool("test.held", schema=COUNT_SCHEMA, idempotent=True)
def held(call: ToolCall) -> dict[str, Any]:
    total = r().incr(f"test:exec:held:{call.args['label']}")
    return {"executions": total}


@tool("test.refuse", schema=COUNT_SCHEMA, idempotent=True)
def refuse(call: ToolCall) -> dict[str, Any]:
    """A tool whose system refuses the call: the step fails with the tool's error."""
    raise ValueError(f"the upstream refused claim {call.args['label']}")


@program
def payout_with_fallback(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Pays; if a person rejects, records the reason through another tool."""
    try:
        paid = ctx.tool("test.pay", claim_id=input["claim_id"], amount=input["amount"])
    except ActionRejected as rejected:
        ctx.tool("test.count", label=f"rejected:{input['claim_id']}")
        return {"paid": False, "reason": rejected.reason}
    return {"paid": True, "amount": paid["amount"]}


@program
def rogue(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Tries a call with arguments that break the schema, then an unlisted tool."""
    outcomes = {}
    for name, args in input["calls"]:
        try:
            outcomes[name] = ctx.tool(name, **args)
        except Exception as exc:  # noqa: BLE001  (the test reads what the agent saw)
            outcomes[name] = f"{type(exc).__name__}: {exc}"
    return outcomes


from tests.support import runtime_agents  # noqa: E402, F401  (registers the runtime tests' programs)
