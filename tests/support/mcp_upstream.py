"""A small upstream MCP server for the MCP gateway tests, on the official SDK, spoken to
over stdio. Its tools act on the demo's sandbox tables in the test database (payments on
agents.models.Payment, e-mails on SentEmail), so a test reads exactly which calls reached
it from the tables the demo tools write.

    python tests/support/mcp_upstream.py DATABASE_URL

The database is named on the command line: Baton starts a stdio server with only a safe
subset of its environment (the SDK's default), and a registered command is all it has.
Plain psycopg, not Django: the gateway starts the server for every call, and a bare
connection starts in a blink.

A write is keyed by the idempotency key Baton sends in the call's `_meta`
(agents.mcp.upstream.IDEMPOTENCY_META), as a payment provider honours one: a call
repeated with the same key pays once and answers the first payment.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import psycopg
from mcp.server.mcpserver import Context, MCPServer

IDEMPOTENCY_META = "baton/idempotency-key"  # agents.mcp.upstream.IDEMPOTENCY_META

DATABASE = sys.argv[1] if len(sys.argv) > 1 else ""
upstream = MCPServer("ledger")


def _key(ctx: Context) -> str:
    meta: Any = ctx.request_context.meta or {}
    # No key (a call that did not come through Baton): every call is its own.
    return str(meta.get(IDEMPOTENCY_META) or f"upstream-{uuid.uuid4()}")


def _run(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with psycopg.connect(DATABASE, autocommit=True) as db:
        cursor = db.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@upstream.tool(name="payments.pay", description="Pay an amount to someone.")
def pay(amount: int, to: str, ctx: Context) -> str:
    key = _key(ctx)
    _run(
        "INSERT INTO agents_payment (idempotency_key, claim_id, payee, amount, currency,"
        " created_at) VALUES (%s, 'mcp', %s, %s, 'EUR', now())"
        " ON CONFLICT (idempotency_key) DO NOTHING",
        (key, to, amount),
    )
    [(payment_id, paid, payee)] = _run(
        "SELECT id, amount, payee FROM agents_payment WHERE idempotency_key = %s", (key,)
    )
    return f"paid {int(paid)} to {payee} (payment {payment_id})"


@upstream.tool(name="lookup", description="Look a customer's payments up.")
def lookup(q: str) -> str:
    [(count,)] = _run("SELECT count(*) FROM agents_payment WHERE payee = %s", (q,))
    return f"found {q}: {count} payment(s)"


@upstream.tool(name="email.send", description="Send an e-mail.")
def send(to: str, body: str, ctx: Context) -> str:
    _run(
        'INSERT INTO agents_sentemail (idempotency_key, "to", subject, body, created_at)'
        " VALUES (%s, %s, '', %s, now()) ON CONFLICT (idempotency_key) DO NOTHING",
        (_key(ctx), to, body),
    )
    return "sent"


@upstream.tool(name="admin.wipe", description="Wipe every payment.")
def wipe(confirm: bool) -> str:
    if confirm:
        _run("DELETE FROM agents_payment", ())
    return "wiped"


if __name__ == "__main__":
    upstream.run()
