"""Sandbox tools. Each writes to a sandbox table keyed by the call's idempotency key, the
way a payment provider or an ERP honours one: a retried call returns the first result."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from agents.models import Payment, PurchaseOrder, SentEmail
from agents.registry import Risk, ToolCall, tool

CURRENCIES = ["EUR", "USD", "GBP"]


def _simulate_pay(call: ToolCall) -> dict[str, Any]:
    return {"payment_id": None, "amount": call.args["amount"], "simulated": True}


@tool(
    "payments.pay",
    risk=Risk.HIGH,
    idempotent=True,
    simulate=_simulate_pay,
    description="Pay a claim to the policyholder's account.",
    schema={
        "type": "object",
        "properties": {
            "claim_id": {"type": "string", "minLength": 1, "maxLength": 40},
            "payee": {"type": "string", "minLength": 1, "maxLength": 100},
            "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000},
            "currency": {"enum": CURRENCIES},
        },
        "required": ["claim_id", "payee", "amount", "currency"],
        "additionalProperties": False,
    },
)
def pay(call: ToolCall) -> dict[str, Any]:
    a = call.args
    payment, _ = Payment.objects.get_or_create(
        idempotency_key=call.idempotency_key,
        defaults={
            "claim_id": a["claim_id"],
            "payee": a["payee"],
            "amount": Decimal(str(a["amount"])),
            "currency": a["currency"],
        },
    )
    return {"payment_id": payment.pk, "amount": str(payment.amount), "currency": payment.currency}


@tool(
    "claims.flag",
    risk=Risk.LOW,
    idempotent=True,
    description="Flag a claim for a human adjuster, with a note.",
    schema={
        "type": "object",
        "properties": {
            "claim_id": {"type": "string", "minLength": 1},
            "note": {"type": "string", "minLength": 1, "maxLength": 500},
        },
        "required": ["claim_id", "note"],
        "additionalProperties": False,
    },
)
def flag_claim(call: ToolCall) -> dict[str, Any]:
    return {"flagged": call.args["claim_id"]}


@tool(
    "inventory.stock_level",
    risk=Risk.LOW,
    idempotent=True,
    description="Read on-hand stock and the reorder point of a SKU.",
    schema={
        "type": "object",
        "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3,6}$"}},
        "required": ["sku"],
        "additionalProperties": False,
    },
)
def stock_level(call: ToolCall) -> dict[str, Any]:
    # Stock moves between reads (this is the warehouse, not the agent: its answer is
    # journaled, so a replay sees the same figure); prices are fixed per SKU.
    sku = call.args["sku"]
    price = int(hashlib.sha256(sku.encode()).hexdigest()[:8], 16)
    stock = int(hashlib.sha256(f"{sku}:{call.run_id}".encode()).hexdigest()[:8], 16)
    return {
        "sku": sku,
        "on_hand": stock % 120,
        "reorder_point": 60,
        "unit_price": round(5 + (price % 9000) / 100, 2),
        "supplier": "Nordwerk GmbH",
    }


def _simulate_po(call: ToolCall) -> dict[str, Any]:
    return {"po_id": None, "total": call.args["total"], "simulated": True}


@tool(
    "purchasing.create_po",
    risk=Risk.MEDIUM,
    idempotent=True,
    simulate=_simulate_po,
    description="Place a purchase order with a supplier.",
    schema={
        "type": "object",
        "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3,6}$"},
            "supplier": {"type": "string", "minLength": 1, "maxLength": 100},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 100_000},
            "unit_price": {"type": "number", "exclusiveMinimum": 0},
            "total": {"type": "number", "exclusiveMinimum": 0},
        },
        "required": ["sku", "supplier", "quantity", "unit_price", "total"],
        "additionalProperties": False,
    },
)
def create_po(call: ToolCall) -> dict[str, Any]:
    a = call.args
    total = Decimal(str(a["unit_price"])) * a["quantity"]
    if abs(total - Decimal(str(a["total"]))) > Decimal("0.01"):
        # The policy reads `total`; an order whose total lies about its lines is refused.
        raise ValueError(f"total {a['total']} does not equal quantity × unit price ({total})")
    order, _ = PurchaseOrder.objects.get_or_create(
        idempotency_key=call.idempotency_key,
        defaults={
            "sku": a["sku"],
            "supplier": a["supplier"],
            "quantity": a["quantity"],
            "unit_price": Decimal(str(a["unit_price"])),
            "total": total,
        },
    )
    return {"po_id": order.pk, "total": str(order.total)}


def _simulate_email(call: ToolCall) -> dict[str, Any]:
    return {"message_id": None, "to": call.args["to"], "simulated": True}


@tool(
    "email.send",
    risk=Risk.MEDIUM,
    idempotent=True,
    simulate=_simulate_email,
    description="Send an e-mail to a customer.",
    schema={
        "type": "object",
        "properties": {
            "to": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$"},
            "subject": {"type": "string", "minLength": 1, "maxLength": 200},
            "body": {"type": "string", "minLength": 1, "maxLength": 5000},
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    },
)
def send_email(call: ToolCall) -> dict[str, Any]:
    a = call.args
    mail, _ = SentEmail.objects.get_or_create(
        idempotency_key=call.idempotency_key,
        defaults={"to": a["to"], "subject": a["subject"], "body": a["body"]},
    )
    return {"message_id": mail.pk, "to": mail.to}
