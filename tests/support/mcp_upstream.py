"""A small upstream MCP server for the MCP gateway tests, on the official SDK, spoken to
over stdio. Every call it receives is appended to the ledger file named on its command
line, so a test sees exactly which calls reached it.

    python tests/support/mcp_upstream.py LEDGER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

LEDGER = Path(sys.argv[1])
upstream = MCPServer("ledger")


def _record(tool: str, **args: object) -> None:
    with LEDGER.open("a") as ledger:
        ledger.write(json.dumps({"tool": tool, **args}) + "\n")


@upstream.tool(name="payments.pay", description="Pay an amount to someone.")
def pay(amount: int, to: str) -> str:
    _record("payments.pay", amount=amount, to=to)
    return f"paid {amount} to {to}"


@upstream.tool(name="lookup", description="Look a customer up.")
def lookup(q: str) -> str:
    _record("lookup", q=q)
    return f"found {q}"


@upstream.tool(name="email.send", description="Send an e-mail.")
def send(to: str, body: str) -> str:
    _record("email.send", to=to, body=body)
    return "sent"


@upstream.tool(name="admin.wipe", description="Wipe everything.")
def wipe(confirm: bool) -> str:
    _record("admin.wipe", confirm=confirm)
    return "wiped"


if __name__ == "__main__":
    upstream.run()
