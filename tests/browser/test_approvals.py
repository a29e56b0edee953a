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


def test_the_queue_refresh_keeps_ticked_boxes_and_the_typed_reason(
    page: Any, console_server: Any, make_agent: Any, world: Any
) -> None:
    from urllib.parse import urlparse

    from agents.runtime import execute_run
    from tests.approvals.conftest import PAY_POLICY

    agent = make_agent("payer", "tests.support.agents.payout_with_fallback", PAY_POLICY)

    def hold(claim: str) -> ApprovalRequest:
        run = run_start(agent=agent, input={"claim_id": claim, "amount": 500})
        execute_run(run.pk)
        return ApprovalRequest.objects.get(run=run)

    ticked, untouched = hold("R-1"), hold("R-2")
    log_in(page, console_server, "sam")
    page.goto(f"{console_server.url}/approvals/")
    box = page.get_by_label(f"select request {ticked.pk}")
    box.check()
    reason = page.locator("#batch-reason")
    reason.click()
    page.keyboard.type("duplicate of claim R-7")
    arrived = hold("R-3")  # something for the refresh to bring

    def refresh(response: Any) -> bool:
        return (
            urlparse(response.url).path == "/approvals/"
            and response.request.headers.get("hx-request") == "true"
        )

    with page.expect_response(refresh, timeout=30_000):
        pass  # the queue's own 10 s refresh
    expect(page.locator(f"#request-{arrived.pk}")).to_be_visible()  # the rows were swapped
    expect(box).to_be_checked()
    expect(page.get_by_label(f"select request {untouched.pk}")).not_to_be_checked()
    expect(reason).to_have_value("duplicate of claim R-7")
    expect(reason).to_be_focused()

    page.get_by_role("button", name="Reject selected").click()
    expect(page.get_by_text("1 request(s): reject recorded.")).to_be_visible()
    statuses = dict(
        ApprovalRequest.objects.filter(pk__in=[ticked.pk, untouched.pk, arrived.pk]).values_list(
            "pk", "status"
        )
    )
    assert statuses == {ticked.pk: "rejected", untouched.pk: "pending", arrived.pk: "pending"}
    assert ticked.decisions.get().comment == "duplicate of claim R-7"
