"""Reads of approval requests, filtered to what the person may see and decide."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    ExpressionWrapper,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from agents.models import Action, Agent, Team
from agents.permissions import agent_ids_for_user, agents_for_user, user_can, users_who_can
from approvals.models import ApprovalDecision, ApprovalRequest

RISK_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}

ALREADY_DECIDED = "already decided: {status} by {who}"
SELF_APPROVAL = "you launched this run, so someone else must decide it"
AUTHOR_APPROVAL = "you authored the policy in force, so someone else must decide it"
ALREADY_APPROVED_BY_YOU = "you already approved this request; it needs another approver"
NOT_YOURS = "you may not decide this agent's actions"


def decidable_by(user: Any) -> Q:
    """Who may decide a request: the one rule (DESIGN section 9), as a condition on
    requests. The queue's decide controls, the badge, the decide check in the service and
    the notification recipients all ask it, through the functions below.

    A person may decide a request that is pending, whose run they did not launch, whose
    policy they did not author and whose current arguments they have not decided yet, if
    they supervise its agent (a grant on the agent or its team) and belong to the rule's
    approver group when it names one, or if it has escalated to a group they belong to."""
    if not user.is_authenticated or not user.is_active:
        return Q(pk__in=[])
    # Everything below is read when the condition runs, not when it is built (the
    # person's grants, model-wide permissions and groups are subqueries): its SQL depends
    # only on who the person is, so `decide_check` compiles it once per person.
    groups = Group.objects.filter(user=user.pk).values("name")
    supervises = Q(agent__in=agent_ids_for_user(user, "supervise")) & (
        Q(approver_group="") | Q(approver_group__in=groups)
    )
    escalated = Q(escalated_to__in=groups)
    decided = ApprovalDecision.objects.filter(
        request=OuterRef("pk"), user=user.pk, args_hash=OuterRef("args_hash")
    )
    return (
        Q(status=ApprovalRequest.Status.PENDING)
        & (supervises | escalated)
        & ~Q(launched_by=user.pk)
        & ~Q(policy_author=user.pk)
        & ~Q(Exists(decided))
    )


# A request id no request has: the place of the real one in a compiled check's parameters.
_PLACEHOLDER = -7710


@functools.lru_cache(maxsize=512)
def _compiled_check(
    alias: str, user_id: int, active: bool, superuser: bool, content_types: tuple[int, ...]
) -> tuple[str, tuple[Any, ...], int] | None:
    """The decide check of one person, compiled: SQL, parameters and where the request id
    goes in them; None when the rule lets the person decide nothing at all. The grants'
    content types are compiled in, so they are part of the key."""
    user = get_user_model()(pk=user_id, is_active=active, is_superuser=superuser)
    approved = (
        ApprovalDecision.objects.filter(
            request=OuterRef("pk"),
            verdict=ApprovalDecision.Verdict.APPROVE,
            args_hash=OuterRef("args_hash"),
        )
        .order_by()
        .values("request")
        .annotate(n=Count("pk"))
        .values("n")
    )
    check = (
        ApprovalRequest.objects.using(alias)
        .filter(decidable_by(user), pk=_PLACEHOLDER)
        .annotate(approved=Coalesce(Subquery(approved), 0))
        .values_list("approved")
        .order_by()
    )
    try:
        sql, params = check.query.get_compiler(using=alias).as_sql()
    except EmptyResultSet:
        return None
    places = [i for i, p in enumerate(params) if p == _PLACEHOLDER]
    assert len(places) == 1, "the request id is the check's only parameter of its value"
    return sql, tuple(params), places[0]


def decide_check(user: Any, request_id: int, using: str = "default") -> int | None:
    """The decide rule for one request, as one statement: how many approvals its current
    arguments have already if the person may decide it, None if they may not. Compiled
    once per person (the ORM's building and compiling of the rule costs more than running
    it); everything it depends on is read when it runs."""
    statement = decide_check_sql(user, request_id, using)
    if statement is None:
        return None
    with connections[using].cursor() as cursor:
        cursor.execute(*statement)
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def decide_check_sql(
    user: Any, request_id: int, using: str = "default"
) -> tuple[str, list[Any]] | None:
    """`decide_check`'s statement and parameters, for a caller that sends it with others."""
    if not user.is_authenticated:
        return None
    kinds = ContentType.objects.db_manager(using).get_for_models(Agent, Team)
    compiled = _compiled_check(
        using,
        user.pk,
        bool(user.is_active),
        bool(user.is_superuser),
        tuple(kind.pk for kind in kinds.values()),
    )
    if compiled is None:
        return None
    sql, params, place = compiled
    bound = list(params)
    bound[place] = request_id
    return sql, bound


