from __future__ import annotations

from typing import Any

import pytest

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
