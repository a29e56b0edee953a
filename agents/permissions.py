"""Who may do what to which agent: the one helper every view and service asks.

Roles (groups) say what kind of work a person does; grants say where: a supervisor of
team Claims holds `supervise_team` on that team through django-guardian, and so sees and
decides only Claims agents. Compliance holds the model-wide view permissions.
Capabilities: view, supervise, administer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.http import Http404
from guardian.core import ObjectPermissionChecker
from guardian.shortcuts import get_objects_for_user

from agents.models import Agent, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    AnyUser = AbstractBaseUser | AnonymousUser

CAPABILITIES = ("view", "supervise", "administer")


@dataclass(frozen=True)
class Ground:
    """One reason a person holds a capability: superuser, a model-wide permission (from a
    role's group or given directly; `what` names it), or a grant on an agent or a team
    (`what` is its slug; the grant may be the person's own or one of their groups')."""

    kind: str
    what: str = ""


NOT_ALLOWED = "You may not {capability} this agent."


def user_can(user: Any, capability: str, agent: Agent) -> bool:
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")
    if not user.is_authenticated or not user.is_active:
        return False
    # Remembered on the user object, which lives for one request (or one task): a view
    # and the service it calls ask the same question, and each answer costs queries.
    memo: dict[tuple[str, int], bool] = user.__dict__.setdefault("_baton_can", {})
    key = (capability, agent.pk)
    if key not in memo:
        memo[key] = _user_can(user, capability, agent)
    return memo[key]


def _user_can(user: Any, capability: str, agent: Agent) -> bool:
    return next(grounds(user, capability, agent), None) is not None


def grounds(user: Any, capability: str, agent: Agent) -> Iterator[Ground]:
    """Why the user may `capability` the agent: every ground in turn, lazily, so asking
    whether (the first one) costs no more than the answer needs. `user_can` and the
    people pages' "why" both read this one rule."""
    if user.is_superuser:
        yield Ground("superuser")
    if user.has_perm(f"agents.{capability}_agent"):
        yield Ground("model-wide", f"agents.{capability}_agent")
    checker = _checker(user)
    if checker.has_perm(f"{capability}_agent", agent):
        yield Ground("agent", agent.slug)
    if checker.has_perm(f"{capability}_team", agent.team):
        yield Ground("team", agent.team.slug)


def team_grounds(user: Any, capability: str, team: Team) -> Iterator[Ground]:
    """Why the user may `capability` the whole team (the rule of `team_can`)."""
    if user.is_superuser:
        yield Ground("superuser")
    if user.has_perm(f"agents.{capability}_team"):
        yield Ground("model-wide", f"agents.{capability}_team")
    if _checker(user).has_perm(f"{capability}_team", team):
        yield Ground("team", team.slug)


def agents_for_user(user: Any, capability: str = "view") -> QuerySet[Agent]:
    agents = Agent.objects.select_related("team", "live_version")
    if not user.is_authenticated or not user.is_active:
        return agents.none()
    if user.is_superuser or user.has_perm(f"agents.{capability}_agent"):
        return agents
    return agents.filter(pk__in=_granted_agents(user, capability))


# The compiled subquery of each person's grants, by person and capability (and the content
# types it names): its SQL depends on nothing else — it reads the grants, the person's
# groups and their permissions when it runs — so a process compiles it once, not once a
# request (guardian's querysets took a supervisor's page ~5 ms to build). Bounded: emptied
# when full.
_GRANTED: dict[tuple[Any, ...], RawSQL] = {}
GRANTED_KEPT = 4096


def _granted_agents(user: Any, capability: str) -> RawSQL:
    """The agents a person's grants reach (on them, or on their teams), as a subquery
    compiled once (_GRANTED): guardian's nested subqueries took Django longer to compile
    than Postgres took to run them, and a page at fleet size puts them in a dozen
    queries. The SQL reads the grants when it runs, so a grant made or taken back later —
    in the same request or any after — counts at once."""
    said = (
        user.pk,
        capability,
        ContentType.objects.get_for_model(Agent).pk,
        ContentType.objects.get_for_model(Team).pk,
    )
    found = _GRANTED.get(said)
    if found is None:
        by_agent = get_objects_for_user(
            user,
            f"agents.{capability}_agent",
            Agent,
            accept_global_perms=False,
            with_superuser=False,
        ).values("pk")
        by_team = get_objects_for_user(
            user, f"agents.{capability}_team", Team, accept_global_perms=False, with_superuser=False
        ).values("pk")
        # A subquery: no order (Agent.Meta has one, which a nested queryset would drop).
        granted = Agent.objects.filter(Q(pk__in=by_agent) | Q(team_id__in=by_team)).order_by()
        sql, params = granted.values("pk").query.sql_with_params()
        # Django compiled it from querysets, with its parameters apart: nothing raw in it.
        found = RawSQL(sql, params)  # noqa: S611
        if len(_GRANTED) >= GRANTED_KEPT:
            _GRANTED.clear()
        _GRANTED[said] = found
    return found


def agent_ids_for_user(user: Any, capability: str) -> QuerySet[Agent, Any]:
    """The ids of the agents `agents_for_user` gives, as a subquery that reads everything
    the answer depends on when it runs — the person's grants, groups and model-wide
    permissions — so that its SQL depends only on who the person is (id, active,
    superuser) and can be compiled once per person and run many times
    (approvals.selectors.decide_check). Model-wide permissions as Django's ModelBackend
    reads them: the person's own or one of their groups'."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")
    agents = Agent.objects.order_by()
    if not user.is_authenticated or not user.is_active:
        return agents.none().values("pk")
    if user.is_superuser:
        return agents.values("pk")
    model_wide = Permission.objects.filter(
        Q(user=user.pk) | Q(group__user=user.pk),
        content_type__app_label="agents",
        codename=f"{capability}_agent",
    )
    by_agent = get_objects_for_user(
        user, f"agents.{capability}_agent", Agent, accept_global_perms=False, with_superuser=False
    ).values("pk")
    by_team = get_objects_for_user(
        user, f"agents.{capability}_team", Team, accept_global_perms=False, with_superuser=False
    ).values("pk")
    return agents.filter(
        Q(Exists(model_wide)) | Q(pk__in=by_agent) | Q(team_id__in=by_team)
    ).values("pk")


def agent_for_user(user: Any, slug: str, capability: str = "view") -> Agent:
    """The agent, if the user may see it (404 otherwise: unseen agents do not exist for
    them), and may do `capability` to it (403 otherwise)."""
    agent = agents_for_user(user, "view").filter(slug=slug).first()
    if agent is None:
        raise Http404("No such agent.")
    if capability != "view" and not user_can(user, capability, agent):
        raise PermissionDenied(NOT_ALLOWED.format(capability=capability))
    return agent


def team_can(user: Any, capability: str, team: Team) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return next(team_grounds(user, capability, team), None) is not None


# Who reads a team's approver analytics and exception review (agents.approver_stats,
# agents.review): figures about named people are for those who lead them and those who
# audit them, not for everyone who may see the team.
NOT_A_REVIEWER = (
    "Only the team's supervisors and compliance see its approver analytics and reviews."
)


def reads_everything(user: Any) -> bool:
    """Compliance (and superusers): the model-wide right to read the whole audit trail."""
    return bool(
        user.is_authenticated
        and user.is_active
        and (user.is_superuser or user.has_perm("audit.view_auditevent"))
    )


def may_review_team(user: Any, team: Team) -> bool:
    """The team's supervisors (a grant on the whole team, not on one of its agents) and
    compliance. Not its agent admins, nor a supervisor of another team."""
    return reads_everything(user) or team_can(user, "supervise", team)


def reviewable_team_ids(user: Any) -> set[int] | None:
    """The ids of the teams `may_review_team` opens to the person (one query at most);
    None means every team."""
    if reads_everything(user):
        return None
    return set(teams_for_user(user, "supervise").values_list("pk", flat=True))


def _checker(user: Any) -> ObjectPermissionChecker:
    # One checker per user object: it loads all of a person's grants on an object at the
    # first question, so asking view and then supervise costs no more queries.
    return cast(
        ObjectPermissionChecker,
        user.__dict__.setdefault("_baton_checker", ObjectPermissionChecker(user)),
    )


def grants_prefetch(user: Any, agents: Sequence[Agent], teams: Sequence[Team] = ()) -> None:
    """Load a person's grants on these agents, on their teams and on `teams` up front, in
    a few queries whatever their number, so a page that asks `user_can` and `team_can`
    about every agent (or switch) it lists costs no query per agent."""
    if not (agents or teams) or not user.is_authenticated or not user.is_active:
        return
    if user.is_superuser:
        return
    checker = _checker(user)
    all_teams = list({t.pk: t for t in [*(a.team for a in agents), *teams]}.values())
    # guardian takes any sequence of one model's objects; its stubs say only QuerySet.
    if agents:
        checker.prefetch_perms(cast(Any, list(agents)))
    checker.prefetch_perms(cast(Any, all_teams))


def team_for_user(user: Any, slug: str, capability: str = "view") -> Team:
    """The team, if the user may see it (through it or one of its agents), and may do
    `capability` to the whole team (403 otherwise)."""
    team = Team.objects.filter(slug=slug).first()
    visible = team is not None and (
        team_can(user, "view", team) or agents_for_user(user).filter(team=team).exists()
    )
    if team is None or not visible:
        raise Http404("No such team.")
    if capability != "view" and not team_can(user, capability, team):
        raise PermissionDenied(f"You may not {capability} this team.")
    return team


def users_who_can(capability: str, agent: Agent) -> QuerySet[Any]:
    """Active people who may `capability` the agent, through a grant on it or its team or
    a model-wide permission (superusers excluded: they are not on call)."""
    from django.contrib.auth import get_user_model
    from guardian.shortcuts import get_users_with_perms

    # With attach_perms off (the default) guardian returns a queryset of users.
    on_agent = cast(
        QuerySet[Any],
        get_users_with_perms(
            agent, only_with_perms_in=[f"{capability}_agent"], with_group_users=True
        ),
    )
    on_team = cast(
        QuerySet[Any],
        get_users_with_perms(
            agent.team, only_with_perms_in=[f"{capability}_team"], with_group_users=True
        ),
    )
    user_model = get_user_model()
    model_wide = Q(
        user_permissions__codename=f"{capability}_agent",
        user_permissions__content_type__app_label="agents",
    ) | Q(
        groups__permissions__codename=f"{capability}_agent",
        groups__permissions__content_type__app_label="agents",
    )
    return user_model.objects.filter(
        Q(pk__in=on_agent.values("pk")) | Q(pk__in=on_team.values("pk")) | model_wide,
        is_active=True,
    ).distinct()


def teams_for_user(user: Any, capability: str) -> QuerySet[Team]:
    """The teams the user may `capability` as a whole."""
    if not user.is_authenticated or not user.is_active:
        return Team.objects.none()
    if user.is_superuser or user.has_perm(f"agents.{capability}_team"):
        return Team.objects.all()
    return cast(
        QuerySet[Team],
        get_objects_for_user(
            user,
            f"agents.{capability}_team",
            Team,
            accept_global_perms=False,
            with_superuser=False,
        ),
    )


def may_grant_on(user: Any, target: Agent | Team) -> bool:
    """Whether the user may give or take away grants on this agent or team: those who
    administer it, and nobody else (an admin of one team never grants on another)."""
    if isinstance(target, Agent):
        return user_can(user, "administer", target)
    return team_can(user, "administer", target)


def may_manage_people(user: Any) -> bool:
    """Whether the People pages are open to the user: they administer something."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return (
        teams_for_user(user, "administer").exists() or agents_for_user(user, "administer").exists()
    )