def may_decide(user: Any, request: ApprovalRequest) -> bool:
    """The rule above for one request, read from the database as it stands (inside the
    caller's transaction, so an edit being decided is judged by its new rule)."""
    return decide_check(user, request.pk) is not None


def refusal(user: Any, request: ApprovalRequest) -> str:
    """Why the rule says no, in words, for a person it says no to: it names the rule's
    first unmet condition, it does not decide anything itself."""
    if request.status != ApprovalRequest.Status.PENDING:
        last = request.decisions.select_related("user").last()
        who = last.user.get_username() if last else "the system"
        return ALREADY_DECIDED.format(status=request.status, who=who)
    if user.pk == request.launched_by_id:
        return SELF_APPROVAL
    if user.pk == request.policy_author_id:
        return AUTHOR_APPROVAL
    if request.decisions.filter(user=user.pk, args_hash=request.args_hash).exists():
        return ALREADY_APPROVED_BY_YOU
    return NOT_YOURS


def _group_names(user: Any) -> list[str]:
    return list(user.groups.values_list("name", flat=True)) if user.is_authenticated else []


def approvals_for_user(user: Any) -> QuerySet[ApprovalRequest]:
    visible = Q(agent__in=agents_for_user(user, "view").values("pk"))
    groups = _group_names(user)
    if groups:
        visible |= Q(escalated_to__in=groups)
    return ApprovalRequest.objects.filter(visible).select_related(
        "agent__team", "version", "run", "action"
    )


def agent_known(user: Any, slug: str) -> bool:
    """Whether the queue may be filtered by this agent: one the person sees."""
    return (
        agents_for_user(user).filter(slug=slug).exists()
        or approvals_for_user(user).filter(agent__slug=slug).exists()
    )


def team_known(user: Any, slug: str) -> bool:
    return (
        agents_for_user(user).filter(team__slug=slug).exists()
        or approvals_for_user(user).filter(agent__team__slug=slug).exists()
    )


def decidable_count(user: Any) -> int:
    """Pending requests the person may decide: the navigation badge."""
    return ApprovalRequest.objects.filter(decidable_by(user)).count()


def deciders(request: ApprovalRequest) -> list[Any]:
    """The people who may decide the request, by the same rule: everyone who could (the
    agent's supervisors, the rule's and the escalation's groups), kept if it says so."""
    user_model = get_user_model()
    candidates = Q(pk__in=users_who_can("supervise", request.agent).values("pk"))
    groups = [g for g in (request.escalated_to, request.approver_group) if g]
    if groups:
        candidates |= Q(groups__name__in=groups)
    people = user_model.objects.filter(candidates, is_active=True).distinct().order_by("pk")
    return [person for person in people if may_decide(person, request)]


def request_for_user(user: Any, request_id: int) -> ApprovalRequest:
    request = (
        ApprovalRequest.objects.select_related("agent__team", "version", "run", "action")
        .filter(pk=request_id)
        .first()
    )
    if request is None or not (
        user_can(user, "view", request.agent)
        or (request.escalated_to and user.groups.filter(name=request.escalated_to).exists())
    ):
        raise Http404("No such approval request.")
    return request


