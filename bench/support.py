"""A no-op tool and a program that times each governed step, for the benchmarks."""

from __future__ import annotations

import time
from typing import Any

from agents.registry import ToolCall, program, tool

NOOP_SCHEMA = {
    "type": "object",
    "properties": {"i": {"type": "integer"}},
    "required": ["i"],
    "additionalProperties": False,
}


@tool("bench.noop", schema=NOOP_SCHEMA, idempotent=True)
def noop(call: ToolCall) -> dict[str, Any]:
    return {"i": call.args["i"]}


@program
def timed_steps(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Times each governed step; the timings are the output (so nothing replays here)."""
    timings = []
    for i in range(input["steps"]):
        started = time.perf_counter()
        ctx.tool("bench.noop", i=i)
        timings.append(time.perf_counter() - started)
    return {"timings": timings}


MARK_SCHEMA = {
    "type": "object",
    "properties": {"token": {"type": "string"}},
    "required": ["token"],
    "additionalProperties": False,
}


@tool("bench.mark", schema=MARK_SCHEMA, idempotent=True)
def mark(call: ToolCall) -> dict[str, Any]:
    """Says when it starts (CLOCK_MONOTONIC, comparable across processes on this machine)."""
    import os

    import redis

    started = time.perf_counter_ns()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.lpush("bench:started", f"{call.args['token']} {started}")
    return {"token": call.args["token"]}


@program
def held_mark(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """One step, held for approval; its tool marks the moment it starts."""
    return ctx.tool("bench.mark", token=input["token"])


BUSY_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "work_ms": {"type": "number", "minimum": 0}},
    "required": ["n", "work_ms"],
    "additionalProperties": False,
}

_busy_redis: Any = None


def _busy_client() -> Any:
    global _busy_redis
    if _busy_redis is None:
        import os

        import redis

        _busy_redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _busy_redis


@tool("bench.busy", schema=BUSY_SCHEMA, idempotent=True)
def busy(call: ToolCall) -> dict[str, Any]:
    """A small step of real work (a sleep of `work_ms`) that records when it started and
    ended (CLOCK_MONOTONIC, comparable across processes on this machine) in Redis."""
    started = time.perf_counter_ns()
    time.sleep(call.args["work_ms"] / 1000)
    ended = time.perf_counter_ns()
    _busy_client().rpush(f"bench:busy:{call.run_id}", f"{call.args['n']} {started} {ended}")
    return {"n": call.args["n"]}


@program
def busy_agent(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """A busy agent: a long run of small governed steps, back to back, until stopped."""
    done = 0
    for i in range(input.get("steps", 100_000)):
        ctx.tool("bench.busy", n=i, work_ms=input.get("work_ms", 5))
        done += 1
    return {"done": done}
