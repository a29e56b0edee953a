"""Teams and agents as admins manage them (agents.catalog and its pages), the admin agent
page, and API keys for remote agents: created with the secret shown once, rotated with an
overlap, revoked; a revoked, expired or archived agent's key gets 401; no plaintext key is
stored anywhere."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import Client
from django.utils import timezone

from agents import catalog, remote, roles
from agents.models import Agent, ApiKey, Run, Team
from agents.permissions import team_can
from agents.services import (
    AGENT_ARCHIVED,
    Conflict,
    run_start,
    version_create,
    version_publish,
)
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db

COUNTER = "tests.support.agents.counter"
POLICY = {"rules": [{"tool": "test.*", "effect": "allow"}]}


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def events(verb: Verb) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=verb).order_by("seq"))


def support_admin(world: Any) -> Any:
    bea = get_user_model().objects.create_user("bea")
    roles.role_grant(user=bea, role=roles.AGENT_ADMIN, target=world.support)
    return bea


@pytest.fixture
def remote_agent(world: Any) -> Agent:
    agent = catalog.agent_create(
        user=world.admin, team=world.claims, slug="ledger-bot", name="Ledger bot", kind="remote"
    )
    version = version_create(agent=agent, program="", policy=POLICY, user=world.admin)
    version_publish(version=version, user=None, reason="the first version")
    agent.refresh_from_db()
    return agent


def api_status(key: str) -> int:
    response = Client().post(
        "/api/v1/runs",
        data=json.dumps({"input": {"n": 1}}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    return int(response.status_code)


# --- teams --------------------------------------------------------------------------------


def test_an_agent_admin_creates_a_team_and_administers_it(world: Any) -> None:
    response = client_of(world.admin).post("/teams/new", {"slug": "payments", "name": "Payments"})
    assert response.status_code == 302 and response["Location"] == "/teams/payments/"
    team = Team.objects.get(slug="payments")
    assert team_can(world.admin, "administer", team)
    (created,) = events(Verb.TEAM_CREATED)
    assert created.payload["before"] is None
    assert created.payload["after"] == {
        "slug": "payments",
        "name": "Payments",
        "archived_at": None,
        "publish_needs_second_admin": False,
    }
    assert events(Verb.GRANT_ADDED)[-1].payload["team"] == "payments"
    page = client_of(world.admin).get("/teams/").content.decode()
    assert 'data-team="payments"' in page and "New team" in page


@pytest.mark.parametrize("who", ["supervisor", "compliance", "outsider"])
def test_only_admins_create_teams(world: Any, who: str) -> None:
    client = client_of(getattr(world, who))
    assert client.post("/teams/new", {"slug": "x", "name": "X"}).status_code == 403
    assert client.get("/teams/new").status_code == 403
    assert not Team.objects.filter(slug="x").exists()
    assert "New team" not in client.get("/teams/").content.decode()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"slug": "Bad Slug", "name": "X"}, "slug", catalog.SLUG_INVALID),
        ({"slug": "claims", "name": "X"}, "slug", catalog.SLUG_TAKEN.format(slug="claims")),
        ({"slug": "fresh", "name": "  "}, "name", catalog.NAME_REQUIRED),
    ],
)
def test_bad_team_input_is_a_message_at_its_field(
    world: Any, data: dict[str, str], field: str, message: str
) -> None:
    before = (Team.objects.count(), AuditEvent.objects.count())
    response = client_of(world.admin).post("/teams/new", data)
    assert response.status_code == 400
    page = response.content.decode()
    assert f'data-error="{field}"' in page
    assert message.replace("'", "&#x27;") in page
    assert (Team.objects.count(), AuditEvent.objects.count()) == before


def test_a_team_is_renamed_and_archived_once_empty(world: Any, make_agent: Any) -> None:
    client = client_of(world.admin)
    assert (
        client.post("/teams/claims/edit", {"slug": "claims", "name": "Claims EU"}).status_code
        == 302
    )
    (updated,) = events(Verb.TEAM_UPDATED)
    assert (updated.payload["before"]["name"], updated.payload["after"]["name"]) == (
        "Claims",
        "Claims EU",
    )
    bot = make_agent("claims-bot", COUNTER, ALLOW_ALL_TESTS)
    response = client.post("/teams/claims/archive", {"reason": "merged"})
    assert response.status_code == 400
    assert catalog.TEAM_HAS_AGENTS.format(team="Claims EU") in response.content.decode()
    # A team with agents keeps its slug: its agents' events name it.
    response = client.post("/teams/claims/edit", {"slug": "claims-eu", "name": "Claims EU"})
    assert response.status_code == 400 and 'data-error="slug"' in response.content.decode()
    catalog.agent_archive(agent=bot, user=world.admin, reason="retired")
    assert client.post("/teams/claims/archive", {"reason": "merged"}).status_code == 302
    assert Team.objects.get(slug="claims").archived_at is not None
    (archived,) = events(Verb.TEAM_ARCHIVED)
    assert (
        archived.payload["reason"] == "merged" and archived.payload["before"]["archived_at"] is None
    )
    # An archived team takes no new agents.
    with pytest.raises(catalog.Invalid) as refused:
        catalog.agent_create(user=world.admin, team=world.claims, slug="late", name="Late")
    assert refused.value.field == "team"


# --- agents -------------------------------------------------------------------------------


def test_an_admin_creates_and_edits_an_agent_with_its_history(world: Any) -> None:
    client = client_of(world.admin)
    response = client.post(
        "/agents/new",
        {
            "team": "claims",
            "slug": "triage",
            "name": "Triage",
            "kind": "hosted",
            "description": "sorts claims",
            "owner": "sam",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/agents/triage/admin/"
    agent = Agent.objects.get(slug="triage")
    assert (agent.team, agent.owner, agent.kind) == (world.claims, world.supervisor, "hosted")
    response = client.post(
        "/agents/triage/edit",
        {
            "team": "claims",
            "slug": "triage-eu",
            "name": "Triage EU",
            "kind": "remote",
            "description": "sorts EU claims",
            "owner": "ada",
        },
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert (agent.slug, agent.name, agent.kind, agent.owner) == (
        "triage-eu",
        "Triage EU",
        "remote",
        world.admin,
    )
    (updated,) = events(Verb.AGENT_UPDATED)
    assert updated.payload["before"]["slug"] == "triage"
    assert updated.payload["after"]["slug"] == "triage-eu"
    assert (
        updated.payload["before"]["owner"] == "sam" and updated.payload["after"]["owner"] == "ada"
    )
    page = client.get("/agents/triage-eu/admin/").content.decode()
    assert 'data-verb="agent.created"' in page and 'data-verb="agent.updated"' in page
    assert "sorts EU claims" in page


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"slug": "no spaces"}, "slug", catalog.SLUG_INVALID),
        ({"slug": "helpdesk"}, "slug", catalog.SLUG_TAKEN.format(slug="helpdesk")),
        ({"name": ""}, "name", catalog.NAME_REQUIRED),
        ({"kind": "quantum"}, "kind", catalog.KIND_UNKNOWN),
        ({"owner": "cora"}, "owner", catalog.OWNER_UNKNOWN.format(owner="cora")),
        ({"description": "x" * 2001}, "description", catalog.DESCRIPTION_TOO_LONG),
    ],
)
def test_bad_agent_input_is_a_message_at_its_field_and_changes_nothing(
    world: Any, make_agent: Any, change: dict[str, str], field: str, message: str
) -> None:
    make_agent("helpdesk", COUNTER, ALLOW_ALL_TESTS, team=world.support)
    # No version yet: its slug and kind may still change.
    bot = catalog.agent_create(user=world.admin, team=world.claims, slug="draft-bot", name="Draft")
    data = {"team": "claims", "slug": "fresh", "name": "Fresh", "kind": "hosted"} | change
    client = client_of(world.admin)
    before = (Agent.objects.count(), AuditEvent.objects.count())
    for url in ("/agents/new", "/agents/draft-bot/edit"):
        response = client.post(url, data)
        assert response.status_code == 400, url
        page = response.content.decode()
        assert f'data-error="{field}"' in page and message.replace("'", "&#x27;") in page
    assert (Agent.objects.count(), AuditEvent.objects.count()) == before
    bot_now = Agent.objects.get(pk=bot.pk)
    assert (bot_now.slug, bot_now.name, bot_now.kind) == ("draft-bot", "Draft", "hosted")


def test_slug_and_kind_are_fixed_once_the_agent_has_a_version(world: Any, make_agent: Any) -> None:
    bot = make_agent("claims-bot", COUNTER, ALLOW_ALL_TESTS)
    for change, field in (({"slug": "renamed"}, "slug"), ({"kind": "remote"}, "kind")):
        args = {"slug": "claims-bot", "name": "Claims Bot", "kind": "hosted"} | change
        with pytest.raises(catalog.Invalid) as refused:
            catalog.agent_update(agent=bot, user=world.admin, team=world.claims, **args)
        assert refused.value.field == field
    assert not events(Verb.AGENT_UPDATED)


def test_a_stale_edit_loses_to_the_change_it_did_not_see(world: Any, make_agent: Any) -> None:
    bot = make_agent("claims-bot", COUNTER, ALLOW_ALL_TESTS)
    Agent.objects.filter(pk=bot.pk).update(name="Renamed meanwhile")
    with pytest.raises(Conflict):
        catalog.agent_update(
            agent=bot,
            user=world.admin,
            team=world.claims,
            slug="claims-bot",
            name="Mine",
            kind="hosted",
        )
    assert Agent.objects.get(pk=bot.pk).name == "Renamed meanwhile"


def test_an_archived_agent_starts_no_runs_leaves_the_overview_and_keeps_its_history(
    world: Any, make_agent: Any
) -> None:
    bot = make_agent("claims-bot", COUNTER, ALLOW_ALL_TESTS)
    run = run_start(agent=bot, input={"n": 1})
    assert 'id="agent-claims-bot"' in client_of(world.supervisor).get("/").content.decode()
    client = client_of(world.admin)
    response = client.post("/agents/claims-bot/archive", {"reason": ""})
    assert response.status_code == 400 and 'data-error="reason"' in response.content.decode()
    assert Agent.objects.get(pk=bot.pk).archived_at is None
    assert client.post("/agents/claims-bot/archive", {"reason": "replaced"}).status_code == 302
    bot.refresh_from_db()
    assert bot.archived_at is not None
    with pytest.raises(Conflict, match=AGENT_ARCHIVED.format(agent=bot.name)):
        run_start(agent=bot, input={"n": 2})
    assert Run.objects.filter(agent=bot).count() == 1
    overview = client_of(world.supervisor).get("/").content.decode()
    assert 'id="agent-claims-bot"' not in overview
    # Its history stays readable, to those who could read it before.
    assert client_of(world.supervisor).get("/agents/claims-bot/").status_code == 200
    assert client_of(world.supervisor).get(f"/runs/{run.pk}/").status_code == 200
    page = client_of(world.compliance).get("/agents/claims-bot/admin/").content.decode()
    assert 'data-testid="archived"' in page and 'data-verb="agent.archived"' in page
    assert "replaced" in page
    (archived,) = events(Verb.AGENT_ARCHIVED)
    assert archived.payload["before"]["archived_at"] is None
    assert archived.payload["after"]["archived_at"] is not None
    assert 'data-agent="claims-bot"' in client.get("/teams/claims/").content.decode()
    # Restored, it runs again.
    assert client.post("/agents/claims-bot/unarchive", {"reason": "needed"}).status_code == 302
    run_start(agent=bot, input={"n": 3})
    assert events(Verb.AGENT_UNARCHIVED)[0].payload["reason"] == "needed"


@pytest.mark.parametrize("who", ["supervisor", "compliance"])
def test_supervisors_and_compliance_change_no_configuration(
    world: Any, make_agent: Any, remote_agent: Agent, who: str
) -> None:
    make_agent("claims-bot", COUNTER, ALLOW_ALL_TESTS)
    key, _ = remote.apikey_create(agent=remote_agent, name="prod", user=world.admin)
    client = client_of(getattr(world, who))
    before = AuditEvent.objects.count()
    agent_form = {"team": "claims", "slug": "claims-bot", "name": "Changed", "kind": "hosted"}
    for url, data in [
        ("/agents/new", agent_form | {"slug": "sneaky"}),
        ("/agents/claims-bot/edit", agent_form),
        ("/agents/claims-bot/archive", {"reason": "no"}),
        ("/teams/claims/edit", {"slug": "claims", "name": "Changed"}),
        ("/teams/claims/archive", {"reason": "no"}),
        ("/agents/ledger-bot/keys/new", {"name": "mine", "days": "30"}),
        (f"/agents/ledger-bot/keys/{key.pk}/rotate", {"overlap_hours": "1"}),
        (f"/agents/ledger-bot/keys/{key.pk}/revoke", {"reason": "no"}),
    ]:
        assert client.post(url, data).status_code == 403, url
    assert client.get("/agents/claims-bot/edit").status_code == 403
    assert AuditEvent.objects.count() == before
    assert Agent.objects.get(slug="claims-bot").name == "Claims Bot"
    assert ApiKey.objects.filter(agent=remote_agent).count() == 1
    # They may read the admin page, without its forms.
    page = client.get("/agents/ledger-bot/admin/").content.decode()
    assert f'data-key="{key.prefix}"' in page and "/keys/new" not in page


def test_an_admin_of_one_team_cannot_touch_another_teams_agents_or_team(
    world: Any, make_agent: Any
) -> None:
    make_agent("helpdesk", COUNTER, ALLOW_ALL_TESTS, team=world.support)
    bot = make_agent("claims-bot", COUNTER, ALLOW_ALL_TESTS)
    client = client_of(world.admin)  # administers claims only
    before = AuditEvent.objects.count()
    form = {"slug": "helpdesk", "name": "Mine now", "kind": "hosted"}
    assert client.post("/agents/helpdesk/edit", form | {"team": "support"}).status_code == 404
    assert client.post("/agents/helpdesk/archive", {"reason": "x"}).status_code == 404
    assert client.get("/agents/helpdesk/admin/").status_code == 404
    assert client.post("/teams/support/edit", {"slug": "support", "name": "X"}).status_code == 404
    assert client.post("/teams/support/archive", {"reason": "x"}).status_code == 404
    new = {"team": "support", "slug": "intruder", "name": "Intruder", "kind": "hosted"}
    assert client.post("/agents/new", new).status_code == 404
    # Nor move an agent of theirs into team support, even one they may see.
    move = {"team": "support", "slug": "claims-bot", "name": "Claims Bot", "kind": "hosted"}
    assert client.post("/agents/claims-bot/edit", move).status_code == 404
    roles.role_grant(user=world.admin, role=roles.SUPERVISOR, target=world.support)
    admin = get_user_model().objects.get(pk=world.admin.pk)
    assert client_of(admin).post("/agents/claims-bot/edit", move).status_code == 403
    with pytest.raises(PermissionDenied):
        catalog.agent_update(
            agent=bot,
            user=admin,
            team=world.support,
            **{k: v for k, v in move.items() if k != "team"},
        )
    assert Agent.objects.get(pk=bot.pk).team == world.claims
    assert not Agent.objects.filter(slug="intruder").exists()
    assert AuditEvent.objects.count() == before + 1  # the supervisor grant, nothing else
    # An admin of both teams moves it.
    bea = support_admin(world)
    roles.role_grant(user=bea, role=roles.AGENT_ADMIN, target=world.claims)
    bea = get_user_model().objects.get(pk=bea.pk)
    catalog.agent_update(
        agent=bot, user=bea, team=world.support, slug="claims-bot", name="Claims Bot", kind="hosted"
    )
    assert Agent.objects.get(pk=bot.pk).team == world.support
    (moved,) = events(Verb.AGENT_UPDATED)
    assert (moved.payload["before"]["team"], moved.payload["after"]["team"]) == (
        "claims",
        "support",
    )


# --- API keys -----------------------------------------------------------------------------


def test_a_key_is_shown_once_and_never_stored(world: Any, remote_agent: Agent) -> None:
    client = client_of(world.admin)
    response = client.post("/agents/ledger-bot/keys/new", {"name": "prod", "days": "30"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    full = response.content.decode().split('data-testid="new-key">')[1].split("<")[0]
    assert full.startswith("bk_")
    secret = full.partition(".")[2]
    assert len(secret) >= 40
    assert api_status(full) == 201
    key = ApiKey.objects.get(agent=remote_agent)
    assert (key.name, key.created_by) == ("prod", world.admin)
    assert 29 <= (key.expires_at - timezone.now()).days <= 30
    # Nowhere on the list page, in any text column of any table, nor in the trail.
    page = client.get("/agents/ledger-bot/admin/").content.decode()
    assert f'data-key="{key.prefix}"' in page and secret not in page
    assert "agents_apikey.prefix" in text_columns_containing(key.prefix)  # the search finds
    assert text_columns_containing(secret) == []
    assert text_columns_containing(full) == []
    trail = json.dumps([e.payload for e in AuditEvent.objects.all()])
    assert secret not in trail and full not in trail
    (created,) = events(Verb.APIKEY_CREATED)
    assert created.payload["prefix"] == key.prefix


def text_columns_containing(needle: str) -> list[str]:
    """Every (table, column) of a text type in the database whose value contains needle."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
            " AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea')"
        )
        columns = cursor.fetchall()
        assert len(columns) > 20  # the query found the schema
        found = []
        for table, column in columns:
            cursor.execute(
                f'SELECT 1 FROM "{table}" WHERE position(%s in "{column}"::text) > 0 LIMIT 1',  # noqa: S608 (names from the catalog)
                [needle],
            )
            if cursor.fetchone():
                found.append(f"{table}.{column}")
    return found