def queue(
    user: Any,
    *,
    tab: str,
    agent: str = "",
    team: str = "",
    tool: str = "",
    risk: str = "",
    sort: str = "risk",
) -> QuerySet[ApprovalRequest]:
    # The rows show the agent, its team and the version, never the run or the held step:
    # joining those (31,000 runs at fleet size) before the sort cost more than the page.
    requests = (
        approvals_for_user(user).select_related(None).select_related("agent__team", "version")
    )
    if tab == "history":
        requests = requests.exclude(status=ApprovalRequest.Status.PENDING).order_by(
            "-decided_at", "-pk"
        )
    else:
        # Only approvals of the current arguments count (an edit voids the others).
        given = (
            ApprovalDecision.objects.filter(
                request=OuterRef("pk"),
                verdict=ApprovalDecision.Verdict.APPROVE,
                args_hash=OuterRef("args_hash"),
            )
            .order_by()
            .values("request")
            .annotate(n=Count("pk"))
            .values("n")
        )
        requests = requests.filter(status=ApprovalRequest.Status.PENDING).annotate(
            decidable=ExpressionWrapper(decidable_by(user), output_field=BooleanField()),
            approvals_given=Coalesce(Subquery(given), 0),
        )
        if sort == "due":
            requests = requests.order_by("due_at", "pk")
        else:
            # Highest risk first, newest first within a risk.
            rank = Case(
                *[When(risk=r, then=Value(n)) for r, n in RISK_ORDER.items()],
                default=Value(9),
                output_field=IntegerField(),
            )
            requests = requests.annotate(risk_rank=rank).order_by("risk_rank", "-created_at")
    if agent:
        requests = requests.filter(agent__slug=agent)
    if team:
        requests = requests.filter(agent__team__slug=team)
    if tool:
        requests = requests.filter(tool=tool)
    if risk:
        requests = requests.filter(risk=risk)
    return requests


@dataclass(frozen=True)
class RequestContext:
    request: ApprovalRequest
    steps: list[Action]
    rationale: str
    decisions: list[ApprovalDecision]
    approvals_given: int
    still_needed: int
    time_left: timedelta | None
    can_decide: bool
    decided_by_you: bool
    why_not: str


def request_context(user: Any, request: ApprovalRequest) -> RequestContext:
    """Everything a supervisor needs to decide in seconds (DESIGN section 5)."""
    held_seq = request.action.seq
    steps = [
        a
        for a in request.run.actions.order_by("seq")
        if a.seq < held_seq and a.kind != Action.Kind.VALUE
    ]
    rationale = next(
        (a.meta.get("rationale", "") for a in reversed(steps) if a.kind == Action.Kind.MODEL), ""
    )
    decidable = may_decide(user, request)
    return _context(
        user,
        request,
        steps=steps,
        rationale=rationale,
        can_decide=decidable,
        why_not="" if decidable else refusal(user, request),
    )


def panel_context(user: Any, request: ApprovalRequest) -> RequestContext:
    """What the decision panel shows (the answer to a decision): the request as it stands,
    its decisions and whether the person may decide it still; no steps. A decided request
    is nobody's to decide (the rule asks for a pending one), and the panel gives no reason
    for it: the rule is asked only of a pending request."""
    pending = request.status == ApprovalRequest.Status.PENDING
    decidable = pending and may_decide(user, request)
    return _context(
        user,
        request,
        steps=[],
        rationale="",
        can_decide=decidable,
        why_not=refusal(user, request) if pending and not decidable else "",
    )


def _context(
    user: Any,
    request: ApprovalRequest,
    *,
    steps: list[Action],
    rationale: str,
    can_decide: bool,
    why_not: str,
) -> RequestContext:
    decisions = list(request.decisions.select_related("user"))
    given = sum(
        1
        for d in decisions
        if d.verdict == ApprovalDecision.Verdict.APPROVE and d.args_hash == request.args_hash
    )
    time_left = request.due_at - timezone.now() if request.due_at else None
    yours = any(d.user_id == user.pk and d.args_hash == request.args_hash for d in decisions)
    return RequestContext(
        request=request,
        steps=steps,
        rationale=rationale,
        decisions=decisions,
        approvals_given=given,
        still_needed=max(request.required_approvals - given, 0),
        time_left=time_left,
        can_decide=can_decide,
        decided_by_you=yours,
        why_not=why_not,
    )
