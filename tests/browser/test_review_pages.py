"""A team's approver analytics and weekly review in real Chromium, under the
Content-Security-Policy: they render, raise no violation, and a team lead goes from the
team page to an item's decision chain."""

from __future__ import annotations

import os
from typing import Any

import pytest
from playwright.sync_api import expect

from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from tests.conftest import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

POLICY = {
    "rules": [{"tool": "test.pay", "effect": "approve"}, {"tool": "test.count", "effect": "allow"}]
}


def test_a_team_lead_walks_from_the_team_page_to_a_rejections_chain(
    page: Any, console_server: Any, make_agent: Any, world: Any
) -> None:
    payer = make_agent("payer", "tests.support.agents.payout_with_fallback", POLICY)
    run = run_start(agent=payer, input={"claim_id": "c-1", "amount": 2500})
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        seen_args_hash=request.args_hash,
        comment="duplicate of claim 77",
    )
    page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    log_in(page, console_server, "sam")
    page.goto(f"{console_server.url}/teams/claims/")
    page.get_by_test_id("team-approvers").click()
    expect(page.get_by_role("heading", name="Approvers of Claims")).to_be_visible()
    expect(page.locator("table.approvers")).to_contain_text("sam")
    assert page.evaluate("window.cspViolations") == []
    shots = os.environ.get("BATON_SCREENSHOTS")
    if shots:
        page.screenshot(path=f"{shots}/approvers.png", full_page=True)
    page.goto(f"{console_server.url}/teams/claims/")
    page.get_by_test_id("team-review").click()
    # The default is last week; the rejection happened this week.
    page.get_by_role("link", name="this week so far").click()
    expect(page.get_by_test_id("review-rejected")).to_contain_text("duplicate of claim N")
    assert page.evaluate("window.cspViolations") == []
    if shots:
        page.screenshot(path=f"{shots}/review.png", full_page=True)
    page.get_by_test_id("review-rejected").get_by_role("link", name=f"run {run.pk}, step").click()
    expect(page.locator("main")).to_contain_text("duplicate of claim 77")
    assert page.evaluate("window.cspViolations") == []
