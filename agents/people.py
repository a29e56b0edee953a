"""People and their access: who an admin may manage, what a person may do where and why,
and the services that create people, give and take away roles and grants, and deactivate
them. What a capability means is agents.permissions' one rule; how a role is granted is
agents.roles'. This module decides who may change whose access, and records each change.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from guardian.models import UserObjectPermission

from agents import roles
from agents.models import Agent, Team
from agents.permissions import (
    CAPABILITIES,
    Ground,
    agents_for_user,
    grants_prefetch,
    grounds,
    may_grant_on,
    team_grounds,
    teams_for_user,
)
from agents.services import ServiceError
from audit.services import Actor, audit_record
from audit.verbs import Verb
from console import live

REASON_REQUIRED = "Say why: a reason is required."
USERNAME_REQUIRED = "A username is required."
USERNAME_TAKEN = "The username {username!r} is taken."
FIRST_GRANT_REQUIRED = "Give the new person a role on one of your teams or agents."
UNKNOWN_ROLE = "There is no role {role!r}."
NOT_YOURSELF = "You cannot change your own access or deactivate yourself."
ALREADY_HELD = "{user} already holds {role} on {target}."
NOT_HELD = "{user} does not hold {role} on {target}."
ALREADY_IN_ROLE = "{user} already has the role {role}."
NOT_IN_ROLE = "{user} does not have the role {role}."
ALREADY_INACTIVE = "{user} is already deactivated."
ALREADY_ACTIVE = "{user} is active."
INVITE_NEEDS_EMAIL = "An invitation goes by e-mail: give an e-mail address."
ALREADY_SIGNED_UP = "{user} has set a password already: nothing to invite them to."
NOT_YOURS_TO_GRANT = "You may not grant or revoke on {target}."
NOT_YOURS_TO_ASSIGN = "You may not give or take away the role {role}: you do not hold it all."
HOLDS_MORE = "{user} holds access you do not administer: ask a superuser to {verb} them."

# A model-wide role is a group whose permissions hold everywhere.
MODEL_WIDE_ROLES = tuple(roles.GROUP_PERMISSIONS)


# --- who may manage whom -----------------------------------------------------------------


def _scope_grants(user: Any) -> QuerySet[UserObjectPermission]:
    """Every personal grant on a team or agent the user administers."""
    teams = [str(pk) for pk in teams_for_user(user, "administer").values_list("pk", flat=True)]
    agents = [str(pk) for pk in agents_for_user(user, "administer").values_list("pk", flat=True)]
    types = ContentType.objects.get_for_models(Team, Agent)
    return UserObjectPermission.objects.filter(
        Q(content_type=types[Team], object_pk__in=teams)
        | Q(content_type=types[Agent], object_pk__in=agents)
    )


def people_for_admin(user: Any) -> QuerySet[Any]:
    """The people the user may manage: a superuser, everyone else; an admin, the people
    holding a grant on a team or agent they administer (superusers excepted). Never the
    user themselves."""
    people = get_user_model().objects.exclude(pk=user.pk).order_by("username")
    if not user.is_authenticated or not user.is_active:
        return people.none()
    if user.is_superuser:
        return people
    return people.filter(is_superuser=False, pk__in=_scope_grants(user).values("user_id"))


def person_for_admin(user: Any, person_id: int) -> Any:
    """The person, if the user may manage them (404 otherwise: not theirs to know)."""
    from django.http import Http404

    person = people_for_admin(user).filter(pk=person_id).first()
    if person is None:
        raise Http404("No such person.")
    return person


def may_assign_role(user: Any, role: str) -> bool:
    """A model-wide role only by someone who holds all it gives: nobody grants more than
    they hold."""
    if user.is_superuser:
        return True
    return all(user.has_perm(perm) for perm in roles.GROUP_PERMISSIONS.get(role, ["-"]))


def _may_take_everything(user: Any, person: Any) -> bool:
    """Deactivating takes away all a person holds: only someone who could take away each
    of their grants and roles one by one may."""
    if user.is_superuser:
        return True
    if person.is_superuser:
        return False
    # A Supervisor's or Agent admin's group comes with their grants (agents.roles); a
    # role held only model-wide (Compliance) must be one the user could take away.
    model_wide_only = [
        g.name for g in person.groups.all() if g.name not in roles.GRANT_CAPABILITIES
    ]
    if any(not may_assign_role(user, name) for name in model_wide_only):
        return False
    mine = set(_scope_grants(user).filter(user=person).values_list("pk", flat=True))
    theirs = set(UserObjectPermission.objects.filter(user=person).values_list("pk", flat=True))
    return theirs <= mine


# --- what a person may do, and why ---------------------------------------------------------


@dataclass
class Access:
    """One team or agent: the capabilities a person holds on it, each with its grounds."""

    kind: str
    target: Agent | Team
    capabilities: dict[str, list[Ground]] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)  # granted to them there


def person_access(user: Any, person: Any) -> list[Access]:
    """What the person may do on each team and agent the user administers (everything,
    for a superuser), and why: asked of agents.permissions, never worked out here."""
    teams = list(teams_for_user(user, "administer").order_by("slug"))
    agents = list(agents_for_user(user, "administer").order_by("team__slug", "slug"))
    grants_prefetch(person, agents)
    rows: list[Access] = []
    for team in teams:
        row = Access("team", team, roles=roles.held_roles(person, team))
        for capability in CAPABILITIES:
            found = list(team_grounds(person, capability, team)) if person.is_active else []
            if found:
                row.capabilities[capability] = found
        rows.append(row)
    for agent in agents:
        row = Access("agent", agent, roles=roles.held_roles(person, agent))
        for capability in CAPABILITIES:
            found = list(grounds(person, capability, agent)) if person.is_active else []
            if found:
                row.capabilities[capability] = found
        if row.capabilities or row.roles:
            rows.append(row)
    return rows


def grant_targets(user: Any) -> list[tuple[str, str]]:
    """(value, label) of every team and agent the user may grant on, for a form."""
    teams = teams_for_user(user, "administer").order_by("slug")
    agents = agents_for_user(user, "administer").order_by("slug")
    return [(f"team:{t.slug}", f"Team {t.name}") for t in teams] + [
        (f"agent:{a.slug}", f"Agent {a.name}") for a in agents
    ]


def target_for_user(user: Any, value: str) -> Agent | Team:
    """The team or agent named `team:slug` / `agent:slug`, if the user may grant on it
    (404 if it does not exist for them, 403 if they may see it but not grant on it)."""
    from django.http import Http404

    from agents.permissions import agent_for_user, team_for_user

    kind, _, slug = value.partition(":")
    if kind == "team":
        target: Agent | Team = team_for_user(user, slug)
    elif kind == "agent":
        target = agent_for_user(user, slug)
    else:
        raise Http404("No such team or agent.")
    if not may_grant_on(user, target):
        raise PermissionDenied(NOT_YOURS_TO_GRANT.format(target=slug))
    return target


# --- services ------------------------------------------------------------------------------


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ServiceError(REASON_REQUIRED)
    return reason


def _not_self(person: Any, by: Any) -> None:
    if person.pk == by.pk:
        raise ServiceError(NOT_YOURSELF)


def _lock(person: Any) -> Any:
    """The person's row, locked: two submits of one change queue, and the second finds
    it done."""
    return get_user_model().objects.select_for_update().get(pk=person.pk)


def _kind(target: Agent | Team) -> str:
    return "agent" if isinstance(target, Agent) else "team"


def person_create(
    *,
    username: str,
    email: str = "",
    name: str = "",
    by: Any,
    role: str | None = None,
    target: Agent | Team | None = None,
    invite_link: Callable[[Any], str] | None = None,
) -> tuple[Any, str]:
    """A new person with a generated password, returned once to be shown once: only its
    hash is stored, and never in the trail. With `invite_link` they get no password but an
    e-mail with a one-time link to choose one (person_invite), and "" is returned. An admin
    gives them a first grant at once (so they are the admin's to manage); a superuser may
    leave that for later."""
    username = username.strip()
    if not username:
        raise ServiceError(USERNAME_REQUIRED)
    if invite_link is not None and not email.strip():
        raise ServiceError(INVITE_NEEDS_EMAIL)
    user_model = get_user_model()
    try:
        user_model.username_validator(username)
    except ValidationError as exc:
        raise ServiceError(" ".join(exc.messages)) from exc
    if target is None and not by.is_superuser:
        raise ServiceError(FIRST_GRANT_REQUIRED)
    if target is not None:
        if role not in roles.GRANT_CAPABILITIES:
            raise ServiceError(UNKNOWN_ROLE.format(role=role))
        if not may_grant_on(by, target):
            raise PermissionDenied(NOT_YOURS_TO_GRANT.format(target=target.slug))
    password = secrets.token_urlsafe(15)
    first, _, last = name.strip().partition(" ")
    taken = ServiceError(USERNAME_TAKEN.format(username=username))
    with transaction.atomic(durable=True):
        if user_model.objects.filter(username__iexact=username).exists():
            raise taken
        try:
            with transaction.atomic():
                person = user_model.objects.create_user(
                    username=username,
                    email=email.strip(),
                    password=password,
                    first_name=first,
                    last_name=last.strip(),
                )
        except IntegrityError as exc:  # the same name, submitted twice at once
            raise taken from exc
        audit_record(
            verb=Verb.PERSON_CREATED,
            actor=Actor.of(by),
            subject_type="user",
            subject_id=person.pk,
            agent=target if isinstance(target, Agent) else None,
            team=target if isinstance(target, Team) else None,
            payload={"user": username, "email": person.email, "name": name.strip()},
        )
        if target is not None and role is not None:
            roles.role_grant(user=person, role=role, target=target, granted_by=by)
        if invite_link is not None:
            person.set_unusable_password()
            person.save(update_fields=["password"])
            _invite(person, by, invite_link)
            password = ""
    return person, password


def grant_add(*, person: Any, role: str, target: Agent | Team, by: Any) -> None:
    if role not in roles.GRANT_CAPABILITIES:
        raise ServiceError(UNKNOWN_ROLE.format(role=role))
    _not_self(person, by)
    if not may_grant_on(by, target):
        raise PermissionDenied(NOT_YOURS_TO_GRANT.format(target=target.slug))
    with transaction.atomic(durable=True):
        _lock(person)
        if role in roles.held_roles(person, target):
            raise ServiceError(
                ALREADY_HELD.format(user=person.get_username(), role=role, target=target.slug)
            )
        roles.role_grant(user=person, role=role, target=target, granted_by=by)


def grant_revoke(*, person: Any, role: str, target: Agent | Team, by: Any, reason: str) -> None:
    reason = _reason(reason)
    if role not in roles.GRANT_CAPABILITIES:
        raise ServiceError(UNKNOWN_ROLE.format(role=role))
    _not_self(person, by)
    if not may_grant_on(by, target):
        raise PermissionDenied(NOT_YOURS_TO_GRANT.format(target=target.slug))
    with transaction.atomic(durable=True):
        _lock(person)
        if role not in roles.held_roles(person, target):
            raise ServiceError(
                NOT_HELD.format(user=person.get_username(), role=role, target=target.slug)
            )
        roles.role_revoke(user=person, role=role, target=target, revoked_by=by, reason=reason)


def _role_change_check(*, person: Any, role: str, by: Any) -> None:
    """Who may give or take away a model-wide role: a known role, not one's own, and only
    a role whose every permission the admin holds."""
    if role not in MODEL_WIDE_ROLES:
        raise ServiceError(UNKNOWN_ROLE.format(role=role))
    _not_self(person, by)
    if not may_assign_role(by, role):
        raise PermissionDenied(NOT_YOURS_TO_ASSIGN.format(role=role))


def role_assign(*, person: Any, role: str, by: Any) -> None:
    """Give a model-wide role (the role's group: Compliance reads everything)."""
    _role_change_check(person=person, role=role, by=by)
    with transaction.atomic(durable=True):
        _lock(person)
        group = Group.objects.get(name=role)
        if person.groups.filter(pk=group.pk).exists():
            raise ServiceError(ALREADY_IN_ROLE.format(user=person.get_username(), role=role))
        person.groups.add(group)
        audit_record(
            verb=Verb.ROLE_ASSIGNED,
            actor=Actor.of(by),
            subject_type="user",
            subject_id=person.pk,
            payload={"user": person.get_username(), "role": role},
        )


def role_remove(*, person: Any, role: str, by: Any, reason: str) -> None:
    reason = _reason(reason)
    _role_change_check(person=person, role=role, by=by)
    with transaction.atomic(durable=True):
        _lock(person)
        group = Group.objects.get(name=role)
        if not person.groups.filter(pk=group.pk).exists():
            raise ServiceError(NOT_IN_ROLE.format(user=person.get_username(), role=role))
        person.groups.remove(group)
        audit_record(
            verb=Verb.ROLE_REMOVED,
            actor=Actor.of(by),
            subject_type="user",
            subject_id=person.pk,
            payload={"user": person.get_username(), "role": role, "reason": reason},
        )


INVITE_SUBJECT = "You are invited to Baton"
INVITE_BODY = """{by} has given you access to Baton, the console where agents' actions are
supervised, as {user}.

Choose your password here (the link works once, for {days} days):

{link}

If you did not expect this, ignore this message: nothing happens until the link is used.
"""


def _invite(person: Any, by: Any, invite_link: Callable[[Any], str]) -> None:
    """Record the invitation and mail it after commit. The link carries Django's password
    reset token: it stops working once a password is set, or after PASSWORD_RESET_TIMEOUT.
    The trail records that an invitation went out and to where, never the link."""
    audit_record(
        verb=Verb.PERSON_INVITED,
        actor=Actor.of(by),
        subject_type="user",
        subject_id=person.pk,
        payload={"user": person.get_username(), "email": person.email},
    )
    body = INVITE_BODY.format(
        by=by.get_full_name() or by.get_username(),
        user=person.get_username(),
        link=invite_link(person),
        days=max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
    )
    message = EmailMessage(subject=INVITE_SUBJECT, body=body, to=[person.email])
    transaction.on_commit(lambda: message.send(fail_silently=False), robust=True)


def person_invite(*, person: Any, by: Any, invite_link: Callable[[Any], str]) -> None:
    """Send the invitation again (lost, or its link ran out), to someone who has not
    chosen a password yet."""
    if not person.email:
        raise ServiceError(INVITE_NEEDS_EMAIL)
    _not_self(person, by)
    if not _may_take_everything(by, person):
        raise PermissionDenied(HOLDS_MORE.format(user=person.get_username(), verb="invite"))
    with transaction.atomic(durable=True):
        locked = _lock(person)
        if locked.has_usable_password():
            raise ServiceError(ALREADY_SIGNED_UP.format(user=person.get_username()))
        if not locked.is_active:
            raise ServiceError(ALREADY_INACTIVE.format(user=person.get_username()))
        _invite(locked, by, invite_link)


def _end_sessions(person_id: int) -> int:
    """Delete every session signed in as the person. Sessions are keyed by a random id,
    not by person, so each live one is read; this runs once per deactivation."""
    ended = [
        session.pk
        for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator()
        if session.get_decoded().get("_auth_user_id") == str(person_id)
    ]
    Session.objects.filter(pk__in=ended).delete()
    return len(ended)


def person_deactivate(*, person: Any, by: Any, reason: str) -> int:
    """The person can no longer sign in; their sessions end and their open pages' live
    sockets close. Their grants stay on record (and in the trail). Returns the number of
    sessions ended."""
    reason = _reason(reason)
    _not_self(person, by)
    if not _may_take_everything(by, person):
        raise PermissionDenied(HOLDS_MORE.format(user=person.get_username(), verb="deactivate"))
    with transaction.atomic(durable=True):
        changed = (
            get_user_model().objects.filter(pk=person.pk, is_active=True).update(is_active=False)
        )
        if not changed:
            raise ServiceError(ALREADY_INACTIVE.format(user=person.get_username()))
        ended = _end_sessions(person.pk)
        audit_record(
            verb=Verb.PERSON_DEACTIVATED,
            actor=Actor.of(by),
            subject_type="user",
            subject_id=person.pk,
            payload={"user": person.get_username(), "reason": reason, "sessions_ended": ended},
        )
        # The consumer closes with 4401 on this message (as on a logout); its periodic
        # re-check would close it too, later.
        transaction.on_commit(
            lambda: live.say_to_user(person.pk, {"type": "live.logout"}), robust=True
        )
    person.is_active = False
    return ended


def person_reactivate(*, person: Any, by: Any, reason: str) -> None:
    """A deactivated person may sign in again, with the grants they kept. Giving all of it
    back is for someone who could take each of it away (as for deactivating)."""
    reason = _reason(reason)
    _not_self(person, by)
    if not _may_take_everything(by, person):
        raise PermissionDenied(HOLDS_MORE.format(user=person.get_username(), verb="reactivate"))
    with transaction.atomic(durable=True):
        changed = (
            get_user_model().objects.filter(pk=person.pk, is_active=False).update(is_active=True)
        )
        if not changed:
            raise ServiceError(ALREADY_ACTIVE.format(user=person.get_username()))
        audit_record(
            verb=Verb.PERSON_REACTIVATED,
            actor=Actor.of(by),
            subject_type="user",
            subject_id=person.pk,
            payload={"user": person.get_username(), "reason": reason},
        )
    person.is_active = True
