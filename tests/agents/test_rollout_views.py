"""The rollout screen (issue 11, scope 5): who sees it, who changes it, publishing with a
reason and the password, four-eyes publish requests, and stale forms refused."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils.html import escape

from agents import roles
from agents.models import Agent, AgentVersion, Team
from agents.rollout import ROLLOUT_CHANGED, rollout_canary, rollout_shadow
from agents.rollout_views import seen_token
from agents.services import REASON_REQUIRED, REAUTH_FAILED, version_create, version_publish
from approvals.models import PublishRequest
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS, PASSWORD

pytestmark = pytest.mark.django_db

PROGRAM = "tests.support.agents.counter"
STRICTER = {"rules": [{"tool": "test.count", "effect": "approve"}]}


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def draft(agent: Agent, world: Any) -> AgentVersion:
    return version_create(agent=agent, program=PROGRAM, policy=STRICTER, user=world.admin)


def published(agent: Agent, world: Any) -> AgentVersion:
    version = draft(agent, world)
    version_publish(version=version, user=None, reason="ready", live=False)
    return version


def rollout_of(agent: Agent) -> tuple[Any, ...]:
    row = Agent.objects.get(pk=agent.pk)
    return (
        row.live_version_id,
        row.shadow_version_id,
        row.canary_version_id,
        row.canary_percent,
        row.previous_version_id,
    )


def post(client: Client, agent: Agent, move: str, **data: Any) -> Any:
    data.setdefault("seen", seen_token(Agent.objects.get(pk=agent.pk)))
    return client.post(f"/agents/{agent.slug}/rollout/{move}", data)


@pytest.fixture
def agent(make_agent: Any) -> Agent:
    return make_agent("counter", PROGRAM, ALLOW_ALL_TESTS)


# --- the page ------------------------------------------------------------------------------


def test_the_page_shows_each_place_and_the_shadows_differences(agent: Agent, world: Any) -> None:
    shadow = published(agent, world)
    rollout_shadow(agent=agent, version=shadow, user=world.admin, reason="watch")
    canary = published(agent, world)
    rollout_canary(agent=agent, version=canary, percent=25, user=world.admin, reason="try")
    draft(agent, world)
    page = client_of(world.admin).get(f"/agents/{agent.slug}/rollout/")
    html = page.content.decode()
    assert page.status_code == 200
    assert f"v{shadow.number}" in html and "25 %" in html
    assert 'data-testid="shadow-summary"' in html and 'data-testid="canary-verdict"' in html
    assert 'data-testid="publish-form"' in html
    assert 'name="password"' in html


def test_a_supervisor_sees_the_rollout_without_forms_and_may_not_change_it(
    agent: Agent, world: Any
) -> None:
    version = published(agent, world)
    before = rollout_of(agent)
    for person in (world.supervisor, world.compliance):
        client = client_of(person)
        html = client.get(f"/agents/{agent.slug}/rollout/").content.decode()
        assert "rollout-form" not in html
        for move, data in (
            ("shadow", {"version": version.number}),
            ("canary", {"version": version.number, "percent": "50"}),
            ("promote", {}),
            ("rollback", {}),
            ("retire", {"version": version.number}),
        ):
            assert post(client, agent, move, reason="r", **data).status_code == 403, move
        response = client.post(
            f"/agents/{agent.slug}/rollout/publish",
            {"version": version.number, "reason": "r", "password": PASSWORD, "live": "1"},
        )
        assert response.status_code == 403
    assert rollout_of(agent) == before


def test_an_admin_of_another_team_cannot_touch_this_one(agent: Agent, world: Any) -> None:
    bea = get_user_model().objects.create_user("bea", password=PASSWORD)
    roles.role_grant(user=bea, role=roles.AGENT_ADMIN, target=world.support)
    version = draft(agent, world)
    client = client_of(bea)
    assert client.get(f"/agents/{agent.slug}/rollout/").status_code == 404
    response = client.post(
        f"/agents/{agent.slug}/rollout/publish",
        {"version": version.number, "reason": "r", "password": PASSWORD, "live": "1"},
    )
    assert response.status_code == 404
    assert post(client, agent, "promote", reason="r").status_code == 404
    version.refresh_from_db()
    assert version.published_at is None


# --- publishing --------------------------------------------------------------------------------


def test_an_admin_publishes_a_draft_live_with_a_reason_and_password(
    agent: Agent, world: Any
) -> None:
    version = draft(agent, world)
    response = client_of(world.admin).post(
        f"/agents/{agent.slug}/rollout/publish",
        {
            "version": version.number,
            "reason": "tighter",
            "password": PASSWORD,
            "live": "1",
            "seen": seen_token(agent),
        },
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.live_version_id == version.pk


@pytest.mark.parametrize(
    ("reason", "password", "message"),
    [("", PASSWORD, REASON_REQUIRED), ("tighter", "guess", REAUTH_FAILED)],
)
def test_publishing_without_reason_or_password_is_a_400_and_changes_nothing(
    agent: Agent, world: Any, reason: str, password: str, message: str
) -> None:
    version = draft(agent, world)
    before, events = rollout_of(agent), AuditEvent.objects.count()
    response = client_of(world.admin).post(
        f"/agents/{agent.slug}/rollout/publish",
        {
            "version": version.number,
            "reason": reason,
            "password": password,
            "live": "1",
            "seen": seen_token(agent),
        },
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    version.refresh_from_db()
    assert version.published_at is None and rollout_of(agent) == before
    assert AuditEvent.objects.count() == events


def test_publishing_just_to_enter_the_rollout_keeps_live(agent: Agent, world: Any) -> None:
    version = draft(agent, world)
    live = agent.live_version_id
    response = client_of(world.admin).post(
        f"/agents/{agent.slug}/rollout/publish",
        {
            "version": version.number,
            "reason": "for the canary",
            "password": PASSWORD,
            "seen": seen_token(agent),
        },
    )
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.published_at is not None and rollout_of(agent)[0] == live


# --- the moves -------------------------------------------------------------------------------


def test_an_admin_moves_a_version_through_the_rollout(agent: Agent, world: Any) -> None:
    first = agent.live_version_id
    version = published(agent, world)
    admin = client_of(world.admin)
    assert post(admin, agent, "shadow", version=version.number, reason="watch").status_code == 302
    assert rollout_of(agent)[1] == version.pk
    response = post(admin, agent, "canary", version=version.number, percent="30", reason="try")
    assert response.status_code == 302
    assert rollout_of(agent)[2:4] == (version.pk, 30)
    assert post(admin, agent, "promote", reason="good").status_code == 302
    assert rollout_of(agent)[0] == version.pk
    assert post(admin, agent, "rollback", reason="bad after all").status_code == 302
    assert rollout_of(agent)[0] == first
    verbs = AuditEvent.objects.filter(agent_id=agent.pk, verb__startswith="rollout.")
    assert list(verbs.order_by("seq").values_list("verb", flat=True)) == [
        Verb.ROLLOUT_SHADOW,
        Verb.ROLLOUT_CANARY,
        Verb.ROLLOUT_PROMOTED,
        Verb.ROLLOUT_ROLLED_BACK,
    ]


def test_a_move_without_a_reason_or_with_a_bad_share_is_a_400(agent: Agent, world: Any) -> None:
    version = published(agent, world)
    admin = client_of(world.admin)
    before = rollout_of(agent)
    response = post(admin, agent, "shadow", version=version.number, reason="")
    assert response.status_code == 400 and REASON_REQUIRED in response.content.decode()
    response = post(admin, agent, "canary", version=version.number, percent="101", reason="r")
    assert response.status_code == 400
    response = post(admin, agent, "canary", version=version.number, percent="-1", reason="r")
    assert response.status_code == 400
    assert post(admin, agent, "promote", reason="r").status_code == 400  # no canary
    assert rollout_of(agent) == before


def test_a_form_drawn_before_another_change_is_a_409(agent: Agent, world: Any) -> None:
    version = published(agent, world)
    other = published(agent, world)
    stale = seen_token(agent)
    rollout_shadow(agent=agent, version=other, user=world.admin, reason="someone else")
    before = rollout_of(agent)
    admin = client_of(world.admin)
    response = post(
        admin, agent, "canary", version=version.number, percent="5", reason="r", seen=stale
    )
    assert response.status_code == 409
    assert escape(ROLLOUT_CHANGED.format(agent=agent.name)) in response.content.decode()
    third = draft(agent, world)
    response = admin.post(
        f"/agents/{agent.slug}/rollout/publish",
        {"version": third.number, "reason": "r", "password": PASSWORD, "live": "1", "seen": stale},
    )
    assert response.status_code == 409
    assert rollout_of(agent) == before
    # A double submit of the same form: the second finds the rollout changed.
    fresh = seen_token(Agent.objects.get(pk=agent.pk))
    assert (
        post(admin, agent, "retire", version=other.number, reason="r", seen=fresh).status_code
        == 302
    )
    assert (
        post(admin, agent, "retire", version=other.number, reason="r", seen=fresh).status_code
        == 409
    )


def test_a_form_without_its_seen_rollout_is_refused(agent: Agent, world: Any) -> None:
    admin = client_of(world.admin)
    assert post(admin, agent, "rollback", reason="r", seen="garbage").status_code == 400


# --- four-eyes ---------------------------------------------------------------------------------


def test_with_four_eyes_the_page_asks_a_second_admin_who_approves(agent: Agent, world: Any) -> None:
    Team.objects.filter(pk=world.claims.pk).update(publish_needs_second_admin=True)
    version = draft(agent, world)
    live = agent.live_version_id
    ada = client_of(world.admin)
    response = ada.post(
        f"/agents/{agent.slug}/rollout/publish",
        {
            "version": version.number,
            "reason": "tighter",
            "password": PASSWORD,
            "live": "1",
            "seen": seen_token(agent),
        },
    )
    assert response.status_code == 302
    publish = PublishRequest.objects.get(version=version)
    assert rollout_of(agent)[0] == live
    html = ada.get(f"/agents/{agent.slug}/rollout/").content.decode()
    assert 'data-testid="publish-request"' in html and "Another admin" in html
    # The author's own approval is refused and changes nothing.
    url = f"/agents/{agent.slug}/rollout/requests/{publish.pk}"
    assert ada.post(f"{url}/approve", {"password": PASSWORD}).status_code == 400
    # A supervisor may not decide it.
    assert (
        client_of(world.supervisor).post(f"{url}/approve", {"password": PASSWORD}).status_code
        == 403
    )

    abe = get_user_model().objects.create_user("abe", password=PASSWORD)
    roles.role_grant(user=abe, role=roles.AGENT_ADMIN, target=world.claims)
    abe_client = client_of(abe)
    assert (
        "Approve and publish" in abe_client.get(f"/agents/{agent.slug}/rollout/").content.decode()
    )
    assert abe_client.post(f"{url}/approve", {"password": "wrong"}).status_code == 400
    assert rollout_of(agent)[0] == live
    assert abe_client.post(f"{url}/approve", {"password": PASSWORD}).status_code == 302
    assert rollout_of(agent)[0] == version.pk
    assert abe_client.post(f"{url}/approve", {"password": PASSWORD}).status_code == 409


def test_a_rejection_on_the_page_needs_a_reason(agent: Agent, world: Any) -> None:
    Team.objects.filter(pk=world.claims.pk).update(publish_needs_second_admin=True)
    version = draft(agent, world)
    client_of(world.admin).post(
        f"/agents/{agent.slug}/rollout/publish",
        {"version": version.number, "reason": "r", "password": PASSWORD, "seen": seen_token(agent)},
    )
    publish = PublishRequest.objects.get(version=version)
    abe = get_user_model().objects.create_user("abe")
    roles.role_grant(user=abe, role=roles.AGENT_ADMIN, target=world.claims)
    url = f"/agents/{agent.slug}/rollout/requests/{publish.pk}/reject"
    assert client_of(abe).post(url, {"reason": ""}).status_code == 400
    assert client_of(abe).post(url, {"reason": "not yet"}).status_code == 302
    publish.refresh_from_db()
    version.refresh_from_db()
    assert publish.status == "rejected" and version.published_at is None
