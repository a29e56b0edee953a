"""Baton's MCP server: `tools/list` and `tools/call` for the agent whose API key opened
the session (agents.mcp.asgi puts its key on the request).

`tools/list` is the agent's upstream tools its live policy can ever admit (catalog).

`tools/call` passes the one gateway, as a remote agent's step does (agents.remote): each
MCP session is one run, started at its first call; its calls are steps 1, 2, … An
allowed step is forwarded to the upstream server and its result reported to the journal;
a denied one answers an error result with the rule's reason and never reaches upstream;
a shadowed one answers the simulated result; a held one waits for people (up to
BATON_MCP_HOLD_WAIT_SECONDS), then answers "pending approval": calling again with the
same tool and arguments in the same session resumes that step instead of opening
another. Paused, halted and rate-limited calls answer error results saying so.

The run is finished when the client ends the session (DELETE, which the SDK's client
sends when it closes); a step still open then keeps the run running for people to
decide; a session that is just dropped leaves its run running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from agents import remote, stepwait
from agents.gateway.core import args_hash
from agents.mcp import catalog, upstream
from agents.mcp.catalog import McpTool, Upstream
from agents.models import Action, Agent, ApiKey, McpServer, Run
from agents.policy import policy_of
from agents.services import Conflict, NotFound, ServiceError

log = logging.getLogger(__name__)

KEY_SCOPE = "baton.key"
UNKNOWN_TOOL = "no tool named {name!r} is offered to this agent (see tools/list)"
DENIED = "denied by Baton: {reason}"
REJECTED = "not run: {reason}"
PENDING = (
    "pending approval: request {request} (step {seq} of run {run}) waits for a person. "
    "Call this tool again with the same arguments to continue."
)
RATE_LIMITED = "rate limited by Baton: {reason}; retry after {seconds} s"
STOPPED = "{agent} is {state}: {reason}"
REFUSED = "Baton refused the call: {reason}"
UPSTREAM_FAILED = "the upstream MCP server {server} failed: {error}"
NO_SESSION = "Baton's MCP gateway needs a session: initialize first"


@dataclass
class Session:
    """One MCP session's run and where its steps are."""

    key_id: int
    run_id: int | None = None
    next_seq: int = 1
    # A held call, by its tool and arguments, to the step it is: calling again resumes it.
    pending: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


SESSIONS: dict[str, Session] = {}


# --- the catalogue, cached ----------------------------------------------------------------

_listings: dict[int, tuple[float, list[dict[str, Any]]]] = {}