def test_bad_key_input_is_a_message_and_creates_nothing(world: Any, remote_agent: Agent) -> None:
    client = client_of(world.admin)
    for data, field in (
        ({"name": "", "days": "30"}, "name"),
        ({"name": "prod", "days": "0"}, "days"),
        ({"name": "prod", "days": "ninety"}, "days"),
    ):
        response = client.post("/agents/ledger-bot/keys/new", data)
        assert response.status_code == 400
        assert f'data-error="{field}"' in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoked_and_expired_keys_get_401(world: Any, remote_agent: Agent) -> None:
    revoked, revoked_text = remote.apikey_create(agent=remote_agent, name="a", user=world.admin)
    expired, expired_text = remote.apikey_create(agent=remote_agent, name="b", user=world.admin)
    assert api_status(revoked_text) == 201 and api_status(expired_text) == 201
    client = client_of(world.admin)
    response = client.post(f"/agents/ledger-bot/keys/{revoked.pk}/revoke", {"reason": ""})
    assert response.status_code == 400 and 'data-error="reason"' in response.content.decode()
    assert api_status(revoked_text) == 201
    response = client.post(f"/agents/ledger-bot/keys/{revoked.pk}/revoke", {"reason": "leaked"})
    assert response.status_code == 302
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_status(revoked_text) == 401
    assert api_status(expired_text) == 401
    page = client.get("/agents/ledger-bot/admin/").content.decode()
    assert "revoked" in page and "expired" in page
    assert events(Verb.APIKEY_REVOKED)[0].payload["reason"] == "leaked"


