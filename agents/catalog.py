"""Teams and agents as admins see them: create, edit, archive, and the reads of the
admin agent page (its versions, keys and configuration history).

Who may: a team is created by a superuser or a holder of the model-wide Agent admin role
(`agents.add_team`), who then administers it; an agent by whoever administers its team;
an agent is changed by whoever administers it, and moved only by someone who administers
both teams. Every change is one durable transaction that locks the row, compares it with
what the caller saw (a race loses with a Conflict, nothing changed) and records the
change with its before and after. Bad input is an `Invalid` naming its field.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from agents import roles
from agents.models import Agent, AgentVersion, ApiKey, Team
from agents.people import people_for_admin
from agents.permissions import agents_for_user, team_can, teams_for_user, user_can
from agents.services import Conflict, ServiceError, storable
from audit.models import AuditEvent
from audit.services import Actor, audit_record
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class Invalid(ServiceError):
    """Bad input for one field of a form: shown next to that field; nothing changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


SLUG_INVALID = "A slug is 1 to 50 lowercase letters, digits and hyphens, not starting with one."
SLUG_TAKEN = "The slug {slug!r} is taken."
SLUG_FIXED_AGENT = "The slug is fixed once the agent has a version: it names it in the trail."
SLUG_FIXED_TEAM = "The slug is fixed once the team has agents."
NAME_REQUIRED = "A name is required (at most 100 characters)."
DESCRIPTION_TOO_LONG = "A description is at most 2000 characters."
# The agent's decision target (Agent.decision_sla_minutes, read by the KPI pages).
SLA_MAX_MINUTES = 7 * 24 * 60
SLA_RANGE = "Decisions are due within a whole number of minutes, from 1 to 10080 (a week)."
KIND_UNKNOWN = "An agent is hosted or remote."
KIND_FIXED = "The kind is fixed once the agent has a version: create a new agent instead."
OWNER_UNKNOWN = "No active person {owner!r} among the people you manage."
REASON_REQUIRED = "Say why: a reason is required."
FOUR_EYES_STAYS = "Only a superuser turns off the second admin's approval of publishing."
TEAM_IS_ARCHIVED = "Team {team} is archived: it takes no agents."
TEAM_HAS_AGENTS = "Team {team} still has agents: archive or move them first."
TEAM_ALREADY_ARCHIVED = "Team {team} is already archived."
AGENT_IS_ARCHIVED = "{agent} is archived: restore it before changing it."
AGENT_ALREADY_ARCHIVED = "{agent} is already archived."
AGENT_NOT_ARCHIVED = "{agent} is not archived."
CHANGED = "{what} changed since you saw it: look again before changing it."
NOT_TEAM_CREATOR = "Only a superuser or an agent admin creates teams."
NOT_TEAM_ADMIN = "You may not administer team {team}."
NOT_AGENT_ADMIN = "You may not administer {agent}."
MOVE_NEEDS_BOTH = "Moving an agent takes administering both its team and the new one."

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,49}")
NAME_MAX, DESCRIPTION_MAX = 100, 2000

# The configuration history of an agent: events whose verb starts with one of these (the
# verbs of later configuration changes join by their prefix).
CONFIG_PREFIXES = ("agent.", "version.", "policy.", "rollout.", "apikey.", "grant.", "publish.")


# --- who may ------------------------------------------------------------------------------


def may_create_team(user: Any) -> bool:
    return bool(
        user.is_authenticated
        and user.is_active
        and (user.is_superuser or user.has_perm("agents.add_team"))
    )


def may_administer_something(user: Any) -> bool:
    """Whether the Teams pages offer the user anything to change."""
    return may_create_team(user) or teams_for_user(user, "administer").exists()


def _team_admin(user: Any, team: Team) -> None:
    if not team_can(user, "administer", team):
        raise PermissionDenied(NOT_TEAM_ADMIN.format(team=team.slug))


def _agent_admin(user: Any, agent: Agent) -> None:
    if not user_can(user, "administer", agent):
        raise PermissionDenied(NOT_AGENT_ADMIN.format(agent=agent.name))


# --- validation ---------------------------------------------------------------------------


def _slug(slug: str) -> str:
    slug = slug.strip()
    if not SLUG.fullmatch(slug):
        raise Invalid("slug", SLUG_INVALID)
    return slug


