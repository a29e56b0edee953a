"""People and their access: the People pages, the services behind them (who may change
whose access, and the audit event of each change), deactivation ending sessions and live
sockets, and the Django admin for superusers only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.exceptions import PermissionDenied
from django.test import Client

from agents import people, roles
from agents.models import Agent
from agents.permissions import team_can, user_can
from agents.services import ServiceError
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db


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


# --- who an admin manages -----------------------------------------------------------------


def test_an_admin_manages_the_people_of_their_team_only(world: Any) -> None:
    managed = set(people.people_for_admin(world.admin).values_list("username", flat=True))
    assert managed == {"sam", "sol"}  # not sue (support), cora (compliance), nor ada herself
    page = client_of(world.admin).get("/people/").content.decode()
    assert 'data-person="sam"' in page
    assert 'data-person="sue"' not in page


def test_an_admin_of_another_team_does_not_see_this_teams_people(world: Any) -> None:
    bea = support_admin(world)
    client = client_of(bea)
    assert client.get(f"/people/{world.supervisor.pk}/").status_code == 404
    assert client.get(f"/people/{world.support_supervisor.pk}/").status_code == 200


@pytest.mark.parametrize("who", ["supervisor", "compliance", "outsider"])
def test_people_pages_are_refused_to_those_who_administer_nothing(world: Any, who: str) -> None:
    client = client_of(getattr(world, who))
    sam = world.supervisor.pk
    assert client.get("/people/").status_code == 403
    assert client.get(f"/people/{sam}/").status_code == 403
    before = AuditEvent.objects.count()
    for url, data in [
        ("/people/new", {"username": "x", "role": roles.SUPERVISOR, "target": "team:claims"}),
        (f"/people/{sam}/grant", {"role": roles.SUPERVISOR, "target": "agent:x"}),
        (f"/people/{sam}/revoke", {"role": roles.SUPERVISOR, "target": "team:claims"}),
        (f"/people/{sam}/role", {"role": roles.COMPLIANCE}),
        (f"/people/{sam}/deactivate", {"reason": "no"}),
    ]:
        assert client.post(url, data | {"reason": "r"}).status_code == 403, url
    assert AuditEvent.objects.count() == before
    assert get_user_model().objects.get(pk=sam).is_active


def test_the_person_page_says_what_they_may_do_where_and_why(world: Any, make_agent: Any) -> None:
    make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    page = client_of(world.admin).get(f"/people/{world.supervisor.pk}/").content.decode()
    assert 'data-target="team:claims"' in page
    assert 'data-target="agent:claims-bot"' in page
    assert "supervise: grant on team <code>claims</code>" in page
    partial = client_of(world.admin).get(f"/people/{world.supervisor.pk}/", HTTP_HX_REQUEST="true")
    assert partial.content.decode().lstrip().startswith('<section id="access">')
    # The answer is the permission module's: the page and user_can agree.
    rows = people.person_access(world.admin, world.supervisor)
    row = next(r for r in rows if r.kind == "agent")
    assert isinstance(row.target, Agent)
    assert set(row.capabilities) == {
        c for c in ("view", "supervise", "administer") if user_can(world.supervisor, c, row.target)
    }


# --- creating people -----------------------------------------------------------------------


def test_a_new_person_gets_a_password_shown_once_and_stored_only_as_a_hash(world: Any) -> None:
    client = client_of(world.admin)
    response = client.post(
        "/people/new",
        {
            "username": "nia",
            "name": "Nia Okafor",
            "email": "nia@example.com",
            "role": roles.SUPERVISOR,
            "target": "team:claims",
        },
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    nia = get_user_model().objects.get(username="nia")
    password = page.split('data-testid="new-password">')[1].split("<")[0]
    assert len(password) >= 20 and nia.check_password(password)
    assert password not in nia.password
    trail = json.dumps([e.payload for e in AuditEvent.objects.all()])
    assert password not in trail
    sessions = json.dumps([s.get_decoded() for s in Session.objects.all()])
    assert password not in sessions
    assert client.get(f"/people/{nia.pk}/").content.decode().count(password) == 0
    [created] = events(Verb.PERSON_CREATED)
    assert created.payload == {"user": "nia", "email": "nia@example.com", "name": "Nia Okafor"}
    assert created.actor_id == world.admin.pk
    assert events(Verb.GRANT_ADDED)[-1].payload["user"] == "nia"
    assert nia in people.people_for_admin(world.admin)


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("sam", people.USERNAME_TAKEN.format(username="sam")),
        ("SAM", people.USERNAME_TAKEN.format(username="SAM")),
        ("", people.USERNAME_REQUIRED),
    ],
)
def test_a_bad_new_person_is_a_message_and_changes_nothing(
    world: Any, username: str, message: str
) -> None:
    before = (get_user_model().objects.count(), AuditEvent.objects.count())
    client = client_of(world.admin)
    data = {"username": username, "role": roles.SUPERVISOR, "target": "team:claims"}
    response = client.post("/people/new", data, follow=True)
    assert message in [str(m) for m in response.context["messages"]]
    assert (get_user_model().objects.count(), AuditEvent.objects.count()) == before


def test_an_admin_must_give_a_new_person_a_first_grant_on_their_own_team(world: Any) -> None:
    with pytest.raises(ServiceError, match="a role on one of your"):
        people.person_create(username="nia", by=world.admin)
    with pytest.raises(PermissionDenied):
        people.person_create(
            username="nia", by=world.admin, role=roles.SUPERVISOR, target=world.support
        )
    assert not get_user_model().objects.filter(username="nia").exists()
    # Through the page the other team does not exist for them.
    response = client_of(world.admin).post(
        "/people/new", {"username": "nia", "role": roles.SUPERVISOR, "target": "team:support"}
    )
    assert response.status_code == 404


# --- grants and roles ----------------------------------------------------------------------


def test_grant_and_revoke_are_audited_and_a_double_submit_changes_nothing(
    world: Any, make_agent: Any
) -> None:
    bot = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    otto = world.outsider
    roles.role_grant(user=otto, role=roles.SUPERVISOR, target=world.claims)  # now ada's
    client = client_of(world.admin)
    grant = {"role": roles.SUPERVISOR, "target": "agent:claims-bot"}
    client.post(f"/people/{otto.pk}/grant", grant)
    response = client.post(f"/people/{otto.pk}/grant", grant, follow=True)
    assert "already holds" in str(list(response.context["messages"])[-1])
    added = [e for e in events(Verb.GRANT_ADDED) if e.payload.get("agent") == "claims-bot"]
    assert len(added) == 1 and added[0].actor_id == world.admin.pk

    # No reason, no revoke.
    response = client.post(f"/people/{otto.pk}/revoke", grant | {"reason": " "}, follow=True)
    assert people.REASON_REQUIRED in [str(m) for m in response.context["messages"]]
    assert roles.SUPERVISOR in roles.held_roles(otto, bot)

    client.post(f"/people/{otto.pk}/revoke", grant | {"reason": "moved to triage"})
    response = client.post(f"/people/{otto.pk}/revoke", grant | {"reason": "again"}, follow=True)
    assert "does not hold" in str(list(response.context["messages"])[-1])
    [revoked] = events(Verb.GRANT_REVOKED)
    assert revoked.payload == {
        "user": "otto",
        "role": roles.SUPERVISOR,
        "agent": "claims-bot",
        "reason": "moved to triage",
    }
    assert revoked.agent_id == bot.pk
    assert roles.held_roles(otto, bot) == []


def test_revoking_one_role_keeps_what_another_role_there_still_gives(world: Any) -> None:
    otto = world.outsider
    roles.role_grant(user=otto, role=roles.SUPERVISOR, target=world.claims)
    roles.role_grant(user=otto, role=roles.AGENT_ADMIN, target=world.claims)
    people.grant_revoke(
        person=otto, role=roles.SUPERVISOR, target=world.claims, by=world.admin, reason="r"
    )
    fresh = get_user_model().objects.get(pk=otto.pk)
    assert roles.held_roles(fresh, world.claims) == [roles.AGENT_ADMIN]


def test_nobody_grants_where_they_do_not_administer_or_more_than_they_hold(world: Any) -> None:
    otto = world.outsider
    with pytest.raises(PermissionDenied):  # another team
        people.grant_add(person=otto, role=roles.SUPERVISOR, target=world.support, by=world.admin)
    with pytest.raises(PermissionDenied):  # a supervisor administers nothing
        people.grant_add(
            person=otto, role=roles.SUPERVISOR, target=world.claims, by=world.supervisor
        )
    with pytest.raises(PermissionDenied):  # compliance reads everything; ada does not
        people.role_assign(person=otto, role=roles.COMPLIANCE, by=world.admin)
    assert not otto.groups.exists()
    assert events(Verb.GRANT_ADDED)[-1].payload["user"] != "otto"
    # Through the page: the other team does not exist for ada.
    roles.role_grant(user=otto, role=roles.SUPERVISOR, target=world.claims)
    client = client_of(world.admin)
    response = client.post(
        f"/people/{otto.pk}/grant", {"role": roles.SUPERVISOR, "target": "team:support"}
    )
    assert response.status_code == 404


def test_a_superuser_gives_and_removes_a_model_wide_role(world: Any) -> None:
    root = get_user_model().objects.create_superuser("root", password="x")
    otto = world.outsider
    client = client_of(root)
    client.post(f"/people/{otto.pk}/role", {"role": roles.COMPLIANCE})
    assert otto.groups.filter(name=roles.COMPLIANCE).exists()
    client.post(f"/people/{otto.pk}/role", {"role": roles.COMPLIANCE, "remove": "1"})
    assert otto.groups.filter(name=roles.COMPLIANCE).exists()  # no reason: nothing changed
    client.post(f"/people/{otto.pk}/role", {"role": roles.COMPLIANCE, "remove": "1", "reason": "r"})
    assert not otto.groups.filter(name=roles.COMPLIANCE).exists()
    assert [e.payload["role"] for e in events(Verb.ROLE_ASSIGNED)] == [roles.COMPLIANCE]
    assert events(Verb.ROLE_REMOVED)[0].payload["reason"] == "r"


def test_an_admin_cannot_change_their_own_access(world: Any) -> None:
    with pytest.raises(ServiceError, match="your own"):
        people.grant_add(
            person=world.admin, role=roles.SUPERVISOR, target=world.claims, by=world.admin
        )
    with pytest.raises(ServiceError, match="your own"):
        people.person_deactivate(person=world.admin, by=world.admin, reason="r")
    assert client_of(world.admin).get(f"/people/{world.admin.pk}/").status_code == 404


# --- deactivation --------------------------------------------------------------------------


def test_deactivating_ends_their_sessions_and_is_audited(world: Any) -> None:
    sam = world.supervisor
    sams = [client_of(sam), client_of(sam)]
    others = client_of(world.second_supervisor)
    admin = client_of(world.admin)

    response = admin.post(f"/people/{sam.pk}/deactivate", {"reason": ""}, follow=True)
    assert people.REASON_REQUIRED in [str(m) for m in response.context["messages"]]
    assert get_user_model().objects.get(pk=sam.pk).is_active

    admin.post(f"/people/{sam.pk}/deactivate", {"reason": "left the company"})
    assert not get_user_model().objects.get(pk=sam.pk).is_active
    for client in sams:
        assert client.get("/").status_code == 302  # to the login page
        assert not Session.objects.filter(session_key=client.session.session_key).exists()
    assert others.get("/").status_code == 200
    [event] = events(Verb.PERSON_DEACTIVATED)
    assert event.payload == {"user": "sam", "reason": "left the company", "sessions_ended": 2}

    response = admin.post(f"/people/{sam.pk}/deactivate", {"reason": "again"}, follow=True)
    assert "already deactivated" in str(list(response.context["messages"])[-1])
    assert len(events(Verb.PERSON_DEACTIVATED)) == 1


def test_an_admin_cannot_deactivate_someone_who_also_works_elsewhere(world: Any) -> None:
    sol = world.second_supervisor
    roles.role_grant(user=sol, role=roles.SUPERVISOR, target=world.support)
    response = client_of(world.admin).post(f"/people/{sol.pk}/deactivate", {"reason": "r"})
    assert response.status_code == 403
    assert get_user_model().objects.get(pk=sol.pk).is_active


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_deactivating_closes_their_live_socket_at_once(world: Any, settings: Any) -> None:
    from asgiref.sync import sync_to_async
    from django.db import connections

    from console.consumers import CLOSE_UNAUTHENTICATED
    from tests.console.test_live import closed_with, connect

    settings.BATON_LIVE_RECHECK_SECONDS = 600  # the close comes from the message, not a re-check
    socket = await connect(world.supervisor)
    await socket.receive_from()
    await sync_to_async(people.person_deactivate)(
        person=world.supervisor, by=world.admin, reason="left"
    )
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED
    await sync_to_async(connections.close_all, thread_sensitive=True)()


# --- the Django admin ----------------------------------------------------------------------


def test_the_django_admin_is_for_superusers_only(world: Any, make_agent: Any) -> None:
    bot = make_agent("claims-bot", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    staff = get_user_model().objects.create_user("stan", is_staff=True)
    root = get_user_model().objects.create_superuser("root", password="x")
    pages = ["/admin/", "/admin/agents/agent/", f"/admin/agents/agent/{bot.pk}/permissions/"]
    for url in pages:
        assert client_of(root).get(url).status_code == 200, url
        assert client_of(staff).get(url).status_code == 404, url
        assert client_of(world.admin).get(url).status_code == 404, url
        assert Client().get(url)["Location"].startswith("/login/"), url
    assert client_of(staff).get("/admin/login/").status_code == 404
    # It shows; it does not change (changes are services that write their audit event).
    response = client_of(root).post(
        f"/admin/agents/agent/{bot.pk}/permissions/user-manage/{world.outsider.pk}/",
        {"permissions": ["view_agent"]},
    )
    assert response.status_code == 403
    assert not user_can(world.outsider, "view", bot)


# --- reactivation ------------------------------------------------------------------------


def test_reactivating_lets_them_sign_in_again_with_the_grants_they_kept(world: Any) -> None:
    sam = world.supervisor
    admin = client_of(world.admin)
    admin.post(f"/people/{sam.pk}/deactivate", {"reason": "on leave"})
    assert not team_can(get_user_model().objects.get(pk=sam.pk), "supervise", world.claims)

    response = admin.post(f"/people/{sam.pk}/reactivate", {"reason": ""}, follow=True)
    assert people.REASON_REQUIRED in [str(m) for m in response.context["messages"]]
    assert not get_user_model().objects.get(pk=sam.pk).is_active

    admin.post(f"/people/{sam.pk}/reactivate", {"reason": "back from leave"})
    sam = get_user_model().objects.get(pk=sam.pk)
    assert sam.is_active
    assert team_can(sam, "supervise", world.claims)
    [event] = events(Verb.PERSON_REACTIVATED)
    assert event.payload == {"user": "sam", "reason": "back from leave"}
    assert event.actor_id == world.admin.pk

    response = admin.post(f"/people/{sam.pk}/reactivate", {"reason": "twice"}, follow=True)
    assert "is active" in str(list(response.context["messages"])[-1])
    assert len(events(Verb.PERSON_REACTIVATED)) == 1


def test_reactivating_someone_who_also_works_elsewhere_is_not_an_admins_to_do(world: Any) -> None:
    sol = world.second_supervisor
    roles.role_grant(user=sol, role=roles.SUPERVISOR, target=world.support)
    people.person_deactivate(person=sol, by=superuser(), reason="left")
    response = client_of(world.admin).post(f"/people/{sol.pk}/reactivate", {"reason": "r"})
    assert response.status_code == 403
    assert not get_user_model().objects.get(pk=sol.pk).is_active
    assert not events(Verb.PERSON_REACTIVATED)


def test_supervisors_and_compliance_cannot_reactivate(world: Any) -> None:
    sam = world.supervisor
    people.person_deactivate(person=sam, by=world.admin, reason="left")
    for who in (world.second_supervisor, world.compliance):
        assert client_of(who).post(f"/people/{sam.pk}/reactivate", {"reason": "r"}).status_code in (
            403,
            404,
        )
    assert not get_user_model().objects.get(pk=sam.pk).is_active


# --- invitations -------------------------------------------------------------------------


def superuser() -> Any:
    return get_user_model().objects.create_superuser("root-people", password=None)


def invite(world: Any, capture: Any, username: str = "ivy", email: str = "ivy@example.com") -> Any:
    with capture(execute=True):
        return client_of(world.admin).post(
            "/people/new",
            {
                "username": username,
                "email": email,
                "role": roles.SUPERVISOR,
                "target": "team:claims",
                "invite": "1",
            },
        )


def link_in(message: Any) -> str:
    [line] = [w for w in message.body.split() if "/welcome/" in w]
    return line.split("testserver", 1)[1]


def test_an_invited_person_chooses_their_password_once_through_the_mailed_link(
    world: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any
) -> None:
    response = invite(world, django_capture_on_commit_callbacks)
    assert response.status_code == 200
    assert b'data-testid="invited"' in response.content
    assert b"new-password" not in response.content
    ivy = get_user_model().objects.get(username="ivy")
    assert not ivy.has_usable_password()
    assert team_can(ivy, "supervise", world.claims)

    [message] = mailoutbox
    assert message.to == ["ivy@example.com"]
    link = link_in(message)
    [event] = events(Verb.PERSON_INVITED)
    assert event.payload == {"user": "ivy", "email": "ivy@example.com"}
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert token not in json.dumps([e.payload for e in AuditEvent.objects.all()])

    visitor = Client()
    page = visitor.get(link, follow=True)  # Django moves the token out of the address
    assert page.status_code == 200 and page.context["validlink"]
    assert token not in page.redirect_chain[-1][0]
    short = visitor.post(page.redirect_chain[-1][0], {"new_password1": "x", "new_password2": "x"})
    assert short.status_code == 200 and short.context["form"].errors  # too short: nothing set
    assert not get_user_model().objects.get(username="ivy").has_usable_password()
    done = visitor.post(
        page.redirect_chain[-1][0],
        {"new_password1": "a long ivy passphrase", "new_password2": "a long ivy passphrase"},
    )
    assert done.status_code == 302 and done["Location"] == "/login/"
    signed = Client().post("/login/", {"username": "ivy", "password": "a long ivy passphrase"})
    assert signed.status_code == 302 and signed["Location"] == "/"

    again = Client().get(link, follow=True)
    assert not again.context["validlink"]
    assert b"does not work" in again.content


def test_an_invitation_needs_an_email_address_and_creates_nobody_without(
    world: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any
) -> None:
    response = invite(world, django_capture_on_commit_callbacks, email="")
    assert response.status_code == 302
    assert not get_user_model().objects.filter(username="ivy").exists()
    assert not mailoutbox
    assert not events(Verb.PERSON_CREATED)


def test_an_invitation_is_sent_again_only_to_someone_without_a_password(
    world: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any
) -> None:
    invite(world, django_capture_on_commit_callbacks)
    ivy = get_user_model().objects.get(username="ivy")
    admin = client_of(world.admin)
    assert b"Send the invitation again" in admin.get(f"/people/{ivy.pk}/").content
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(f"/people/{ivy.pk}/invite")
    assert len(mailoutbox) == 2
    assert len(events(Verb.PERSON_INVITED)) == 2

    sam = world.supervisor  # has a password
    sam.email = "sam@example.com"
    sam.save(update_fields=["email"])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"/people/{sam.pk}/invite", follow=True)
    assert "set a password already" in str(list(response.context["messages"])[-1])
    assert len(mailoutbox) == 2
    assert client_of(world.supervisor).post(f"/people/{ivy.pk}/invite").status_code in (403, 404)
    assert len(events(Verb.PERSON_INVITED)) == 2
