"""An agent's MCP tool catalogue: its enabled upstream servers' tools under the names the
agent and its policy see, each a registry Tool with the upstream's input schema.

Names: a tool keeps its upstream name when only one of the agent's enabled servers offers
it; a name two servers offer is exposed as `<server>.<tool>` for each of them (and a
policy names it so). Adding a server can thus rename a tool; a rule written for the old
name no longer matches and the tool is denied by default — it fails closed. A name that
still clashes after the prefix is left out.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import SchemaError

from agents.models import McpServer
from agents.policy import Policy
from agents.registry import Risk, Tool, ToolCall, UnknownTool, get_tool

log = logging.getLogger(__name__)

EXECUTED_UPSTREAM = "{tool} runs on its upstream MCP server, through Baton's MCP gateway"


@dataclass(frozen=True)
class Upstream:
    """What the gateway needs of a registered server, loaded once (no ORM across awaits)."""

    id: int
    name: str
    transport: str
    command: tuple[str, ...]
    url: str

    @classmethod
    def of(cls, server: McpServer) -> Upstream:
        return cls(server.pk, server.name, server.transport, tuple(server.command), server.url)


@dataclass(frozen=True)
class McpTool:
    """A tool as the agent sees it (`tool.name`), and where it really is."""

    tool: Tool
    server: Upstream
    upstream_name: str


def may_ever_pass(policy: Policy, name: str) -> bool:
    """Whether some call of `name` could be allowed, held for approval or shadowed by
    `policy` (first match wins, default deny): the rules whose glob matches, in order,
    until one that denies without a condition. A conditional rule may match, so one that
    does not deny makes the tool reachable; a conditional deny only blocks some calls.
    Whether a condition can ever hold is not decided: such a rule counts as reachable."""
    for rule in policy.rules:
        if not fnmatch.fnmatchcase(name, rule.tool):
            continue
        if rule.effect != "deny":
            return True
        if rule.condition is None:
            return False
    return False


def _executed_upstream(call: ToolCall) -> Any:
    # The gateway admits the step; the MCP gateway forwards it. Nothing calls this.
    raise RuntimeError(EXECUTED_UPSTREAM.format(tool="this tool"))


def _tool(name: str, listed: dict[str, Any]) -> Tool | None:
    schema = listed.get("inputSchema")
    if not isinstance(schema, dict):
        return None
    try:
        return Tool(
            name=name,
            schema=schema,
            fn=_executed_upstream,
            risk=str(listed.get("risk") or Risk.MEDIUM),
            description=str(listed.get("description") or ""),
        )
    except SchemaError:
        log.warning("MCP tool %s: its input schema is not valid JSON Schema; left out", name)
        return None


def build(listings: Iterable[tuple[Upstream, list[dict[str, Any]]]]) -> dict[str, McpTool]:
    """The catalogue from each server's listing, named as the module docstring says."""
    listings = list(listings)
    # How many servers offer each name (a server listing a name twice counts once).
    offered = Counter(n for _, tools in listings for n in {t["name"] for t in tools})
    named: list[tuple[str, Upstream, dict[str, Any]]] = [
        (t["name"] if offered[t["name"]] == 1 else f"{server.name}.{t['name']}", server, t)
        for server, tools in listings
        for t in tools
    ]
    taken = Counter(name for name, _, _ in named)
    catalogue: dict[str, McpTool] = {}
    for name, server, listed in named:
        if taken[name] > 1:
            log.warning("MCP tool name %s is offered twice even with its prefix; left out", name)
            continue
        tool = _tool(name, listed)
        if tool is not None:
            catalogue[name] = McpTool(tool, server, listed["name"])
    return catalogue


def stored(agent_id: int) -> list[tuple[Upstream, list[dict[str, Any]]]]:
    """The agent's enabled servers with the listings last fetched from them."""
    return [
        (Upstream.of(s), list(s.tools))
        for s in McpServer.objects.filter(agent_id=agent_id, enabled=True).order_by("name")
    ]


def stored_tool(name: str) -> Tool | None:
    """A registry source (agents.registry.tool_source): an MCP tool by the name its agent
    sees, from the listings stored in the database, so every process finds it (the
    approval page shows its schema and checks an edit against it). The lookup is by name
    alone, like the registry's: where two agents' servers expose one name, the first
    agent's (by id) is found."""
    # The exposed name is the upstream one, or `<server>.<upstream>`.
    candidates = {name, name.partition(".")[2]}
    servers = McpServer.objects.filter(enabled=True).order_by("agent_id", "name")
    agent_ids = [
        agent_id
        for agent_id, tools in servers.values_list("agent_id", "tools")
        if any(t.get("name") in candidates for t in tools)
    ]
    for agent_id in dict.fromkeys(agent_ids):
        found = build(stored(agent_id)).get(name)
        if found is not None:
            return found.tool
    return None


def agent_tool(agent_id: int, name: str) -> Tool:
    """The tool a call of this agent names, as the approval page shows it and checks an
    edit against: the agent's own MCP tool of that name first (the one its MCP gateway
    call was checked against), else the registry's. The registry alone is not enough: an
    upstream tool may share its name with a hosted one (the demo's payments.pay), and an
    edit would then be held to the other tool's schema."""
    found = build(stored(agent_id)).get(name)
    return found.tool if found is not None else get_tool(name)


def lookup(catalogue: dict[str, McpTool]) -> Any:
    """The gateway's tool lookup for one agent's calls (agents.gateway.core.Gate.tools)."""

    def tools(name: str) -> Tool:
        found = catalogue.get(name)
        if found is None:
            raise UnknownTool(f"no MCP tool named {name!r} is offered to this agent")
        return found.tool

    return tools