def _name(name: str) -> str:
    name = storable(name, "name").strip()
    if not name or len(name) > NAME_MAX:
        raise Invalid("name", NAME_REQUIRED)
    return name


def _sla(minutes: int | str) -> int:
    text = str(minutes).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise Invalid("decision_sla_minutes", SLA_RANGE)
    if not 1 <= int(text) <= SLA_MAX_MINUTES:
        raise Invalid("decision_sla_minutes", SLA_RANGE)
    return int(text)


def _description(description: str) -> str:
    description = storable(description, "description").strip()
    if len(description) > DESCRIPTION_MAX:
        raise Invalid("description", DESCRIPTION_TOO_LONG)
    return description


def _kind(kind: str) -> str:
    if kind not in Agent.Kind.values:
        raise Invalid("kind", KIND_UNKNOWN)
    return kind


def _owner(user: Any, username: str) -> Any:
    """The owner named, if it is the user or one of the people they manage."""
    username = username.strip()
    if not username:
        return None
    if username == user.get_username():
        return user
    owner = people_for_admin(user).filter(username=username, is_active=True).first()
    if owner is None:
        raise Invalid("owner", OWNER_UNKNOWN.format(owner=username))
    return owner


def _reason(reason: str) -> str:
    reason = storable(reason, "reason").strip()
    if not reason:
        raise Invalid("reason", REASON_REQUIRED)
    return reason


def _slug_free(model: type[Team] | type[Agent], slug: str) -> None:
    if model.objects.filter(slug=slug).exists():
        raise Invalid("slug", SLUG_TAKEN.format(slug=slug))


def _team_state(team: Team) -> dict[str, Any]:
    """A team as the trail records it, before and after a change."""
    return {
        "slug": team.slug,
        "name": team.name,
        "archived_at": team.archived_at,
        "publish_needs_second_admin": team.publish_needs_second_admin,
    }


def _agent_state(agent: Agent) -> dict[str, Any]:
    owner = get_user_model().objects.filter(pk=agent.owner_id).first() if agent.owner_id else None
    return {
        "slug": agent.slug,
        "name": agent.name,
        "description": agent.description,
        "team": Team.objects.get(pk=agent.team_id).slug,
        "owner": owner.get_username() if owner else None,
        "kind": agent.kind,
        "archived_at": agent.archived_at,
        "decision_sla_minutes": agent.decision_sla_minutes,
    }


def _open_team(team_id: int) -> Team:
    """The team's row locked: an archive and an agent joining it queue."""
    team = Team.objects.select_for_update(no_key=True).get(pk=team_id)
    if team.archived_at is not None:
        raise Invalid("team", TEAM_IS_ARCHIVED.format(team=team.name))
    return team


# --- teams --------------------------------------------------------------------------------


def team_create(*, user: User, slug: str, name: str) -> Team:
    """A new team; its creator (unless a superuser) is made its Agent admin, so they can
    fill it."""
    if not may_create_team(user):
        raise PermissionDenied(NOT_TEAM_CREATOR)
    slug, name = _slug(slug), _name(name)
    with transaction.atomic(durable=True):
        _slug_free(Team, slug)
        try:
            with transaction.atomic():
                team = Team.objects.create(slug=slug, name=name)
        except IntegrityError:  # the same slug, submitted twice at once
            raise Invalid("slug", SLUG_TAKEN.format(slug=slug)) from None
        audit_record(
            verb=Verb.TEAM_CREATED,
            actor=Actor.of(user),
            subject_type="team",
            subject_id=team.pk,
            team=team,
            payload={"team": slug, "before": None, "after": _team_state(team)},
        )
        if not user.is_superuser:
            roles.role_grant(user=user, role=roles.AGENT_ADMIN, target=team, granted_by=user)
    return team


