"""A small remote agent under Baton: a reorder agent whose scripted planner (no real model)
checks stock, orders what runs low and mails the buyer. Its three tools are plain Python
functions; one line each puts them under Baton's gateway (policy, kill switches, approvals,
rate limits, the journal and the audit trail):

    python -m agents.client.example --url http://127.0.0.1:8000 --key bk_…

The agent must be a remote agent whose live policy names its tools, for example

    {"rules": [{"tool": "inventory.stock_level", "effect": "allow"},
               {"tool": "purchasing.create_po", "when": "total <= 5000", "effect": "allow"},
               {"tool": "purchasing.create_po", "effect": "approve"},
               {"tool": "email.*", "effect": "shadow"}]}

An order over 5,000 EUR then waits for a person in the approval queue (the agent waits,
up to --approval-timeout seconds) and is placed with the quantity as approved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from agents.client import Baton, Denied, Rejected, Session, StillPending, governed

# The warehouse this agent sees: on hand, reorder point, unit price (EUR), supplier.
WAREHOUSE: dict[str, tuple[int, int, float, str]] = {
    "ABC-100": (12, 60, 4.5, "Nordwerk GmbH"),
    "XYZ-200": (80, 60, 19.0, "Nordwerk GmbH"),
    "QRS-300": (5, 40, 140.0, "Hafen & Söhne"),
}
BUYER = "buyer@example.com"


@dataclass
class Orders:
    placed: list[dict[str, Any]] = field(default_factory=list)
    not_placed: list[dict[str, Any]] = field(default_factory=list)


def tools(session: Session, orders: Orders) -> tuple[Any, Any, Any]:
    """The agent's tools, each governed by Baton as a step of the session's run."""

    @governed(session, tool="inventory.stock_level")
    def stock_level(sku: str) -> dict[str, Any]:
        on_hand, reorder_point, unit_price, supplier = WAREHOUSE[sku]
        return {
            "sku": sku,
            "on_hand": on_hand,
            "reorder_point": reorder_point,
            "unit_price": unit_price,
            "supplier": supplier,
        }

    @governed(session, tool="purchasing.create_po")
    def create_po(
        sku: str, supplier: str, quantity: int, unit_price: float, total: float
    ) -> dict[str, Any]:
        # Runs only when Baton allows it, with the arguments as allowed (or as edited).
        order = {"po": f"PO-{len(orders.placed) + 1}", "sku": sku, "quantity": quantity}
        orders.placed.append(order)
        return order

    @governed(session, tool="email.send")
    def send_email(to: str, subject: str, body: str) -> dict[str, Any]:
        return {"sent_to": to}

    return stock_level, create_po, send_email


def plan(stock: dict[str, Any]) -> int:
    """The scripted planner: order up to twice the reorder point when below it."""
    if stock["on_hand"] >= stock["reorder_point"]:
        return 0
    return int(2 * stock["reorder_point"] - stock["on_hand"])


def run_agent(baton: Baton, skus: list[str], idempotency_key: str | None = None) -> dict[str, Any]:
    orders = Orders()
    with baton.session(input={"skus": skus}, idempotency_key=idempotency_key) as session:
        stock_level, create_po, send_email = tools(session, orders)
        for sku in skus:
            stock = stock_level(sku=sku)
            quantity = plan(stock)
            session.model_call(
                "scripted-planner",
                purpose=f"plan {sku}",
                tokens_in=40,
                tokens_out=12,
                output={"sku": sku, "quantity": quantity},
            )
            print(f"step: {sku} on hand {stock['on_hand']}, plan {quantity}", flush=True)
            if not quantity:
                continue
            total = round(quantity * stock["unit_price"], 2)
            try:
                order = create_po(
                    sku=sku,
                    supplier=stock["supplier"],
                    quantity=quantity,
                    unit_price=stock["unit_price"],
                    total=total,
                )
                print(f"step: ordered {order}", flush=True)
            except (Denied, Rejected, StillPending) as refused:
                orders.not_placed.append({"sku": sku, "why": str(refused)})
                print(f"step: not ordered: {refused}", flush=True)
        mail = send_email(
            to=BUYER,
            subject=f"Reorder run {session.run_id}",
            body=json.dumps({"placed": orders.placed, "not_placed": orders.not_placed}),
        )
        print(f"step: mailed {mail}", flush=True)
        output = {"placed": orders.placed, "not_placed": orders.not_placed, "mail": mail}
        run = session.finish(output=output)
    return {"run": run.id, "status": run.status, **output}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--url", default=os.environ.get("BATON_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("BATON_API_KEY", ""))
    parser.add_argument("--skus", default=",".join(WAREHOUSE))
    parser.add_argument("--idempotency-key", default=None)
    parser.add_argument("--approval-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key (or BATON_API_KEY) is required: the remote agent's API key")
    with Baton(args.url, args.key, approval_timeout=args.approval_timeout) as baton:
        summary = run_agent(baton, args.skus.split(","), args.idempotency_key)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
