"""Talking to an agent's upstream MCP servers with the SDK's client: list their tools,
forward an admitted call. One connection per listing or call: a stdio server is started
for it and stopped after (simple and isolated; the listing is cached, see `server`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import mcp_types as types
from django.conf import settings
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from agents.mcp.catalog import Upstream
from agents.models import McpServer
from agents.registry import Risk

# The step's idempotency key travels in the forwarded call's `_meta`: an upstream that
# honours it (as a payment provider does) runs a step once however often it is sent.
IDEMPOTENCY_META: Final = "baton/idempotency-key"

STDIO_NOT_ALLOWED = (
    "{command} is not among the commands this Baton may start (BATON_MCP_STDIO_COMMANDS)"
)


def stdio_allowed(command: str) -> bool:
    return command in settings.BATON_MCP_STDIO_COMMANDS


@asynccontextmanager
async def connect(server: Upstream) -> AsyncIterator[ClientSession]:
    if server.transport == McpServer.Transport.STDIO:
        # Checked again here, not only when it was registered: the operator's list rules.
        if not server.command or not stdio_allowed(server.command[0]):
            raise PermissionError(STDIO_NOT_ALLOWED.format(command=server.command[:1]))
        params = StdioServerParameters(command=server.command[0], args=list(server.command[1:]))
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session
    else:
        async with (
            streamable_http_client(server.url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


def _risk(annotations: types.ToolAnnotations | None) -> str:
    if annotations is not None and annotations.read_only_hint:
        return Risk.LOW
    if annotations is not None and annotations.destructive_hint:
        return Risk.HIGH
    return Risk.MEDIUM


async def list_tools(server: Upstream) -> list[dict[str, Any]]:
    """The server's tools as Baton stores them: name, description, input schema, risk."""
    listed: list[dict[str, Any]] = []
    with anyio.fail_after(settings.BATON_MCP_UPSTREAM_TIMEOUT_SECONDS):
        async with connect(server) as session:
            cursor: str | None = None
            while True:
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_tools(params=params)
                listed += [
                    {
                        "name": t.name,
                        "description": t.description or "",
                        "inputSchema": t.input_schema,
                        "risk": _risk(t.annotations),
                    }
                    for t in page.tools
                ]
                cursor = page.next_cursor
                if not cursor:
                    return listed


async def call_tool(
    server: Upstream, name: str, args: dict[str, Any], *, idempotency_key: str
) -> types.CallToolResult:
    # An open map (PEP 728's extra_items, which mypy does not read yet).
    meta: types.RequestParamsMeta = {IDEMPOTENCY_META: idempotency_key}  # type: ignore[typeddict-unknown-key]
    with anyio.fail_after(settings.BATON_MCP_UPSTREAM_TIMEOUT_SECONDS):
        async with connect(server) as session:
            return await session.call_tool(name, args, meta=meta)