def team_update(
    *, team: Team, user: User, slug: str, name: str, four_eyes: bool | None = None
) -> Team:
    """Rename a team; with `four_eyes`, turn on (or off) the second admin every publish of
    its agents then needs (approvals.publish). Turning it off is for superusers only: an
    admin does not switch off the check on their own publishing."""
    _team_admin(user, team)
    slug, name = _slug(slug), _name(name)
    with transaction.atomic(durable=True):
        current = Team.objects.select_for_update(no_key=True).get(pk=team.pk)
        before = _team_state(current)
        if before != _team_state(team):
            raise Conflict(CHANGED.format(what=f"Team {team.name}"))
        if current.archived_at is not None:
            raise Conflict(TEAM_IS_ARCHIVED.format(team=current.name))
        if slug != current.slug:
            # Its agents' events and switches name the team by its slug.
            if current.agents.exists():
                raise Invalid("slug", SLUG_FIXED_TEAM)
            _slug_free(Team, slug)
        current.slug, current.name = slug, name
        if four_eyes is not None and four_eyes != current.publish_needs_second_admin:
            if not four_eyes and not user.is_superuser:
                raise Invalid("four_eyes", FOUR_EYES_STAYS)
            current.publish_needs_second_admin = four_eyes
        after = _team_state(current)
        if after == before:
            return current
        current.save(update_fields=["slug", "name", "publish_needs_second_admin"])
        audit_record(
            verb=Verb.TEAM_UPDATED,
            actor=Actor.of(user),
            subject_type="team",
            subject_id=current.pk,
            team=current,
            payload={"team": slug, "before": before, "after": after},
        )
    return current


def team_archive(*, team: Team, user: User, reason: str) -> None:
    """Archive an empty team (its agents archived or moved): it takes no new agents."""
    _team_admin(user, team)
    reason = _reason(reason)
    with transaction.atomic(durable=True):
        current = Team.objects.select_for_update(no_key=True).get(pk=team.pk)
        if current.archived_at is not None:
            raise Conflict(TEAM_ALREADY_ARCHIVED.format(team=current.name))
        if current.agents.filter(archived_at__isnull=True).exists():
            raise Conflict(TEAM_HAS_AGENTS.format(team=current.name))
        before = _team_state(current)
        current.archived_at = timezone.now()
        current.save(update_fields=["archived_at"])
        audit_record(
            verb=Verb.TEAM_ARCHIVED,
            actor=Actor.of(user),
            subject_type="team",
            subject_id=current.pk,
            team=current,
            payload={
                "team": current.slug,
                "reason": reason,
                "before": before,
                "after": _team_state(current),
            },
        )
    team.archived_at = current.archived_at


# --- agents -------------------------------------------------------------------------------


def agent_create(
    *,
    user: User,
    team: Team,
    slug: str,
    name: str,
    kind: str = Agent.Kind.HOSTED,
    description: str = "",
    owner: str = "",
) -> Agent:
    """A new agent in a team the user administers, with no version yet (a version, hosted
    program or remote, is the next step). `owner` is a username."""
    _team_admin(user, team)
    slug, name = _slug(slug), _name(name)
    kind, description = _kind(kind), _description(description)
    owner_user = _owner(user, owner)
    with transaction.atomic(durable=True):
        _open_team(team.pk)
        _slug_free(Agent, slug)
        try:
            with transaction.atomic():
                agent = Agent.objects.create(
                    slug=slug,
                    name=name,
                    team=team,
                    kind=kind,
                    description=description,
                    owner=owner_user,
                )
        except IntegrityError:
            raise Invalid("slug", SLUG_TAKEN.format(slug=slug)) from None
        audit_record(
            verb=Verb.AGENT_CREATED,
            actor=Actor.of(user),
            subject_type="agent",
            subject_id=agent.pk,
            agent=agent,
            payload={"slug": slug, "name": name, "before": None, "after": _agent_state(agent)},
        )
    return agent