async def _listing(server: Upstream, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's tools: fetched at most every BATON_MCP_TOOLS_CACHE_SECONDS, kept in
    the database for other processes; when the server cannot be reached, the listing
    stored last (its tools still pass the gateway, and a forward then fails)."""
    cached = _listings.get(server.id)
    if cached and time.monotonic() - cached[0] < settings.BATON_MCP_TOOLS_CACHE_SECONDS:
        return cached[1]
    try:
        tools = await upstream.list_tools(server)
    except Exception:
        log.warning("MCP server %s (%s): listing failed", server.name, server.id, exc_info=True)
        return stored
    _listings[server.id] = (time.monotonic(), tools)
    if tools != stored:
        await database_sync_to_async(_store_listing)(server.id, tools)
    return tools


def _store_listing(server_id: int, tools: list[dict[str, Any]]) -> None:
    # A cache of what the server said, not a change anyone made: no audit event.
    McpServer.objects.filter(pk=server_id).update(tools=tools, tools_fetched_at=timezone.now())


async def agent_catalogue(agent_id: int) -> dict[str, McpTool]:
    stored = await database_sync_to_async(catalog.stored)(agent_id)
    listings = await asyncio.gather(*(_listing(server, tools) for server, tools in stored))
    return catalog.build(zip((s for s, _ in stored), listings, strict=True))


# --- handlers -----------------------------------------------------------------------------


def _key(ctx: ServerRequestContext[Any, Any]) -> ApiKey:
    key = ctx.request.scope.get(KEY_SCOPE) if ctx.request is not None else None
    if not isinstance(key, ApiKey):
        raise PermissionError("no API key on this request")  # asgi.py always puts one
    return key


def _live_policy(agent_id: int) -> Any:
    agent = Agent.objects.select_related("live_version").get(pk=agent_id)
    return policy_of(agent.live_version) if agent.live_version else None


async def list_tools(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    key = _key(ctx)
    catalogue = await agent_catalogue(key.agent_id)
    policy = await database_sync_to_async(_live_policy)(key.agent_id)
    return types.ListToolsResult(
        tools=[
            types.Tool(
                name=name,
                description=entry.tool.description or None,
                input_schema=entry.tool.schema,
            )
            for name, entry in sorted(catalogue.items())
            if policy is not None and catalog.may_ever_pass(policy, name)
        ]
    )


def _text(text: str, *, error: bool) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


def _call_key(name: str, args: dict[str, Any]) -> str:
    try:
        return f"{name}:{args_hash(args)}"
    except (TypeError, ValueError):
        return f"{name}:{args!r}"


def _decide(
    session: Session, key: ApiKey, name: str, args: dict[str, Any], entry: McpTool
) -> dict[str, Any]:
    """The gateway's decision on this call, as agents.remote answers it: a new step, or
    the held step this same call is already."""
    tools = catalog.lookup({name: entry})
    if session.run_id is None:
        try:
            run = remote.remote_run_start(key=key, input={"via": "mcp"})
        except ServiceError as exc:
            return {"decision": "refused", "reason": str(exc)}
        session.run_id = run.pk
    run = remote.remote_run(key, session.run_id)
    call = _call_key(name, args)
    try:
        if call in session.pending:
            decision = remote.remote_action_poll(run=run, seq=session.pending[call], tools=tools)
        else:
            decision = remote.remote_action_submit(
                run=run, seq=session.next_seq, tool=name, args=args, tools=tools
            )
            if decision["decision"] not in ("retry", "paused", "halted"):
                session.next_seq += 1  # journaled: this seq is the call's now
    except (Conflict, NotFound) as exc:
        # The run ended under the session (cancelled, finished): the next call starts anew.
        session.run_id, session.next_seq = None, 1
        session.pending.clear()
        return {"decision": "refused", "reason": str(exc)}
    if decision["decision"] == "pending":
        session.pending[call] = decision["seq"]
        decision["request"] = (
            Action.objects.filter(run=run, seq=decision["seq"])
            .values_list("approval_request__id", flat=True)
            .first()
        )
        decision["run"] = run.pk
    else:
        session.pending.pop(call, None)
    return decision


def _report(
    key: ApiKey, run_id: int, seq: int, result: types.CallToolResult | None, error: str
) -> None:
    run = remote.remote_run(key, run_id)
    if result is None:
        remote.remote_action_report(run=run, seq=seq, ok=False, error=error)
        return
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if result.is_error:
        text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
        remote.remote_action_report(run=run, seq=seq, ok=False, error=text or "isError")
    else:
        remote.remote_action_report(run=run, seq=seq, ok=True, result=dumped)


async def _forward(
    key: ApiKey, run_id: int, decision: dict[str, Any], entry: McpTool
) -> types.CallToolResult:
    """Run the admitted step upstream and journal its outcome. Shielded: once a step is
    admitted, a client that goes away does not leave it open without a report."""
    with anyio.CancelScope(shield=True):
        try:
            result: types.CallToolResult | None = await upstream.call_tool(
                entry.server,
                entry.upstream_name,
                decision["args"],
                idempotency_key=decision["idempotency_key"],
            )
            error = ""
        except Exception as exc:
            log.warning("MCP forward to %s failed", entry.server.name, exc_info=True)
            result, error = None, UPSTREAM_FAILED.format(server=entry.server.name, error=exc)
        await database_sync_to_async(_report)(key, run_id, decision["seq"], result, error)
    return result if result is not None else _text(error, error=True)


def _answer(key: ApiKey, decision: dict[str, Any]) -> types.CallToolResult:
    """Every decision but allow, as the result the agent reads."""
    match decision["decision"]:
        case "deny":
            return _text(DENIED.format(reason=decision["reason"]), error=True)
        case "shadow":
            return types.CallToolResult(
                content=[types.TextContent(text=json.dumps(decision["result"]))],
                structured_content=decision["result"]
                if isinstance(decision["result"], dict)
                else None,
            )
        case "pending":
            return _text(PENDING.format(**decision), error=True)
        case "done":
            if decision.get("error"):
                return _text(decision["error"], error=True)
            try:
                return types.CallToolResult.model_validate(decision["result"])
            except ValueError:
                return _text(json.dumps(decision["result"]), error=False)
        case "rejected":
            return _text(REJECTED.format(reason=decision["reason"]), error=True)
        case "retry":
            seconds = math.ceil(decision["retry_after"])
            text = RATE_LIMITED.format(reason=decision["reason"], seconds=seconds)
            return _text(text, error=True)
        case "paused" | "halted":
            return _text(
                STOPPED.format(
                    agent=key.agent.name, state=decision["decision"], reason=decision["reason"]
                ),
                error=True,
            )
    return _text(REFUSED.format(reason=decision.get("reason", decision["decision"])), error=True)


async def call_tool(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    key = _key(ctx)
    session_id = ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None
    if not session_id:
        return _text(NO_SESSION, error=True)
    session = SESSIONS.setdefault(session_id, Session(key.pk))
    name, args = params.name, dict(params.arguments or {})
    entry = (await agent_catalogue(key.agent_id)).get(name)
    if entry is None:
        return _text(UNKNOWN_TOOL.format(name=name), error=True)
    decide = database_sync_to_async(_decide)
    async with session.lock:
        decision = await decide(session, key, name, args, entry)
    if decision["decision"] == "pending":
        # Held for people: join the run's doorbell group, read again (a decision that
        # committed before the join is seen here), then wait for a ring or the deadline.
        assert session.run_id is not None
        deadline = time.monotonic() + settings.BATON_MCP_HOLD_WAIT_SECONDS
        async with stepwait.run_bell(session.run_id) as bell:
            async with session.lock:
                decision = await decide(session, key, name, args, entry)
            while decision["decision"] == "pending" and (left := deadline - time.monotonic()) > 0:
                if await bell.wait(left):
                    async with session.lock:
                        decision = await decide(session, key, name, args, entry)
    if decision["decision"] == "allow":
        assert session.run_id is not None
        return await _forward(key, session.run_id, decision, entry)
    return _answer(key, decision)


def session_end(session_id: str, key_id: int) -> None:
    """The client ended the session: finish its run, unless a step is still open (people
    decide it; the run stays running) or the run ended already."""
    session = SESSIONS.get(session_id)
    if session is None or session.key_id != key_id:
        return
    del SESSIONS[session_id]
    if session.run_id is None:
        return
    run = Run.objects.select_related("agent").filter(pk=session.run_id).first()
    if run is None or run.status != Run.Status.RUNNING:
        return
    try:
        remote.remote_run_finish(run=run, output={"steps": session.next_seq - 1, "via": "mcp"})
    except Conflict as exc:
        log.info("MCP session %s ended; run %s left running: %s", session_id, run.pk, exc)


server: Server[Any] = Server(
    "baton",
    instructions=(
        "Tools governed by Baton: every call passes policy, kill switches, rate limits and"
        " approvals, and is journaled."
    ),
    on_list_tools=list_tools,
    on_call_tool=call_tool,
)
