"""A supervisor in real Chromium, against the console served by uvicorn and a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from agents.demo.seed import CLAIMS_POLICY
from agents.services import run_start
from tests.conftest import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_a_supervisor_logs_in_and_follows_a_run_through_its_journal(
    page: Any,
    console_server: Any,
    worker: Any,
    make_agent: Any,
    world: Any,
    tmp_path: Any,
) -> None:
    agent = make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    make_agent("support-bot", "tests.support.agents.counter", {}, team=world.support)
    run = run_start(
        agent=agent,
        input={
            "claim_id": "CLM-42",
            "policyholder": "Aisha Khan",
            "description": "burst pipe",
            "amount": 880,
        },
    )
    log_in(page, console_server, "sam")

    expect(page.get_by_role("heading", name="Claims Payer")).to_be_visible()
    expect(page.get_by_text("Support Bot")).to_have_count(0)  # another team's agent
    page.get_by_role("link", name=f"#{run.pk}").first.click()

    # The page polls while the run is live: it reaches "succeeded" without a reload.
    expect(page.get_by_test_id("run-status")).to_have_text("succeeded", timeout=15000)
    expect(page.get_by_text("Assess insurance claim CLM-42")).to_be_attached()
    expect(page.get_by_text("Damage is covered")).to_be_visible()
    expect(page.locator("#step-2")).to_contain_text("payments.pay")
    expect(page.locator("#step-2")).to_contain_text("880.00")
    expect(page.locator("#step-2")).to_contain_text("small payouts are paid automatically")
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)


def test_a_wrong_password_is_refused_with_a_message(
    page: Any, console_server: Any, world: Any
) -> None:
    page.goto(f"{console_server.url}/login/")
    page.fill("input[name=username]", "sam")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.get_by_text("didn't match")).to_be_visible()