def agent_update(
    *,
    agent: Agent,
    user: User,
    team: Team,
    slug: str,
    name: str,
    kind: str,
    description: str = "",
    owner: str = "",
    decision_sla_minutes: int | str | None = None,
) -> Agent:
    """Change an agent's slug, name, team, owner, description, kind or decision target
    (None: unchanged). The slug and the kind are fixed once it has a version; a move
    needs administering both teams."""
    _agent_admin(user, agent)
    moving = team.pk != agent.team_id
    if moving and not (
        team_can(user, "administer", agent.team) and team_can(user, "administer", team)
    ):
        raise PermissionDenied(MOVE_NEEDS_BOTH)
    slug, name = _slug(slug), _name(name)
    kind, description = _kind(kind), _description(description)
    owner_user = _owner(user, owner)
    sla = agent.decision_sla_minutes if decision_sla_minutes is None else _sla(decision_sla_minutes)
    seen = _agent_state(agent)
    with transaction.atomic(durable=True):
        current = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        before = _agent_state(current)
        if before != seen:
            raise Conflict(CHANGED.format(what=agent.name))
        if current.archived_at is not None:
            raise Conflict(AGENT_IS_ARCHIVED.format(agent=current.name))
        versioned = AgentVersion.objects.filter(agent=current).exists()
        if slug != current.slug:
            if versioned:
                raise Invalid("slug", SLUG_FIXED_AGENT)
            _slug_free(Agent, slug)
        if kind != current.kind and versioned:
            raise Invalid("kind", KIND_FIXED)
        if moving:
            _open_team(team.pk)
        current.slug, current.name, current.kind = slug, name, kind
        current.description, current.team, current.owner = description, team, owner_user
        current.decision_sla_minutes = sla
        after = _agent_state(current)
        if after == before:
            return current
        current.save(
            update_fields=[
                "slug",
                "name",
                "kind",
                "description",
                "team",
                "owner",
                "decision_sla_minutes",
            ]
        )
        audit_record(
            verb=Verb.AGENT_UPDATED,
            actor=Actor.of(user),
            subject_type="agent",
            subject_id=current.pk,
            agent=current,
            payload={"agent": current.slug, "before": before, "after": after},
        )
    return current


def _archive_flip(*, agent: Agent, user: User, reason: str, archive: bool) -> None:
    _agent_admin(user, agent)
    reason = _reason(reason)
    with transaction.atomic(durable=True):
        current = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        if archive and current.archived_at is not None:
            raise Conflict(AGENT_ALREADY_ARCHIVED.format(agent=current.name))
        if not archive and current.archived_at is None:
            raise Conflict(AGENT_NOT_ARCHIVED.format(agent=current.name))
        if not archive:
            _open_team(current.team_id)
        before = _agent_state(current)
        current.archived_at = timezone.now() if archive else None
        current.save(update_fields=["archived_at"])
        audit_record(
            verb=Verb.AGENT_ARCHIVED if archive else Verb.AGENT_UNARCHIVED,
            actor=Actor.of(user),
            subject_type="agent",
            subject_id=current.pk,
            agent=current,
            payload={
                "agent": current.slug,
                "reason": reason,
                "before": before,
                "after": _agent_state(current),
            },
        )
    agent.archived_at = current.archived_at


def agent_archive(*, agent: Agent, user: User, reason: str) -> None:
    """Archive the agent: it starts no new runs (agents.services.run_start_check), its API
    keys answer 401, it leaves the overview. Runs under way finish; its history stays."""
    _archive_flip(agent=agent, user=user, reason=reason, archive=True)


def agent_unarchive(*, agent: Agent, user: User, reason: str) -> None:
    _archive_flip(agent=agent, user=user, reason=reason, archive=False)


# --- reads --------------------------------------------------------------------------------


def teams_visible(user: Any) -> QuerySet[Team]:
    """The teams the user may see: as a whole, or through one of their agents."""
    return Team.objects.filter(
        Q(pk__in=teams_for_user(user, "view").values("pk"))
        | Q(pk__in=agents_for_user(user).values("team_id"))
    ).order_by("archived_at", "name")


def team_agents(user: Any, team: Team) -> list[Agent]:
    return list(agents_for_user(user).filter(team=team).select_related("owner").order_by("name"))


def teams_administered(user: Any) -> QuerySet[Team]:
    """Open teams the user may put agents in."""
    return teams_for_user(user, "administer").filter(archived_at__isnull=True).order_by("name")


def key_state(key: ApiKey, now: Any) -> str:
    if key.revoked_at is not None:
        return "revoked"
    return "expired" if key.expires_at <= now else "live"


def agent_keys(agent: Agent) -> list[ApiKey]:
    now = timezone.now()
    keys = list(agent.api_keys.select_related("created_by").order_by("-created_at"))
    for key in keys:
        key.state = key_state(key, now)
    return keys


def agent_history(agent: Agent, limit: int = 200) -> list[AuditEvent]:
    """The agent's configuration changes, newest first: created, edited, archived,
    versions, publishing, rollout, keys and grants on it."""
    config = Q()
    for prefix in CONFIG_PREFIXES:
        config |= Q(verb__startswith=prefix)
    return list(AuditEvent.objects.filter(config, agent_id=agent.pk).order_by("-seq")[:limit])
