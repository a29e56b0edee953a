"""The demo agents' programs: plain functions `run(ctx, input) -> output`.

They are deterministic given their journal: everything that could differ between two
executions (model output, tool results, time) comes through `ctx`."""

from __future__ import annotations

from typing import Any

from agents.errors import ActionRejected, PolicyDenied
from agents.registry import program


@program
def claim_payout(ctx: Any, claim: dict[str, Any]) -> dict[str, Any]:
    """Insurance claim payout: assess the claim, then pay it."""
    assessment = ctx.model(
        f"Assess insurance claim {claim['claim_id']} from {claim['policyholder']}: "
        f"{claim['description']}. The policyholder claimed {claim['amount']} EUR.",
        purpose="assess claim",
    )
    if assessment["decision"] != "pay":
        ctx.tool("claims.flag", claim_id=claim["claim_id"], note=assessment["reason"])
        return {"paid": False, "reason": assessment["reason"]}
    try:
        payment = ctx.tool(
            "payments.pay",
            claim_id=claim["claim_id"],
            payee=claim["policyholder"],
            amount=assessment["amount"],
            currency="EUR",
        )
    except (ActionRejected, PolicyDenied) as refused:
        # A person (or the policy) said no: hand the claim to an adjuster with the reason
        # instead of failing, so nothing is left half-done.
        ctx.tool("claims.flag", claim_id=claim["claim_id"], note=f"not paid: {refused.reason}")
        return {"paid": False, "reason": refused.reason}
    return {"paid": True, "payment_id": payment["payment_id"], "amount": payment["amount"]}


@program
def inventory_reorder(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Inventory reorder: read stock, plan a quantity, place a purchase order."""
    stock = ctx.tool("inventory.stock_level", sku=request["sku"])
    plan = ctx.model(
        f"Plan a reorder for {stock['sku']}: on hand {stock['on_hand']}, "
        f"reorder point {stock['reorder_point']}, unit price {stock['unit_price']} EUR.",
        purpose="plan reorder",
    )
    if plan["quantity"] == 0:
        return {"ordered": False, "on_hand": stock["on_hand"]}
    total = round(plan["quantity"] * stock["unit_price"], 2)
    try:
        order = ctx.tool(
            "purchasing.create_po",
            sku=stock["sku"],
            supplier=stock["supplier"],
            quantity=plan["quantity"],
            unit_price=stock["unit_price"],
            total=total,
        )
    except (ActionRejected, PolicyDenied) as refused:
        return {"ordered": False, "reason": refused.reason}
    return {"ordered": True, "po_id": order["po_id"], "total": order["total"]}


@program
def customer_email(ctx: Any, ticket: dict[str, Any]) -> dict[str, Any]:
    """Customer e-mail: draft a reply to a ticket and send it."""
    draft = ctx.model(
        f"Draft a reply to ticket {ticket['ticket_id']} from {ticket['customer']}, "
        f"about: {ticket['topic']}",
        purpose="draft email",
    )
    sent = ctx.tool("email.send", to=ticket["email"], subject=draft["subject"], body=draft["body"])
    return {"sent": not sent.get("simulated", False), "message_id": sent.get("message_id")}
