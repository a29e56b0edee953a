"""The MCP gateway tests' agent and upstream (not named mcp.py: the upstream script's folder
is on its path, where it would hide the SDK): the SDK's Streamable HTTP client on a
blocking portal, and the sandbox upstream server (tests/support/mcp_upstream.py) that
writes the demo's sandbox tables in the test database."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agents.models import Payment, SentEmail

UPSTREAM = Path(__file__).resolve().parent / "mcp_upstream.py"


def upstream_command() -> list[str]:
    """The stdio command of the sandbox upstream, on this test's database."""
    from tests.conftest import db_url

    return [sys.executable, str(UPSTREAM), db_url()]


def payments() -> list[tuple[str, int]]:
    """Who the upstream paid, how much, in order: the calls that reached it."""
    return [(p.payee, int(p.amount)) for p in Payment.objects.order_by("pk")]


def emails() -> list[tuple[str, str]]:
    return [(m.to, m.body) for m in SentEmail.objects.order_by("pk")]


class McpAgent:
    """The agent: the SDK's client on a blocking portal, so the test stays synchronous
    (the ORM and approval_decide run here, the client on the portal's loop)."""

    def __init__(self, portal: Any, stack: ExitStack, url: str, key: str) -> None:
        self.portal = portal
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        read, write = stack.enter_context(
            portal.wrap_async_context_manager(
                streamable_http_client(f"{url}/mcp/", http_client=http)
            )
        )
        self.session: ClientSession = stack.enter_context(
            portal.wrap_async_context_manager(ClientSession(read, write))
        )
        portal.call(self.session.initialize)

    def tools(self) -> dict[str, types.Tool]:
        return {t.name: t for t in self.portal.call(self.session.list_tools).tools}

    def call(self, name: str, **args: Any) -> types.CallToolResult:
        return self.portal.call(self.session.call_tool, name, args)

    def call_soon(self, name: str, **args: Any) -> Any:
        return self.portal.start_task_soon(self.session.call_tool, name, args)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
