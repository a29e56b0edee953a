"""Issue 11's acceptance, in real Chromium with a real worker: an admin creates a team and a
person, grants them supervision of the team, writes a rule that holds payouts above
500 EUR, dry-runs it, publishes it to a 50 % canary with a reason and their password,
sees held requests for canary runs only, rolls back; the new supervisor's queue shows the
canary's held requests. Under the Content-Security-Policy, without a violation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from agents.models import Agent, AgentVersion, Run
from agents.services import run_start, version_create, version_publish
from approvals.models import ApprovalRequest
from tests.conftest import PASSWORD, log_in, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

PROGRAM = "agents.demo.programs.claim_payout"
V1_POLICY = {
    "rules": [
        {"tool": "payments.pay", "when": "amount <= 1000", "effect": "allow"},
        {"tool": "payments.pay", "effect": "approve", "reason": "large payouts need a person"},
        {"tool": "claims.flag", "effect": "allow"},
    ]
}
CSP_WATCH = (
    "window.cspViolations = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
)


def claim(number: int, amount: int) -> dict[str, Any]:
    return {
        "claim_id": f"CLM-EU-{number}",
        "policyholder": "Ines Duarte",
        "description": "water damage after a storm",
        "amount": amount,
    }


def settled(run: Run) -> bool:
    """Finished, or waiting for a person on a held payout."""
    run.refresh_from_db()
    return run.is_final or ApprovalRequest.objects.filter(run=run, status="pending").exists()


def no_violations(page: Any) -> None:
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.cspViolations") == [], page.url


def test_an_admin_rolls_a_stricter_payout_rule_out_to_half_the_runs_and_back(
    browser: Any, console_server: Any, worker: Any, world: Any
) -> None:
    url = console_server.url
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(CSP_WATCH)
    log_in(page, console_server, "ada")  # Agent admin of Claims

    # A team.
    page.goto(f"{url}/teams/")
    page.get_by_role("link", name="New team").click()
    page.fill("input[name=name]", "Payouts EU")
    page.fill("input[name=slug]", "payouts-eu")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("h1")).to_have_text(re.compile("Payouts EU"))
    no_violations(page)

    # A person, who supervises the new team from the start.
    page.goto(f"{url}/people/")
    form = page.locator("form[action='/people/new']")
    form.locator("input[name=username]").fill("pia")
    form.locator("input[name=name]").fill("Pia Lund")
    form.locator("select[name=role]").select_option("Supervisor")
    form.locator("select[name=target]").select_option("team:payouts-eu")
    form.get_by_role("button", name="Create").click()
    pia_password = page.get_by_test_id("new-password").inner_text().strip()
    page.get_by_role("link", name=re.compile("What pia may do")).click()
    row = page.locator("tr[data-target='team:payouts-eu']")
    expect(row).to_contain_text("Supervisor")
    expect(row).to_contain_text("supervise")
    no_violations(page)

    # The team's agent, with a first live version and a history of payouts (set up here:
    # what the issue asks of the browser starts at the rule).
    page.goto(f"{url}/agents/new?team=payouts-eu")
    page.fill("input[name=name]", "EU payer")
    page.fill("input[name=slug]", "eu-payer")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("h1")).to_have_text(re.compile("EU payer"))
    agent = Agent.objects.get(slug="eu-payer")
    v1 = version_create(agent=agent, program=PROGRAM, policy=V1_POLICY, config={})
    version_publish(version=v1, user=None, reason="the first version")
    history = [run_start(agent=agent, input=claim(n, a)) for n, a in enumerate([300, 700, 900])]
    for run in history:
        wait_for(lambda run=run: settled(run), timeout=60, message="the history's payouts")
    assert all(r.status == "succeeded" for r in history)
    # Independently of the page: under the new rule, the two payouts above 500 EUR that
    # were paid at once would have been held; the one of 300 EUR is unchanged.
    above_500 = sum(1 for amount in (300, 700, 900) if amount > 500)

    # A draft: a new rule holds payouts above 500 EUR, moved to the top with the keyboard.
    page.goto(f"{url}/agents/eu-payer/")
    page.get_by_test_id("new-draft").click()
    page.wait_for_url(f"{url}/agents/eu-payer/versions/2/edit/")
    page.get_by_test_id("add-rule").click()
    rules = page.get_by_test_id("rule")
    expect(rules).to_have_count(4)
    new = rules.nth(3)
    new.locator("input[name$='-tool']").fill("payments.pay")
    new.locator("input[name$='-arg']").fill("amount")
    new.locator("select[name$='-op']").select_option(">")
    new.locator("input[name$='-value']").fill("500")
    new.get_by_role("button", name="Add to condition (and)").click()
    new = page.get_by_test_id("rule").nth(3)
    expect(new.locator("input[name$='-when']")).to_have_value("amount > 500")
    new.locator("select[name$='-effect']").select_option("approve")
    new.locator("input[name$='-reason']").fill("payouts above 500 EUR need a supervisor")
    new.focus()
    for _ in range(3):
        page.keyboard.press("Alt+ArrowUp")
    first = page.get_by_test_id("rule").nth(0)
    expect(first.locator("input[name$='-when']")).to_have_value("amount > 500")
    page.get_by_test_id("save").click()
    expect(page.get_by_text("v2 saved")).to_be_visible()
    v2 = AgentVersion.objects.get(agent=agent, number=2)
    assert v2.published_at is None
    assert v2.policy["rules"][0]["when"] == "amount > 500"
    assert v2.policy["rules"][0]["effect"] == "approve"

    # Its dry-run over the recorded payouts: the counts are shown.
    page.get_by_test_id("dry-run").click()
    held = page.get_by_test_id("transition-allowed-held")
    expect(held).to_be_visible()
    expect(held.locator("td.num")).to_have_text(str(above_500))
    expect(page.get_by_test_id("dry-run-summary")).to_contain_text(f"{above_500} of")
    no_violations(page)

    # Published with a reason and the password again, then a 50 % canary.
    page.goto(f"{url}/agents/eu-payer/rollout/")
    publish = page.get_by_test_id("publish-form")
    publish.locator("select[name=version]").select_option("2")
    publish.locator("input[name=reason]").fill("hold payouts above 500 EUR")
    publish.locator("input[name=password]").fill(PASSWORD)
    publish.get_by_role("button", name="Publish").click()
    row = page.get_by_test_id("published-2")
    expect(row).to_be_visible()
    canary_form = row.locator("form[action$='/rollout/canary']")
    canary_form.locator("input[name=percent]").fill("50")
    canary_form.locator("input[name=reason]").fill("half the new runs first")
    canary_form.get_by_role("button", name="Canary").click()
    expect(page.get_by_test_id("place-canary_version")).to_contain_text("v2")
    expect(page.get_by_test_id("place-canary_version")).to_contain_text("50 %")
    agent.refresh_from_db()
    assert (agent.live_version_id, agent.canary_version_id, agent.canary_percent) == (
        v1.pk,
        v2.pk,
        50,
    )

    # New payouts of 800 EUR: held on the canary's runs, paid at once on live's.
    runs: list[Run] = []
    while len(runs) < 40 and not (
        sum(r.version_id == v2.pk for r in runs) >= 2
        and sum(r.version_id == v1.pk for r in runs) >= 2
    ):
        runs.append(run_start(agent=agent, input=claim(100 + len(runs), 800)))
    for run in runs:
        wait_for(lambda run=run: settled(run), timeout=60, message="the canary's payouts")
    on_canary = [r for r in runs if r.version_id == v2.pk]
    on_live = [r for r in runs if r.version_id == v1.pk]
    assert len(on_canary) >= 2 and len(on_live) >= 2
    held_runs = set(
        ApprovalRequest.objects.filter(agent=agent, status="pending").values_list(
            "run_id", flat=True
        )
    )
    assert held_runs == {r.pk for r in on_canary}
    assert all(r.status == "succeeded" for r in on_live)

    page.reload()
    comparison = page.get_by_test_id("canary-held")
    expect(comparison.locator("td").nth(0)).to_have_text("0 %")
    expect(comparison.locator("td").nth(1)).not_to_have_text("0 %")
    no_violations(page)

    # Rolled back: every new run on live again; the canary's held requests stay.
    canary_row = page.get_by_test_id("place-canary_version")
    rollback = canary_row.locator("form[action$='/rollout/rollback']")
    rollback.locator("input[name=reason]").fill("too many holds for now")
    rollback.get_by_role("button", name=re.compile("Roll back")).click()
    expect(page.get_by_test_id("place-canary_version")).not_to_contain_text("v2")
    after = [run_start(agent=agent, input=claim(200 + n, 800)) for n in range(4)]
    assert all(r.version_id == v1.pk for r in after)
    context.close()

    # The new supervisor signs in with the password shown once and finds the canary's
    # held payouts in their queue, and nothing else.
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(CSP_WATCH)
    page.goto(f"{url}/login/")
    page.fill("input[name=username]", "pia")
    page.fill("input[name=password]", pia_password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    expect(page.get_by_test_id("approvals-badge")).to_have_text(str(len(on_canary)))
    page.get_by_role("link", name="Approvals").click()
    requests = ApprovalRequest.objects.filter(run_id__in=held_runs)
    rows = page.locator("table.queue tbody tr[id^=request-]")
    expect(rows).to_have_count(len(on_canary))
    for request in requests:
        expect(page.locator(f"#request-{request.pk}")).to_contain_text("v2")
    no_violations(page)
    context.close()
