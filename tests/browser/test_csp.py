"""Under the Content-Security-Policy, in real Chromium: the console's pages raise no
violation, and htmx still loads, filters and refreshes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from agents.runtime import execute_run
from agents.services import run_start
from tests.conftest import ALLOW_ALL_TESTS, log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_the_console_runs_under_its_policy_without_a_violation(
    page: Any, console_server: Any, make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "csp", "steps": 1})
    execute_run(run.pk)
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    # The browser reports each violation as an event too; keep them on the window.
    page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )

    log_in(page, console_server, "cora")
    response = page.goto(f"{console_server.url}/audit/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # htmx works: the filter form swaps the rows in place, with no page load.
    page.evaluate("window.samePage = true")
    page.fill("input[name=agent]", "counter")
    page.press("input[name=agent]", "Enter")
    expect(page).to_have_url(re.compile(r"agent=counter"), timeout=10000)
    expect(page.locator("#rows")).to_contain_text("run.succeeded")
    assert page.evaluate("window.samePage") is True

    urls = ["/", f"/agents/{agent.slug}/", f"/runs/{run.pk}/", "/approvals/", "/workers/"]
    for url in [*urls, f"/agents/{agent.slug}/versions/diff/"]:
        page.goto(f"{console_server.url}{url}")
        expect(page.locator("main")).to_be_visible()
        page.wait_for_load_state("networkidle")
        assert page.evaluate("typeof htmx") == "object"
        assert page.evaluate("window.cspViolations") == [], url
    # htmx was asked not to add its indicator <style>.
    assert page.evaluate("document.querySelectorAll('style').length") == 0
    assert violations == []


def test_the_people_pages_run_under_the_policy_and_search_in_place(
    page: Any, console_server: Any, world: Any
) -> None:
    page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    log_in(page, console_server, "ada")
    page.goto(f"{console_server.url}/people/")
    page.evaluate("window.samePage = true")
    page.fill("input[name=q]", "so")
    page.press("input[name=q]", "Enter")
    expect(page).to_have_url(re.compile(r"q=so"), timeout=10000)
    expect(page.locator("#people")).to_contain_text("sol")
    expect(page.locator("#people")).not_to_contain_text("sam")
    assert page.evaluate("window.samePage") is True
    assert page.evaluate("window.cspViolations") == []
    page.click("text=sol")
    expect(page.locator("#access")).to_contain_text("grant on team")
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.cspViolations") == []


def test_the_api_documentation_renders_under_the_policy(page: Any, console_server: Any) -> None:
    page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    response = page.goto(f"{console_server.url}/api/v1/docs")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # Swagger UI drew the operations from the served OpenAPI document.
    expect(page.get_by_text("/api/v1/runs/{run_id}/steps").first).to_be_visible(timeout=15000)
    assert page.evaluate("window.cspViolations") == []
