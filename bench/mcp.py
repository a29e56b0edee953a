"""MCP gateway benchmark (issue 12): an allowed tools/call through Baton's /mcp/ endpoint
(the console under uvicorn, console.asgi → agents.mcp: the key check, the gateway decision,
the forward to the upstream server, the result journaled) beside the same tools/call made
straight to the upstream server, with the same client code, in the same run.

The upstream is bench.mcp_upstream (the official SDK; one tool that answers at once),
served over Streamable HTTP by its own process. The agent is the SDK's Streamable HTTP
client (ClientSession) with the agent's key; an allow-all policy. Baton forwards each
admitted call over a connection of its own to the upstream (agents.mcp.upstream: connect,
initialize, call, close), so a third row measures exactly that from the client here: a
fresh upstream session per call. A call's latency is the whole tools/call (decision,
forward, journaled result), as the agent sees it.

- Latency: one session each, sequential, CALLS calls; the three kinds interleaved so the
  machine's drift touches all alike. An MCP session is one run, so these calls are steps
  1…CALLS of one run (the gateway reads the run's journal at each step: the last rows
  compare the first 50 calls with the last 50).
- Rate: N sessions (asyncio tasks on one loop, each its own connection) for RATE_SECONDS
  each, calls/s through Baton beside calls/s straight to the upstream.
- stdio: the same through an upstream Baton starts as a command (the way the tests
  register it), a new process per forwarded call, STDIO_CALLS calls.
Run: python -m bench.mcp   (BATON_AGENT_MODULES must include bench.support)
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bench.common import ROOT, log_path, ms, pct, report, service_env, start_web, use_bench_database
from bench.remote_api import load
from bench.remote_longpoll import free_port

CALLS = int(os.environ.get("BENCH_MCP_CALLS", "500"))
STDIO_CALLS = int(os.environ.get("BENCH_MCP_STDIO_CALLS", "20"))
CLIENTS = (1, 4, 8)
RATE_SECONDS = float(os.environ.get("BENCH_MCP_RATE_SECONDS", "5"))
WARM_UP = 20
# As a module from the repository (the web process runs there too): as a script, its
# folder would come first on sys.path and this file would shadow the SDK's `mcp`.
UPSTREAM = ["-m", "bench.mcp_upstream"]
TOOL = "bench.echo"


@asynccontextmanager
async def session_http(url: str, key: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def session_stdio() -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=[*UPSTREAM, "stdio"])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def timed_call(session: ClientSession, i: int) -> float:
    started = time.perf_counter_ns()
    result = await session.call_tool(TOOL, {"i": i})
    took = (time.perf_counter_ns() - started) / 1e9
    assert not result.is_error and f"echo {i}" in str(result.content), result
    return took


async def calls_per_second(
    open_session: Callable[[], Any],
    clients: int,
    call: Callable[[ClientSession, int], Awaitable[Any]],
) -> float:
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(open_session()) for _ in range(clients)]
        for session in sessions:
            await call(session, 0)
        counts = [0] * clients
        deadline = time.perf_counter() + RATE_SECONDS
        started = time.perf_counter()

        async def loop(n: int) -> None:
            while time.perf_counter() < deadline:
                counts[n] += 1
                await call(sessions[n], counts[n])

        async with anyio.create_task_group() as group:
            for n in range(clients):
                group.start_soon(loop, n)
        return sum(counts) / (time.perf_counter() - started)


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the upstream MCP server did not start: {log_path('bench-mcp-up.log')}")


def setup() -> tuple[str, str, str, str]:
    """Two remote agents, allow-all, one with the HTTP upstream and one with the stdio one;
    the upstream started. Returns the database URL, the upstream URL and the two keys."""
    db_url = use_bench_database(os.environ.get("BENCH_DATABASE", "baton_bench_mcp"))
    from agents.mcp.services import mcp_server_add
    from agents.models import Agent
    from agents.remote import apikey_create
    from agents.services import agent_create, team_create, version_create, version_publish

    team = team_create(slug="bench", name="Bench")
    keys = []
    for slug in ("bench-mcp-http", "bench-mcp-stdio"):
        agent = agent_create(slug=slug, name=slug, team=team, kind=Agent.Kind.REMOTE)
        version_publish(
            version=version_create(
                agent=agent, program="", policy={"rules": [{"tool": "*", "effect": "allow"}]}
            ),
            user=None,
            reason="benchmark set-up",
        )
        keys.append(apikey_create(agent=agent, name="bench", user=None)[1])
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"
    agents = {a.slug: a for a in Agent.objects.all()}
    mcp_server_add(
        agent=agents["bench-mcp-http"],
        user=None,
        name="bench",
        transport="http",
        url=upstream_url,
    )
    with _stdio_allowed():
        mcp_server_add(
            agent=agents["bench-mcp-stdio"],
            user=None,
            name="bench",
            transport="stdio",
            command=[sys.executable, *UPSTREAM, "stdio"],
        )
    return db_url, upstream_url, keys[0], keys[1]


def _stdio_allowed() -> Any:
    from django.test import override_settings

    return override_settings(BATON_MCP_STDIO_COMMANDS=[sys.executable])


async def measure(baton: str, upstream: str, key: str, stdio_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {"loads": [load()]}
    bare: list[float] = []
    fresh: list[float] = []
    gated: list[float] = []
    async with session_http(upstream) as direct, session_http(baton, key) as agent:
        for i in range(WARM_UP):
            await timed_call(direct, i)
            await timed_call(agent, i)
        for i in range(CALLS):
            bare.append(await timed_call(direct, i))
            started = time.perf_counter_ns()
            async with session_http(upstream) as one:
                await one.call_tool(TOOL, {"i": i})
            fresh.append((time.perf_counter_ns() - started) / 1e9)
            gated.append(await timed_call(agent, i))
    out.update(bare=bare, fresh=fresh, gated=gated)
    out["loads"].append(load())

    out["rates"] = [
        (
            clients,
            await calls_per_second(lambda: session_http(baton, key), clients, timed_call),
            await calls_per_second(lambda: session_http(upstream), clients, timed_call),
        )
        for clients in CLIENTS
    ]
    out["loads"].append(load())

    stdio_bare: list[float] = []
    stdio_fresh: list[float] = []
    stdio_gated: list[float] = []
    async with session_stdio() as direct, session_http(baton, stdio_key) as agent:
        await timed_call(direct, 0)
        await timed_call(agent, 0)
        for i in range(STDIO_CALLS):
            stdio_bare.append(await timed_call(direct, i))
            started = time.perf_counter_ns()
            async with session_stdio() as one:
                await one.call_tool(TOOL, {"i": i})
            stdio_fresh.append((time.perf_counter_ns() - started) / 1e9)
            stdio_gated.append(await timed_call(agent, i))
    out.update(stdio_bare=stdio_bare, stdio_fresh=stdio_fresh, stdio_gated=stdio_gated)
    out["loads"].append(load())
    return out


def main() -> None:
    for name in ("httpx", "httpx2", "mcp"):
        logging.getLogger(name).setLevel(logging.WARNING)  # a line per request otherwise
    db_url, upstream_url, key, stdio_key = setup()
    up_port = int(upstream_url.split(":")[2].split("/")[0])
    up_log = open(log_path("bench-mcp-up.log"), "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, *UPSTREAM, "http", str(up_port)],
        cwd=ROOT,
        stdout=up_log,
        stderr=subprocess.STDOUT,
    )
    env, _queue = service_env(db_url, BATON_MCP_STDIO_COMMANDS=sys.executable)
    port = free_port()
    server = None
    try:
        wait_port(up_port, up)
        server = start_web(env, port, "bench-mcp-web.log")
        out = anyio.run(measure, f"http://127.0.0.1:{port}/mcp/", upstream_url, key, stdio_key)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        up.terminate()
        up.wait(10)

    def p(name: str, q: float) -> float:
        return pct(out[name], q)

    print(
        f"MCP gateway benchmark: {CALLS} allowed tools/call in one session "
        f"(HTTP upstream), {STDIO_CALLS} with a stdio upstream; "
        f"then {RATE_SECONDS:.0f} s at each of {', '.join(map(str, CLIENTS))} sessions"
    )
    print(
        f"  load average (1/5/15 min) at start, after latency, after rates, end: "
        f"{' | '.join(out['loads'])}"
    )
    g50, g99 = p("gated", 0.5), p("gated", 0.99)
    b50, b99 = p("bare", 0.5), p("bare", 0.99)
    f50, f99 = p("fresh", 0.5), p("fresh", 0.99)
    rows = [
        ("floor: tools/call straight to upstream p50", ms(b50), f"p99 {ms(b99)}"),
        ("upstream: new session + tools/call p50", ms(f50), f"p99 {ms(f99)} (what Baton does)"),
        (
            "tools/call through Baton p50",
            ms(g50),
            f"= {g50 / b50:.1f}x bare call; minus a fresh upstream session: {ms(g50 - f50)}",
        ),
        ("tools/call through Baton p99", ms(g99), f"= {g99 / b99:.1f}x bare call p99"),
    ]
    for clients, gated_rate, bare_rate in out["rates"]:
        rows.append(
            (
                f"{clients} session(s): calls/s through Baton",
                f"{gated_rate:.0f}",
                f"straight to upstream {bare_rate:.0f}/s: {gated_rate / bare_rate:.3f}x",
            )
        )
    first, last = out["gated"][:50], out["gated"][-50:]
    rows.append(
        (
            "through Baton p50, calls 1-50",
            ms(pct(first, 0.5)),
            f"calls {CALLS - 49}-{CALLS}: {ms(pct(last, 0.5))} "
            f"({pct(last, 0.5) / pct(first, 0.5):.1f}x)",
        )
    )
    s50, sf50, sg50 = p("stdio_bare", 0.5), p("stdio_fresh", 0.5), p("stdio_gated", 0.5)
    rows += [
        ("stdio floor: tools/call, open session p50", ms(s50), f"p99 {ms(p('stdio_bare', 0.99))}"),
        ("stdio: new process + session + call p50", ms(sf50), "(what Baton does)"),
        (
            "stdio: tools/call through Baton p50",
            ms(sg50),
            f"= {sg50 / s50:.0f}x bare call; p99 {ms(p('stdio_gated', 0.99))}",
        ),
    ]
    report(rows)


if __name__ == "__main__":
    main()
