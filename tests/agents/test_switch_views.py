"""Kill switches from the console: who may engage and release, and what everyone sees."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agents.models import KillSwitch
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS, PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(make_agent: Any) -> Any:
    return make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)


def client_for(user: Any, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def engage(client: Client, **data: str) -> Any:
    return client.post(
        "/switches/engage", {"mode": "pause", "reason": "checking", **data}, follow=True
    )


def test_a_supervisor_pauses_an_agent_and_those_who_see_it_get_the_banner(
    agent: Any, world: Any
) -> None:
    page = engage(client_for(world.supervisor), scope="agent", agent="claims-bot")
    assert "Kill switch engaged: pause." in page.content.decode()
    switch = KillSwitch.objects.get()
    assert (switch.target, switch.engaged_by) == (f"agent:{agent.pk}", world.supervisor)
    for person in (world.compliance, world.admin):
        body = client_for(person).get("/approvals/").content.decode()
        assert "Paused:" in body and "agent Claims Bot" in body and "checking" in body
    # Another team's supervisor is not told of it, its reason or who engaged it.
    body = client_for(world.support_supervisor).get("/approvals/").content.decode()
    assert "Claims Bot" not in body and "checking" not in body
    assert 'data-testid="switch-banner"' not in body
    assert "Release" not in client_for(world.compliance).get("/").content.decode()
    overview = client_for(world.supervisor).get("/").content.decode()
    assert 'data-testid="agent-state">paused' in overview
    assert AuditEvent.objects.filter(verb="killswitch.engaged").count() == 1


def test_a_team_halt_needs_a_grant_on_the_team(agent: Any, world: Any) -> None:
    assert (
        engage(
            client_for(world.support_supervisor), scope="team", team="claims", mode="halt"
        ).status_code
        == 404
    )
    assert engage(client_for(world.compliance), scope="team", team="claims").status_code == 403
    assert not KillSwitch.objects.exists()
    engage(client_for(world.supervisor), scope="team", team="claims", mode="halt")
    assert KillSwitch.objects.get().target == f"team:{world.claims.pk}"


def test_compliance_may_not_stop_an_agent_and_others_do_not_see_it(agent: Any, world: Any) -> None:
    assert (
        engage(client_for(world.compliance), scope="agent", agent="claims-bot").status_code == 403
    )
    assert (
        engage(client_for(world.support_supervisor), scope="agent", agent="claims-bot").status_code
        == 404
    )
    assert engage(client_for(world.supervisor), scope="agent", agent="nobody").status_code == 404
    assert not KillSwitch.objects.exists()


def test_a_reason_is_required(agent: Any, world: Any) -> None:
    page = engage(client_for(world.supervisor), scope="agent", agent="claims-bot", reason=" ")
    assert "Say why: everyone will see it." in page.content.decode()
    assert not KillSwitch.objects.exists()


def test_the_global_switch_asks_for_the_password_again(agent: Any, world: Any) -> None:
    client = client_for(world.supervisor)
    page = engage(client, scope="global", mode="halt")
    assert "Confirm your password" in page.content.decode()
    page = engage(client, scope="global", mode="halt", password="guess")
    assert "That is not your password." in page.content.decode()
    assert not KillSwitch.objects.exists()
    engage(client, scope="global", mode="halt", password=PASSWORD)
    assert KillSwitch.objects.get().scope == "global"


def test_only_people_allowed_may_touch_the_global_switch(world: Any) -> None:
    for person in (world.compliance, world.outsider, world.admin):
        response = engage(client_for(person), scope="global", password=PASSWORD)
        assert response.status_code == 403
    assert not KillSwitch.objects.exists()


def test_releasing_needs_a_reason_and_resumes(agent: Any, world: Any) -> None:
    client = client_for(world.supervisor)
    engage(client, scope="agent", agent="claims-bot")
    switch = KillSwitch.objects.get()
    page = client.post(f"/switches/{switch.pk}/release", {"reason": ""}, follow=True)
    assert "Say why" in page.content.decode()
    page = client.post(f"/switches/{switch.pk}/release", {"reason": "all clear"}, follow=True)
    assert "Kill switch released" in page.content.decode()
    switch.refresh_from_db()
    assert switch.released_by == world.supervisor and switch.release_reason == "all clear"
    again = client.post(f"/switches/{switch.pk}/release", {"reason": "twice"}, follow=True)
    assert "already released" in again.content.decode()


def test_engaging_twice_says_so(agent: Any, world: Any) -> None:
    client = client_for(world.supervisor)
    engage(client, scope="agent", agent="claims-bot")
    page = engage(client, scope="agent", agent="claims-bot", mode="halt")
    assert "already engaged" in page.content.decode()
    assert KillSwitch.objects.count() == 1


def test_switches_need_csrf_and_post(agent: Any, world: Any) -> None:
    client = client_for(world.supervisor, csrf=True)
    assert (
        client.post(
            "/switches/engage",
            {"scope": "agent", "agent": "claims-bot", "mode": "pause", "reason": "x"},
        ).status_code
        == 403
    )
    assert client_for(world.supervisor).get("/switches/engage").status_code == 405
    assert not KillSwitch.objects.exists()


def test_a_foreign_next_url_is_not_followed(agent: Any, world: Any) -> None:
    response = client_for(world.supervisor).post(
        "/switches/engage",
        {
            "scope": "agent",
            "agent": "claims-bot",
            "mode": "pause",
            "reason": "x",
            "next": "https://evil.example/",
        },
    )
    assert response["Location"] == "/"
