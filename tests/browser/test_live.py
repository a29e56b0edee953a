"""Two supervisors in two browser contexts: what one does reaches the other's page live."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from agents.runtime import execute_run
from agents.services import run_start
from audit.models import AuditEvent
from tests.conftest import log_in, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

HOLD_PAYOUTS = {
    "rules": [{"tool": "test.pay", "effect": "approve"}, {"tool": "test.*", "effect": "allow"}]
}


def live(page: Any) -> None:
    """Wait until the page's socket has said where it starts."""
    expect(page.locator("#live-frame[data-seq]")).to_be_attached(timeout=10000)


def test_a_pause_and_a_held_approval_reach_the_other_supervisor_without_reload(
    browser: Any,
    console_server: Any,
    make_agent: Any,
    world: Any,
) -> None:
    agent = make_agent("claims-bot", "tests.support.agents.payout_with_fallback", HOLD_PAYOUTS)
    first, second = browser.new_context(), browser.new_context()
    try:
        sam, sol = first.new_page(), second.new_page()
        log_in(sam, console_server, "sam")
        log_in(sol, console_server, "sol")
        live(sol)
        expect(sol.get_by_test_id("approvals-badge")).to_have_count(0)

        run = run_start(agent=agent, input={"claim_id": "c1", "amount": 900})
        execute_run(run.pk)  # held for approval
        expect(sol.get_by_test_id("approvals-badge")).to_have_text("1", timeout=5000)
        expect(sol.locator("#event-stream")).to_contain_text("approval.requested")

        team = sam.locator("section.team[data-team=claims] > header")
        team.get_by_text("Stop team…").click()
        team.locator("select[name=mode]").select_option("pause")
        team.locator("input[name=reason]").fill("supplier outage")
        team.get_by_role("button", name="Stop").click()
        expect(sam.get_by_test_id("switch-banner")).to_contain_text("team Claims")

        expect(sol.get_by_test_id("switch-banner")).to_contain_text("supplier outage", timeout=5000)
        expect(sol.locator("#agent-claims-bot").get_by_test_id("agent-state")).to_have_text(
            "paused"
        )
    finally:
        first.close()
        second.close()


def test_after_the_socket_is_cut_and_restored_the_stream_has_no_hole(
    page: Any,
    console_server: Any,
    make_agent: Any,
    world: Any,
) -> None:
    agent = make_agent(
        "claims-bot",
        "tests.support.agents.counter",
        {"rules": [{"tool": "test.*", "effect": "allow"}]},
    )
    log_in(page, console_server, "sam")
    live(page)
    started_at = int(page.evaluate("window.batonLive.last()"))

    run_start(agent=agent, input={"label": "before"})
    console_server.stop()  # every socket is cut
    missed = [run_start(agent=agent, input={"label": f"missed-{i}"}) for i in range(3)]
    console_server.start()  # same port: the page reconnects by itself
    expect(page.locator("#event-stream")).to_contain_text(f"run #{missed[-1].pk}", timeout=20000)
    after = run_start(agent=agent, input={"label": "after"})
    expect(page.locator("#event-stream")).to_contain_text(f"run #{after.pk}", timeout=5000)

    expected = set(
        AuditEvent.objects.filter(agent_id=agent.pk, seq__gt=started_at).values_list(
            "seq", flat=True
        )
    )
    shown = wait_for(
        lambda: (
            {
                int(i.split("-")[1])
                for i in page.eval_on_selector_all(
                    "#event-stream > li", "items => items.map(i => i.id)"
                )
            }
            >= expected
            and True
        ),
        message="every event after the page's start to be shown",
    )
    assert shown
    ids = page.eval_on_selector_all("#event-stream > li", "items => items.map(i => i.id)")
    assert len(ids) == len(set(ids)), "no event is shown twice"


def test_a_removed_role_reloads_the_page_under_the_new_rule(
    browser: Any, make_agent: Any, world: Any, task_queue: str, tmp_path: Any
) -> None:
    from django.contrib.auth.models import Group

    from agents import roles
    from tests.conftest import Server

    make_agent("helpdesk", "tests.support.agents.counter", HOLD_PAYOUTS, team=world.support)
    server = Server(task_queue, tmp_path)
    server.env["BATON_LIVE_RECHECK_SECONDS"] = "0.2"
    server.start()
    context = browser.new_context()
    try:
        cora = context.new_page()
        log_in(cora, server, "cora")
        live(cora)
        expect(cora.locator("#agent-helpdesk")).to_be_attached()
        cora.evaluate("window.beforeTheChange = true")
        world.compliance.groups.remove(Group.objects.get(name=roles.COMPLIANCE))
        # The socket closes with 4403 and the page is rendered again: without the role,
        # no agent of any team.
        cora.wait_for_function("() => window.beforeTheChange === undefined", timeout=10000)
        expect(cora.locator("#agent-helpdesk")).to_have_count(0)
    finally:
        context.close()
        server.stop()
