"""Approver analytics for a team's leads and compliance: per person who decided the team's
held actions, over a window (agents.kpis.Window), what they decided and how.

Definitions (the page states them too):
- a decision counts in the window it was given in; it belongs to the team of the agent
  whose action it decided;
- time to decide: from the moment the request was put before the approver to their
  decision. That moment is when the action was held, or later when it was escalated to
  another approver group, or when someone approved it with edited arguments (from then
  on, what is decided is the edited action): the latest of these before the decision;
- approval rate: approvals over decisions (approvals and rejections);
- rubber stamp: an approval, arguments unedited, given in less than
  BATON_RUBBER_STAMP_SECONDS (3 s: exactly 3 s does not count) of an action whose amount
  is at least BATON_RUBBER_STAMP_AMOUNT (1000: exactly 1000 counts). The amount is the
  first of BATON_AMOUNT_FIELDS holding a number in the arguments the approver approved
  (the agent's, or the latest edit before them); an action with none has no amount and is
  never a rubber stamp;
- edit: an approval with arguments that differ from those in force;
- override: a decision that set aside another person's approval of the same request: a
  rejection after it (one rejection ends a request), or an approval with edited arguments
  (only approvals of the arguments that run count: the earlier ones no longer do). The
  person whose approval was set aside counts it as `overridden`.

Every figure comes from three queries whatever the number of decisions: the decisions of
the requests decided in the window (all of each request's decisions, since an override
or an edit depends on what came before), their escalations from the audit trail, and
nothing else. Percentiles as agents.kpis computes them (percentile_cont).

Sits with the KPI pages above the approvals app in the layers (pyproject.toml).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.urls import reverse

from agents.kpis import Window, percentile_cont, show
from agents.models import Team
from approvals.models import ApprovalDecision
from audit.models import AuditEvent
from audit.verbs import Verb

APPROVE, REJECT = ApprovalDecision.Verdict.APPROVE, ApprovalDecision.Verdict.REJECT
# The lists under the table (fast approvals of large amounts, overrides) show this many.
LISTED = 100


def rubber_stamp_seconds() -> float:
    return float(settings.BATON_RUBBER_STAMP_SECONDS)


def rubber_stamp_amount() -> Decimal:
    return Decimal(str(settings.BATON_RUBBER_STAMP_AMOUNT))


def amount_of(args: Any) -> Decimal | None:
    """The amount an action's arguments carry: the first of BATON_AMOUNT_FIELDS holding a
    number (or a numeric string, as some tools send money)."""
    if not isinstance(args, dict):
        return None
    for name in settings.BATON_AMOUNT_FIELDS:
        value = args.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float | str):
            try:
                amount = Decimal(str(value))
            except InvalidOperation:
                continue
            if amount.is_finite():
                return amount
    return None


@dataclass
class Decided:
    """One decision as the figures read it."""

    pk: int
    request_id: int
    user_id: int
    person: str
    verdict: str
    at: datetime
    wait: float  # seconds to decide
    amount: Decimal | None
    edited: bool = False
    rubber_stamp: bool = False
    override: bool = False
    overridden: bool = False
    agent: str = ""
    tool: str = ""
    run_id: int = 0
    step: int = 0

    @property
    def chain(self) -> str:
        """The decision chain of the action decided (audit.views.action_chain)."""
        return reverse("audit-action-chain", args=[self.run_id, self.step])


@dataclass
class Approver:
    user_id: int
    person: str
    decisions: int = 0
    approvals: int = 0
    rejections: int = 0
    rubber_stamps: int = 0
    edits: int = 0
    overrides: int = 0
    overridden: int = 0
    waits: list[float] = field(default_factory=list)

    @property
    def approval_rate(self) -> float | None:
        return self.approvals / self.decisions if self.decisions else None

    @property
    def decide_p50(self) -> float | None:
        return percentile_cont(self.waits, 0.5)

    @property
    def decide_p95(self) -> float | None:
        return percentile_cont(self.waits, 0.95)

    @property
    def shown(self) -> dict[str, str]:
        """The figures as the page writes them."""
        return {
            "rate": show(self.approval_rate, "share"),
            "p50": show(self.decide_p50, "seconds"),
            "p95": show(self.decide_p95, "seconds"),
        }

    def add(self, d: Decided) -> None:
        self.decisions += 1
        self.approvals += d.verdict == APPROVE
        self.rejections += d.verdict == REJECT
        self.rubber_stamps += d.rubber_stamp
        self.edits += d.edited
        self.overrides += d.override
        self.overridden += d.overridden
        self.waits.append(d.wait)


@dataclass
class Stats:
    team: Team
    window: Window
    approvers: list[Approver]
    total: Approver
    rubber_stamps: list[Decided]
    overrides: list[Decided]
    seconds: float
    amount: Decimal
    fields: list[str]


def _person(row: dict[str, Any]) -> str:
    full = f"{row['user__first_name']} {row['user__last_name']}".strip()
    return f"{full} ({row['user__username']})" if full else row["user__username"]


def decisions(team: Team, window: Window) -> list[Decided]:
    """The decisions given in the window on the team's held actions, each with what the
    definitions above make of it, oldest first."""
    in_window = ApprovalDecision.objects.filter(
        request__agent__team=team, created_at__gte=window.start, created_at__lt=window.end
    )
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in ApprovalDecision.objects.filter(request__in=in_window.values("request_id"))
        .order_by("request_id", "created_at", "pk")
        .values(
            "pk",
            "request_id",
            "user_id",
            "user__username",
            "user__first_name",
            "user__last_name",
            "verdict",
            "edited_args",
            "created_at",
            "request__created_at",
            "request__tool",
            "request__run_id",
            "request__action__seq",
            "request__action__requested_args",
            "request__agent__slug",
        )
    ]
    escalated = _escalations({r["request_id"] for r in rows})
    by_request: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_request[row["request_id"]].append(row)
    seconds, threshold = rubber_stamp_seconds(), rubber_stamp_amount()
    out: list[Decided] = []
    for request_id, group in by_request.items():
        out += _walk(request_id, group, escalated.get(request_id, []), seconds, threshold)
    out = [d for d in out if window.start <= d.at < window.end]
    out.sort(key=lambda d: (d.at, d.pk))
    return out


def _escalations(request_ids: set[int]) -> dict[int, list[datetime]]:
    """When each request was escalated, from the trail (the request keeps only its last
    escalation's group, not when)."""
    if not request_ids:
        return {}
    found: dict[int, list[datetime]] = defaultdict(list)
    events = AuditEvent.objects.filter(
        verb=Verb.APPROVAL_ESCALATED,
        subject_type="approval",
        subject_id__in=[str(pk) for pk in request_ids],
    ).values_list("subject_id", "occurred_at")
    for subject_id, occurred_at in events:
        found[int(subject_id)].append(datetime.fromisoformat(occurred_at))
    return found


def _walk(
    request_id: int,
    rows: list[dict[str, Any]],
    escalations: list[datetime],
    seconds: float,
    threshold: Decimal,
) -> list[Decided]:
    """One request's decisions in the order they were given."""
    first = rows[0]
    args = first["request__action__requested_args"]
    put_before = first["request__created_at"]
    approvals: list[Decided] = []  # approvals so far, any arguments
    out: list[Decided] = []
    for row in rows:
        at = row["created_at"]
        start = max([put_before, *(e for e in escalations if e <= at)])
        edited_args = row["edited_args"]
        edited = row["verdict"] == APPROVE and edited_args is not None and edited_args != args
        decided_args = edited_args if edited else args
        d = Decided(
            pk=row["pk"],
            request_id=request_id,
            user_id=row["user_id"],
            person=_person(row),
            verdict=row["verdict"],
            at=at,
            wait=max((at - start).total_seconds(), 0.0),
            amount=amount_of(decided_args),
            edited=edited,
            agent=row["request__agent__slug"],
            tool=row["request__tool"],
            run_id=row["request__run_id"],
            step=row["request__action__seq"],
        )
        if d.verdict == APPROVE and not edited and d.amount is not None:
            d.rubber_stamp = d.wait < seconds and d.amount >= threshold
        if d.verdict == REJECT or edited:
            set_aside = [a for a in approvals if a.user_id != d.user_id and not a.overridden]
            for a in set_aside:
                a.overridden = True
            d.override = bool(set_aside)
        if edited:
            args, put_before = edited_args, at
        if d.verdict == APPROVE:
            approvals.append(d)
        out.append(d)
    return out


def approver_stats(team: Team, window: Window) -> Stats:
    decided = decisions(team, window)
    people: dict[int, Approver] = {}
    total = Approver(0, "the team")
    for d in decided:
        people.setdefault(d.user_id, Approver(d.user_id, d.person)).add(d)
        total.add(d)
    return Stats(
        team=team,
        window=window,
        approvers=sorted(people.values(), key=lambda a: (-a.decisions, a.person)),
        total=total,
        rubber_stamps=[d for d in decided if d.rubber_stamp],
        overrides=[d for d in decided if d.override],
        seconds=rubber_stamp_seconds(),
        amount=rubber_stamp_amount(),
        fields=list(settings.BATON_AMOUNT_FIELDS),
    )
