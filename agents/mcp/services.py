"""Registering an agent's upstream MCP servers. The views check who may (an admin of the
agent, agents.permissions); these check the input, change one row and audit it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction

from agents.catalog import Invalid
from agents.mcp.upstream import STDIO_NOT_ALLOWED, stdio_allowed
from agents.models import Agent, McpServer
from agents.services import AGENT_ARCHIVED, Conflict, ServiceError, storable
from audit.services import Actor, audit_record
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User

NAME_INVALID = (
    "A server name is 1 to 40 lowercase letters, digits, '-' or '_', starting with a letter"
    " or digit: it prefixes the server's tools where two servers offer one name."
)
NAME_TAKEN = "{agent} already has an MCP server named {name!r}."
TRANSPORT_INVALID = "The transport is stdio (a command) or http (a URL)."
COMMAND_INVALID = "A stdio server is a command line: the program and its arguments."
URL_INVALID = "An HTTP server is an http:// or https:// URL."
NOT_REMOTE = "{agent} runs in Baton's workers; only remote agents reach tools through MCP."
GONE = "That MCP server is not registered for {agent}."
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def _snapshot(server: McpServer) -> dict[str, Any]:
    return {
        "name": server.name,
        "transport": server.transport,
        "command": server.command,
        "url": server.url,
        "enabled": server.enabled,
    }


def _checked(
    agent: Agent, name: str, transport: str, command: list[str], url: str
) -> tuple[list[str], str]:
    if agent.kind != Agent.Kind.REMOTE:
        raise ServiceError(NOT_REMOTE.format(agent=agent.name))
    if agent.archived_at is not None:
        raise Conflict(AGENT_ARCHIVED.format(agent=agent.name))
    if not _NAME.match(name):
        raise Invalid("name", NAME_INVALID)
    if transport == McpServer.Transport.STDIO:
        command = storable(command, "command")
        if not (
            isinstance(command, list)
            and command
            and all(isinstance(a, str) and a and "\x00" not in a for a in command)
        ):
            raise Invalid("command", COMMAND_INVALID)
        if not stdio_allowed(command[0]):
            raise Invalid("command", STDIO_NOT_ALLOWED.format(command=command[0]))
        return command, ""
    if transport == McpServer.Transport.HTTP:
        parts = urlsplit(storable(url, "url").strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 500:
            raise Invalid("url", URL_INVALID)
        return [], parts.geturl()
    raise Invalid("transport", TRANSPORT_INVALID)


def mcp_server_add(
    *,
    agent: Agent,
    user: User | None,
    name: str,
    transport: str,
    command: list[str] | None = None,
    url: str = "",
) -> McpServer:
    """Register an upstream MCP server for the agent: a command Baton starts (stdio, only
    the executables BATON_MCP_STDIO_COMMANDS lists) or a URL (Streamable HTTP)."""
    name = storable(name, "name").strip()
    command, url = _checked(agent, name, transport, command or [], url)
    try:
        with transaction.atomic(durable=True):
            server = McpServer.objects.create(
                agent=agent,
                name=name,
                transport=transport,
                command=command,
                url=url,
                created_by=user,
            )
            audit_record(
                verb=Verb.MCP_SERVER_ADDED,
                actor=Actor.of(user),
                subject_type="mcp_server",
                subject_id=server.pk,
                agent=agent,
                payload={"before": None, "after": _snapshot(server)},
            )
    except IntegrityError:
        raise Invalid("name", NAME_TAKEN.format(agent=agent.name, name=name)) from None
    return server


def mcp_server_remove(*, server: McpServer, user: User | None) -> None:
    """Unregister it: its tools leave the agent's catalogue at the next listing."""
    with transaction.atomic(durable=True):
        removed, _ = McpServer.objects.filter(pk=server.pk, agent_id=server.agent_id).delete()
        if not removed:
            raise Conflict(GONE.format(agent=server.agent.name))
        audit_record(
            verb=Verb.MCP_SERVER_REMOVED,
            actor=Actor.of(user),
            subject_type="mcp_server",
            subject_id=server.pk,
            agent=server.agent,
            payload={"before": _snapshot(server), "after": None},
        )
