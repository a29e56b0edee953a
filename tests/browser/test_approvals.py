"""Supervisors deciding held payouts in real Chromium, with a real worker resuming runs."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from agents.demo.seed import CLAIMS_POLICY
from agents.models import Payment, Run
from agents.services import run_start
from approvals.models import ApprovalRequest
from tests.conftest import log_in, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def held_payout(make_agent: Any, amount: int, claim: str) -> Run:
    agent = make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    run = run_start(
        agent=agent,
        input={
            "claim_id": claim,
            "policyholder": "Mei Chen",
            "description": "water damage after a storm",
            "amount": amount,
        },
    )
    wait_for(
        lambda: ApprovalRequest.objects.filter(run=run).exists(), message="the payout to be held"
    )
    return run


def finished(run: Run) -> bool:
    run.refresh_from_db()
    return run.is_final


def test_a_supervisor_edits_the_amount_and_approves_and_the_ledger_holds_it_once(
    page: Any,
    console_server: Any,
    worker: Any,
    make_agent: Any,
    world: Any,
) -> None:
    run = held_payout(make_agent, 4200, "CLM-100")
    log_in(page, console_server, "sam")
    expect(page.get_by_test_id("approvals-badge")).to_have_text("1")
    page.get_by_role("link", name="Approvals").click()
    page.get_by_role("link", name="payments.pay").click()
    expect(page.get_by_test_id("arguments")).to_contain_text("4,200.00")
    expect(page.get_by_text("payouts above 1,000 EUR need a supervisor")).to_be_visible()
    expect(page.get_by_text("the documented loss supports a payout")).to_be_visible()

    page.get_by_text("Edit the arguments, then approve").click()
    page.fill("input[name='arg:amount']", "3900")
    page.get_by_role("button", name="Approve edited").click()
    expect(page.get_by_test_id("request-status")).to_have_text("approved")

    wait_for(lambda: finished(run), message="the approved run to finish")
    assert run.status == Run.Status.SUCCEEDED
    payments = Payment.objects.filter(claim_id="CLM-100")
    assert payments.count() == 1 and payments.get().amount == 3900


def test_a_four_eyes_payout_is_released_only_by_the_second_approver(
    browser: Any,
    console_server: Any,
    worker: Any,
    make_agent: Any,
    world: Any,
) -> None:
    run = held_payout(make_agent, 20000, "CLM-200")
    request = ApprovalRequest.objects.get(run=run)
    first, second = browser.new_context(), browser.new_context()
    try:
        sam, sol = first.new_page(), second.new_page()
        log_in(sam, console_server, "sam")
        log_in(sol, console_server, "sol")
        sam.goto(f"{console_server.url}/approvals/{request.pk}/")
        sam.get_by_role("button", name="Approve", exact=True).click()
        expect(sam.get_by_text("1 of 2 approvals")).to_be_visible()
        expect(sam.get_by_text("You have decided; it waits for 1 more approver.")).to_be_visible()
        expect(sam.get_by_role("button", name="Approve", exact=True)).to_have_count(0)
        expect(sam.get_by_test_id("request-status")).to_have_text("pending")
        run.refresh_from_db()
        assert run.status == Run.Status.WAITING and not Payment.objects.exists()

        sol.goto(f"{console_server.url}/approvals/{request.pk}/")
        expect(sol.locator(".decisions")).to_contain_text("sam approved")  # the first approval
        sol.get_by_role("button", name="Approve", exact=True).click()
        expect(sol.get_by_test_id("request-status")).to_have_text("approved")
        wait_for(lambda: finished(run), message="the released run to finish")
        assert Payment.objects.get(claim_id="CLM-200").amount == 20000
    finally:
        first.close()
        second.close()


def test_the_queue_works_from_the_keyboard(
    page: Any, console_server: Any, worker: Any, make_agent: Any, world: Any
) -> None:
    run = held_payout(make_agent, 2500, "CLM-300")
    log_in(page, console_server, "sam")
    page.goto(f"{console_server.url}/approvals/")
    row = page.locator("tbody tr[tabindex]").first
    expect(row).to_be_focused()
    page.keyboard.press("a")
    expect(page.get_by_text("approve recorded")).to_be_visible()
    wait_for(lambda: finished(run), message="the run to finish")
    assert Payment.objects.get(claim_id="CLM-300").amount == 2500