def test_an_archived_agents_keys_get_401(world: Any, remote_agent: Agent) -> None:
    _, text = remote.apikey_create(agent=remote_agent, name="prod", user=world.admin)
    catalog.agent_archive(agent=remote_agent, user=world.admin, reason="gone")
    assert api_status(text) == 401
    catalog.agent_unarchive(agent=remote_agent, user=world.admin, reason="back")
    assert api_status(text) == 201


def test_rotation_keeps_the_old_key_working_through_the_overlap(
    world: Any, remote_agent: Agent
) -> None:
    old, old_text = remote.apikey_create(agent=remote_agent, name="prod", user=world.admin)
    client = client_of(world.admin)
    response = client.post(f"/agents/ledger-bot/keys/{old.pk}/rotate", {"overlap_hours": "200"})
    assert response.status_code == 400 and 'data-error="overlap_hours"' in response.content.decode()
    assert ApiKey.objects.count() == 1
    response = client.post(f"/agents/ledger-bot/keys/{old.pk}/rotate", {"overlap_hours": "2"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    new_text = response.content.decode().split('data-testid="new-key">')[1].split("<")[0]
    new = ApiKey.objects.exclude(pk=old.pk).get()
    assert new.name == "prod" and new_text.startswith(f"bk_{new.prefix}.")
    old.refresh_from_db()
    assert timedelta(hours=1) < old.expires_at - timezone.now() <= timedelta(hours=2)
    # During the overlap both work; after it, the old one does not.
    assert api_status(old_text) == 201 and api_status(new_text) == 201
    ApiKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_status(old_text) == 401 and api_status(new_text) == 201
    (rotated,) = events(Verb.APIKEY_ROTATED)
    assert rotated.payload["after"]["replaced_by"] == new.prefix
    assert rotated.payload["before"]["expires_at"] != rotated.payload["after"]["expires_at"]
    assert (
        new_text.partition(".")[2] not in client.get("/agents/ledger-bot/admin/").content.decode()
    )
    assert text_columns_containing(new_text.partition(".")[2]) == []
    # An expired key is not rotated again.
    with pytest.raises(Conflict):
        remote.apikey_rotate(key=old, user=world.admin, overlap_hours=1)


# --- four eyes on policy, per team ---------------------------------------------------------


def test_an_admin_turns_on_four_eyes_for_their_team_but_only_a_superuser_turns_it_off(
    world: Any,
) -> None:
    admin = client_of(world.admin)
    form = {"slug": "claims", "name": "Claims"}
    assert admin.post("/teams/claims/edit", {**form, "four_eyes": "1"}).status_code == 302
    assert Team.objects.get(slug="claims").publish_needs_second_admin
    [event] = events(Verb.TEAM_UPDATED)
    assert event.payload["before"]["publish_needs_second_admin"] is False
    assert event.payload["after"]["publish_needs_second_admin"] is True
    assert b'name="four_eyes" value="1" checked' in admin.get("/teams/claims/edit").content

    refused = admin.post("/teams/claims/edit", form)  # unticked
    assert refused.status_code == 400
    assert b"Only a superuser turns off" in refused.content
    assert b'data-error="four_eyes"' in refused.content
    assert Team.objects.get(slug="claims").publish_needs_second_admin
    assert len(events(Verb.TEAM_UPDATED)) == 1

    for who in (world.supervisor, world.compliance, support_admin(world)):
        assert client_of(who).post("/teams/claims/edit", form).status_code in (403, 404)
    assert Team.objects.get(slug="claims").publish_needs_second_admin

    root = get_user_model().objects.create_superuser("root-teams", password=None)
    assert client_of(root).post("/teams/claims/edit", form).status_code == 302
    assert not Team.objects.get(slug="claims").publish_needs_second_admin


def test_a_new_hosted_agent_gets_its_first_version_from_its_admin_page(world: Any) -> None:
    admin = client_of(world.admin)
    agent = catalog.agent_create(
        user=world.admin, team=world.claims, slug="fresh-bot", name="Fresh", kind="hosted"
    )
    page = admin.get("/agents/fresh-bot/admin/").content.decode()
    assert 'data-testid="new-draft"' in page and f"<option>{COUNTER}</option>" in page
    assert (
        "Write the first version"
        not in client_of(world.supervisor).get("/agents/fresh-bot/admin/").content.decode()
    )

    response = admin.post("/agents/fresh-bot/versions/new", {"program": COUNTER})
    assert response.status_code == 302
    assert response["Location"] == "/agents/fresh-bot/versions/1/edit/"
    [draft] = agent.versions.all()
    assert (draft.program, draft.policy, draft.published_at) == (COUNTER, {}, None)
    assert (
        'href="/agents/fresh-bot/versions/1/edit/"'
        in admin.get("/agents/fresh-bot/admin/").content.decode()
    )


def test_an_admin_sets_the_agents_decision_target_and_a_bad_one_changes_nothing(
    world: Any,
) -> None:
    agent = catalog.agent_create(user=world.admin, team=world.claims, slug="sla", name="Sla")
    client = client_of(world.admin)
    assert 'name="decision_sla_minutes" type="number" min="1" max="10080" value="60"' in (
        client.get("/agents/sla/edit").content.decode()
    )
    form = {"team": "claims", "slug": "sla", "name": "Sla", "kind": "hosted"}
    for bad in ("0", "10081", "1.5", "soon", ""):
        response = client.post("/agents/sla/edit", {**form, "decision_sla_minutes": bad})
        assert response.status_code == 400, bad
        assert catalog.SLA_RANGE in response.content.decode()
    agent.refresh_from_db()
    assert agent.decision_sla_minutes == 60 and not events(Verb.AGENT_UPDATED)
    response = client.post("/agents/sla/edit", {**form, "decision_sla_minutes": "15"})
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.decision_sla_minutes == 15
    (updated,) = events(Verb.AGENT_UPDATED)
    assert updated.payload["before"]["decision_sla_minutes"] == 60
    assert updated.payload["after"]["decision_sla_minutes"] == 15
    # A form without the field (an older page) leaves the target as it is.
    assert client.post("/agents/sla/edit", {**form, "name": "Sla Two"}).status_code == 302
    agent.refresh_from_db()
    assert (agent.name, agent.decision_sla_minutes) == ("Sla Two", 15)
