"""The agent's MCP servers page: list, add, remove (admins of the agent)."""

from __future__ import annotations

import json
import shlex

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents.catalog import Invalid
from agents.mcp import services
from agents.models import Agent, McpServer
from agents.permissions import agent_for_user
from agents.services import ServiceError
from console.http import signed_in


def _page(
    request: HttpRequest, agent: Agent, *, status: int = 200, errors: dict[str, str] | None = None
) -> HttpResponse:
    context = {
        "agent": agent,
        "servers": McpServer.objects.filter(agent=agent).select_related("created_by"),
        "transports": McpServer.Transport.choices,
        "errors": errors or {},
        "form": request.POST if request.method == "POST" else {},
    }
    return render(request, "agents/mcp.html", context, status=status)


@require_GET
@login_required
def mcp_servers(request: HttpRequest, slug: str) -> HttpResponse:
    return _page(request, agent_for_user(request.user, slug, "administer"))


def _command(text: str) -> list[str]:
    """A JSON list of arguments, or a command line split as a POSIX shell would."""
    text = text.strip()
    try:
        parsed = json.loads(text) if text.startswith("[") else shlex.split(text)
    except ValueError as exc:
        raise Invalid("command", services.COMMAND_INVALID) from exc
    return parsed if isinstance(parsed, list) else []


@require_POST
@login_required
def mcp_server_add(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    data = request.POST
    try:
        transport = data.get("transport", "")
        server = services.mcp_server_add(
            agent=agent,
            user=signed_in(request),
            name=data.get("name", ""),
            transport=transport,
            command=_command(data.get("command", "")) if transport == "stdio" else [],
            url=data.get("url", "") if transport == "http" else "",
        )
    except ServiceError as exc:
        return _page(request, agent, status=400, errors={getattr(exc, "field", "form"): str(exc)})
    messages.success(request, f"MCP server {server.name} is registered.")
    return redirect("agent-mcp", slug=agent.slug)


@require_POST
@login_required
def mcp_server_remove(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    server = get_object_or_404(McpServer, pk=server_id, agent=agent)
    try:
        services.mcp_server_remove(server=server, user=signed_in(request))
    except ServiceError as exc:
        return _page(request, agent, status=400, errors={"form": str(exc)})
    messages.success(request, f"MCP server {server.name} is removed.")
    return redirect("agent-mcp", slug=agent.slug)
