from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from agents import roles
from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest

PAY_POLICY = {
    "rules": [
        {
            "tool": "test.pay",
            "when": "amount > 50000",
            "effect": "deny",
            "reason": "payouts above 50,000 are never made by an agent",
        },
        {
            "tool": "test.pay",
            "when": "amount >= 10000",
            "effect": "approve",
            "approvals": 2,
            "reason": "two people for big payouts",
        },
        {"tool": "test.pay", "effect": "approve", "reason": "a person checks payouts"},
        {"tool": "test.*", "effect": "allow"},
    ]
}


@pytest.fixture
def payer(make_agent: Any) -> Any:
    return make_agent("payer", "tests.support.agents.payout_with_fallback", PAY_POLICY)


@pytest.fixture
def held(payer: Any) -> Any:
    """Hold a payout for approval; returns a function taking the amount and launcher."""

    def hold(amount: float = 500, user: Any = None, claim: str = "c1") -> ApprovalRequest:
        run = run_start(agent=payer, input={"claim_id": claim, "amount": amount}, user=user)
        execute_run(run.pk)
        return ApprovalRequest.objects.get(run=run)

    return hold


TIERS = {
    "rules": [
        {
            "tool": "test.pay",
            "when": "amount > 100000",
            "effect": "deny",
            "reason": "never above 100,000",
        },
        {
            "tool": "test.pay",
            "when": "amount > 50000",
            "effect": "approve",
            "approvers": "Treasury",
            "timeout": "1h",
            "reason": "treasury signs off above 50,000",
        },
        {
            "tool": "test.pay",
            "when": "amount > 10000",
            "effect": "approve",
            "approvals": 2,
            "timeout": "2h",
            "reason": "two approvers above 10,000",
        },
        {"tool": "test.pay", "when": "amount < 10", "effect": "shadow"},
        {"tool": "test.pay", "when": "amount <= 100", "effect": "allow"},
        {
            "tool": "test.pay",
            "effect": "approve",
            "timeout": "8h",
            "reason": "one approver up to 10,000",
        },
        {"tool": "test.*", "effect": "allow"},
    ]
}


@pytest.fixture
def tiers(make_agent: Any) -> Any:
    return make_agent("tiered-payer", "tests.support.agents.payout_with_fallback", TIERS)


@pytest.fixture
def hold(tiers: Any) -> Any:
    def hold(amount: float, user: Any = None, claim: str = "c1") -> ApprovalRequest:
        run = run_start(agent=tiers, input={"claim_id": claim, "amount": amount}, user=user)
        execute_run(run.pk)
        return ApprovalRequest.objects.get(run=run)

    return hold


@pytest.fixture
def treasurer(world: Any) -> Any:
    """A Claims supervisor in the Treasury approver group."""
    person = type(world.outsider).objects.create_user("tia", email="tia@baton.example")
    person.groups.add(Group.objects.get(name=roles.SUPERVISOR))
    person.groups.add(Group.objects.get_or_create(name="Treasury")[0])
    roles.role_grant(user=person, role=roles.SUPERVISOR, target=world.claims)
    return person
