"""On a phone (390 px wide) every main page fits: no sideways scrolling."""

from __future__ import annotations

from typing import Any

import pytest

from agents.runtime import execute_run
from agents.services import run_start
from approvals.models import ApprovalRequest
from tests.conftest import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

PHONE = {"width": 390, "height": 844}
HOLD_PAYOUTS = {
    "rules": [
        {"tool": "test.pay", "effect": "approve", "reason": "a person checks payouts"},
        {"tool": "test.*", "effect": "allow"},
    ]
}


def overflow(page: Any) -> int:
    return int(page.evaluate("document.scrollingElement.scrollWidth"))


def test_the_main_pages_fit_a_phone(browser: Any, console_server: Any, make_agent: Any) -> None:
    payer = make_agent(
        "claims-payer-with-a-long-name", "tests.support.agents.payout_with_fallback", HOLD_PAYOUTS
    )
    run = run_start(
        agent=payer,
        input={"claim_id": "CLM-2026-000000000042-a-very-long-claim-reference", "amount": 4200},
    )
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    pages = {
        "sam": [
            "/",
            f"/agents/{payer.slug}/",
            f"/runs/{run.pk}/",
            "/approvals/",
            f"/approvals/{request.pk}/",
            "/workers/",
        ],
        "cora": ["/audit/", f"/audit/runs/{run.pk}/", "/approvals/"],
        "ada": [
            f"/agents/{payer.slug}/versions/1/dry-run/",
            f"/agents/{payer.slug}/versions/diff/",
        ],
    }
    too_wide = {}
    for username, urls in pages.items():
        context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
        page = context.new_page()
        page.goto(f"{console_server.url}/login/")
        if overflow(page) > PHONE["width"]:
            too_wide["/login/"] = overflow(page)
        log_in(page, console_server, username)
        for url in urls:
            page.goto(f"{console_server.url}{url}")
            page.wait_for_load_state("networkidle")
            if overflow(page) > PHONE["width"]:
                too_wide[f"{username} {url}"] = overflow(page)
        context.close()
    assert too_wide == {}
