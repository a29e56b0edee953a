"""People see and do only what their role and grants allow (invariant 6)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import Client

from agents.models import Run
from agents.permissions import agent_for_user, agents_for_user, user_can
from agents.services import run_start
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db


@pytest.fixture
def agents(make_agent: Any, world: Any) -> Any:
    claims = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    support = make_agent(
        "support-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
    )
    return claims, support


def slugs(user: Any) -> set[str]:
    return set(agents_for_user(user).values_list("slug", flat=True))


def test_a_supervisor_sees_only_the_agents_of_their_teams(world: Any, agents: Any) -> None:
    assert slugs(world.supervisor) == {"claims-bot"}
    assert slugs(world.support_supervisor) == {"support-bot"}


def test_compliance_sees_every_agent_but_may_not_supervise(world: Any, agents: Any) -> None:
    claims, _ = agents
    assert slugs(world.compliance) == {"claims-bot", "support-bot"}
    assert not user_can(world.compliance, "supervise", claims)
    with pytest.raises(PermissionDenied):
        agent_for_user(world.compliance, "claims-bot", "supervise")


def test_a_person_without_grants_sees_nothing(world: Any, agents: Any) -> None:
    assert slugs(world.outsider) == set()
    with pytest.raises(Http404):
        agent_for_user(world.outsider, "claims-bot")


def test_a_grant_on_one_agent_covers_that_agent_only(world: Any, agents: Any) -> None:
    from agents import roles

    _, support = agents
    roles.role_grant(user=world.outsider, role=roles.SUPERVISOR, target=support)
    assert slugs(world.outsider) == {"support-bot"}
    assert user_can(world.outsider, "supervise", support)


def test_the_grants_subquery_is_compiled_once_a_person_and_reads_the_grants_as_they_are(
    world: Any, agents: Any
) -> None:
    """A person's grants subquery is kept across requests (agents.permissions._GRANTED), and
    still answers with the grants as they are when it runs: a team granted, a team taken
    back, a group joined — each counts at the next request (a fresh person object, as a
    request has)."""
    from django.contrib.auth import get_user_model

    from agents import roles
    from agents.permissions import _granted_agents

    def fresh() -> Any:
        return get_user_model().objects.get(pk=world.supervisor.pk)

    assert slugs(fresh()) == {"claims-bot"}
    assert _granted_agents(fresh(), "view") is _granted_agents(fresh(), "view")
    roles.role_grant(user=world.supervisor, role=roles.SUPERVISOR, target=world.support)
    assert slugs(fresh()) == {"claims-bot", "support-bot"}
    roles.role_revoke(user=world.supervisor, role=roles.SUPERVISOR, target=world.claims)
    assert slugs(fresh()) == {"support-bot"}
    roles.role_revoke(user=world.supervisor, role=roles.SUPERVISOR, target=world.support)
    assert slugs(fresh()) == set()
    # Another person is never answered with this one's subquery.
    assert slugs(world.support_supervisor) == {"support-bot"}
    assert _granted_agents(world.support_supervisor, "view") is not _granted_agents(fresh(), "view")


def test_an_inactive_person_loses_everything(world: Any, agents: Any) -> None:
    world.supervisor.is_active = False
    world.supervisor.save()
    assert slugs(world.supervisor) == set()


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_pages_list_only_what_the_person_may_see(world: Any, agents: Any) -> None:
    claims, support = agents
    run_start(agent=claims, input={"label": "a"})
    other = run_start(agent=support, input={"label": "b"})
    page = logged_in(world.supervisor).get("/").content.decode()
    assert "Claims Bot" in page and "Support Bot" not in page
    assert logged_in(world.supervisor).get(f"/runs/{other.pk}/").status_code == 404
    assert logged_in(world.supervisor).get("/agents/support-bot/").status_code == 404
    assert logged_in(world.support_supervisor).get(f"/runs/{other.pk}/").status_code == 200
    assert logged_in(world.compliance).get(f"/runs/{other.pk}/").status_code == 200


def test_anonymous_visitors_are_sent_to_log_in(world: Any, agents: Any) -> None:
    run = Run.objects.create(agent=agents[0], version=agents[0].live_version, input={})
    for url in ["/", "/agents/claims-bot/", f"/runs/{run.pk}/"]:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_unknown_ids_are_a_clear_404(world: Any) -> None:
    client = logged_in(world.compliance)
    assert client.get("/runs/999999/").status_code == 404
    assert client.get("/agents/no-such-agent/").status_code == 404


def test_pages_only_accept_get(world: Any, agents: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.supervisor)
    assert client.post("/").status_code in (403, 405)


def test_logout_needs_a_csrf_token(world: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.supervisor)
    assert client.post("/logout/").status_code == 403
    assert client.get("/").status_code == 200


def test_who_can_supervise_an_agent(world: Any, agents: Any) -> None:
    from agents.permissions import users_who_can

    claims, support = agents
    assert set(users_who_can("supervise", claims).values_list("username", flat=True)) == {
        "sam",
        "sol",
    }
    assert set(users_who_can("supervise", support).values_list("username", flat=True)) == {"sue"}
    assert set(users_who_can("view", claims).values_list("username", flat=True)) >= {
        "sam",
        "sol",
        "ada",
        "cora",
    }
