"""The policy editor in real Chromium: a rule moved with the keyboard and saved, under the
Content-Security-Policy without a violation."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from agents.models import AgentVersion
from tests.conftest import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

POLICY = {
    "rules": [
        {"tool": "test.pay", "when": "amount <= 500", "effect": "allow"},
        {"tool": "test.count", "effect": "allow"},
        {"tool": "test.*", "effect": "deny"},
    ]
}
CSP_WATCH = (
    "window.cspViolations = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
)


def test_an_admin_moves_a_rule_down_with_the_keyboard_and_saves(
    page: Any, console_server: Any, make_agent: Any, world: Any
) -> None:
    agent = make_agent("payer", "tests.support.agents.rogue", POLICY)
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.add_init_script(CSP_WATCH)
    log_in(page, console_server, "ada")

    # From the agent page: a new draft, a copy of the live version, opens in the editor.
    page.goto(f"{console_server.url}/agents/{agent.slug}/")
    page.get_by_test_id("new-draft").click()
    page.wait_for_url(f"{console_server.url}/agents/{agent.slug}/versions/2/edit/")
    rules = page.get_by_test_id("rule")
    expect(rules).to_have_count(3)

    # The first rule, focused, goes down one place with Alt+ArrowDown; focus stays on it.
    first = rules.nth(0)
    first.focus()
    page.keyboard.press("Alt+ArrowDown")
    expect(rules.nth(0).locator("input[name$='-tool']")).to_have_value("test.count")
    expect(rules.nth(1).locator("input[name$='-tool']")).to_have_value("test.pay")
    expect(rules.nth(1)).to_be_focused()
    expect(rules.nth(1).locator("[data-position]")).to_have_text("2")
    # The buttons follow: the rule now on top cannot move up.
    expect(rules.nth(0).locator("[data-move=up]")).to_be_disabled()
    expect(rules.nth(1).locator("[data-move=up]")).to_be_enabled()

    page.get_by_test_id("save").click()
    expect(page.get_by_text("v2 saved")).to_be_visible()
    draft = AgentVersion.objects.get(agent=agent, number=2)
    assert [r["tool"] for r in draft.policy["rules"]] == ["test.count", "test.pay", "test.*"]
    assert draft.published_at is None
    assert AgentVersion.objects.get(agent=agent, number=1).policy == POLICY

    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.cspViolations") == []
    assert page.evaluate("document.querySelectorAll('[style]').length") == 0
    assert violations == []
