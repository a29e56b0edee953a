"""A supervisor on the overview sees an alert fire without reloading, follows it to the
agent's KPIs, and sees the circuit breaker's pause banner with the rule and the value."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from agents import alerts
from agents.runtime import execute_run
from agents.services import run_start
from tests.conftest import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

DENY_COUNT = {"rules": [{"tool": "test.count", "effect": "deny"}]}


def test_an_alert_fires_on_the_overview_and_its_breaker_banner_shows_the_value(
    page: Any, console_server: Any, make_agent: Any, world: Any
) -> None:
    agent = make_agent("denier", "tests.support.agents.counter", DENY_COUNT)
    alerts.alert_rule_create(
        user=world.admin,
        agent=agent,
        name="too many denials",
        metric="denials",
        threshold=3,
        clear_threshold=1,
        window_minutes=5,
        engage_breaker=True,
        notify_supervisors=False,
    )
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    log_in(page, console_server, "sam")
    expect(page.locator("#live-frame[data-seq]")).to_be_attached(timeout=10000)
    expect(page.get_by_test_id("firing-alert")).to_have_count(0)

    # Four denials in five minutes, then the evaluation the beat would run.
    for i in range(4):
        execute_run(run_start(agent=agent, input={"label": f"d{i}", "steps": 1}).pk)
    assert alerts.alerts_evaluate() == 1

    firing = page.get_by_test_id("firing-alert")
    expect(firing).to_contain_text("too many denials", timeout=10000)
    expect(firing).to_contain_text("4")
    banner = page.get_by_test_id("switch-banner")
    expect(banner).to_contain_text("circuit breaker: rule 'too many denials'", timeout=10000)
    expect(page.locator("#event-stream")).to_contain_text("alert.fired")

    firing.get_by_role("link", name="Denier KPIs").click()
    page.wait_for_url(f"{console_server.url}/agents/denier/kpis/")
    expect(page.get_by_test_id("kpi-alerts")).to_contain_text("firing")
    expect(page.get_by_test_id("switch-banner")).to_contain_text(
        "tool steps denied by policy = 4 (threshold 3)"
    )
    expect(page.get_by_test_id("switch-banner")).to_contain_text("system")

    # The rule's page, from the KPI page: its history says the breaker paused the agent.
    page.get_by_test_id("kpi-alerts").get_by_role("link", name="too many denials").click()
    expect(page.get_by_test_id("alert-history")).to_contain_text("paused by the circuit breaker")
    assert violations == []
