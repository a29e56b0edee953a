"""The weekly exception review of a team: everything that went wrong or was stopped in one
ISO week (Monday 00:00 UTC to the next Monday 00:00 UTC), grouped by cause, each item
linked to its decision chain in the audit trail.

What is listed, and when it counts (its time must fall in the week):
- failed run: a run of the team's agents that failed (when it finished), by error;
- failed step: a tool step that failed (when it finished), by error;
- denied: a tool step the gateway refused (when it was journaled), by the policy rule
  that denied it (or the default deny, an unknown tool, invalid arguments);
- rejected: a held action people rejected (when), by the reason the rejecter gave;
- expired: a held action nobody decided in time (when it expired), by tool and the
  approvers it waited for;
- kill switch: an engagement covering the team (its own, one of its agents', or the
  global one), by reason, from the trail's `killswitch.engaged`;
- alert: any event of the team whose verb starts with `alert.` (but `alert.resolved`),
  by verb and the alert rule's name.

A cause is the text that explains the item with its numbers (ids, amounts, steps) written
as N, so that "diverged at step 3" and "diverged at step 4" are one cause.

A bounded number of queries whatever the number of items: one per source (runs, steps,
requests, the trail).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone

from agents.models import Action, Run, Team
from approvals.models import ApprovalDecision, ApprovalRequest
from audit.chain import format_time
from audit.models import AuditEvent
from audit.verbs import Verb

BAD_WEEK = "Name a week as YYYY-Www, an ISO week such as 2026-W48."
FUTURE_WEEK = "The week {week} has not begun yet."
# The page links the week before: week 1 of year 1 has none a datetime can hold.
EARLIEST_YEAR = 1970
EARLY_WEEK = f"The review goes back to {EARLIEST_YEAR}-W01 at the earliest."
ALERT_PREFIX = "alert."
# An alert that cleared is no exception: only its firing is listed.
ALERT_NOT_LISTED = ("alert.resolved",)
CAUSE_LENGTH = 100
# The page lists this many items per cause; the download carries them all.
SHOWN_PER_CAUSE = 50

FAILED_RUN = "failed run"
FAILED_STEP = "failed step"
DENIED = "denied"
REJECTED = "rejected"
EXPIRED = "expired"
SWITCH = "kill switch"
ALERT = "alert"
KINDS = [FAILED_RUN, FAILED_STEP, DENIED, REJECTED, EXPIRED, SWITCH, ALERT]
KIND_TITLES = {
    FAILED_RUN: "Failed runs",
    FAILED_STEP: "Failed steps",
    DENIED: "Denied by policy",
    REJECTED: "Rejected by people",
    EXPIRED: "Expired undecided",
    SWITCH: "Kill-switch engagements",
    ALERT: "Alerts",
}
COLUMNS = ["week", "kind", "cause", "at", "agent", "run", "step", "tool", "detail", "link"]

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$", re.ASCII)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# --- weeks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Week:
    year: int
    number: int

    @property
    def start(self) -> datetime:
        return datetime.fromisocalendar(self.year, self.number, 1).replace(tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=7)

    @property
    def name(self) -> str:
        return f"{self.year}-W{self.number:02d}"

    @property
    def label(self) -> str:
        last = self.end - timedelta(days=1)
        return f"{self.start:%a %d %b %Y} – {last:%a %d %b %Y} (UTC)"

    @property
    def previous(self) -> Week:
        return week_of(self.start - timedelta(days=7))

    @property
    def following(self) -> Week:
        return week_of(self.end)

    def __str__(self) -> str:
        return self.name


def week_of(moment: datetime) -> Week:
    year, number, _ = moment.astimezone(UTC).isocalendar()
    return Week(year, number)


def current_week(now: datetime | None = None) -> Week:
    return week_of(now or timezone.now())


def last_complete_week(now: datetime | None = None) -> Week:
    return current_week(now).previous


def week_named(text: str, now: datetime | None = None) -> Week:
    """The ISO week `YYYY-Www`; ValueError with the reason for anything else, or for a
    week that has not begun."""
    m = _WEEK.match(text.strip())
    if m is None:
        raise ValueError(BAD_WEEK)
    try:
        week = Week(int(m[1]), int(m[2]))
        week.start  # noqa: B018 (W53 of a year with 52 weeks, W00: refused here)
    except ValueError:
        raise ValueError(BAD_WEEK) from None
    if week.year < EARLIEST_YEAR:
        raise ValueError(EARLY_WEEK)
    if week.start > (now or timezone.now()):
        raise ValueError(FUTURE_WEEK.format(week=week.name))
    return week


# --- items ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    kind: str
    cause: str
    at: datetime
    agent: str
    run_id: int | None
    step: int | None
    tool: str
    detail: str
    link: str  # the decision chain of the action or run, or the event's page

    def row(self, week: Week, base: str = "") -> dict[str, Any]:
        """The item as the download writes it (`base`: the site, for absolute links)."""
        return {
            "week": week.name,
            "kind": self.kind,
            "cause": self.cause,
            "at": format_time(self.at),
            "agent": self.agent,
            "run": self.run_id if self.run_id is not None else "",
            "step": self.step if self.step is not None else "",
            "tool": self.tool,
            "detail": self.detail,
            "link": base + self.link,
        }


@dataclass
class Group:
    cause: str
    items: list[Item] = field(default_factory=list)

    @property
    def shown(self) -> list[Item]:
        return self.items[:SHOWN_PER_CAUSE]

    @property
    def hidden(self) -> int:
        return max(len(self.items) - SHOWN_PER_CAUSE, 0)


@dataclass
class Section:
    kind: str
    title: str
    groups: list[Group]

    @property
    def count(self) -> int:
        return sum(len(g.items) for g in self.groups)


@dataclass
class Review:
    team: Team
    week: Week
    sections: list[Section]

    @property
    def items(self) -> list[Item]:
        """Every item, in the page's order: by kind, cause (most items first), time."""
        return [i for s in self.sections for g in s.groups for i in g.items]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.sections)


def cause_of(text: str) -> str:
    """The cause an explanation names: its first line, numbers as N, cut short."""
    head = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    head = _NUMBER.sub("N", head).strip()
    if len(head) > CAUSE_LENGTH:
        head = head[: CAUSE_LENGTH - 1] + "…"
    return head or "(no reason given)"


def _run_chain(run_id: int) -> str:
    return reverse("audit-run-chain", args=[run_id])


def _action_chain(run_id: int, step: int) -> str:
    return reverse("audit-action-chain", args=[run_id, step])


def _rule_cause(rule: dict[str, Any] | None, reason: str, status: str) -> str:
    if status == Action.Status.INVALID:
        return "invalid arguments"
    if not rule:
        return cause_of(reason)
    when = f" when {rule['when']}" if rule.get("when") else ""
    said = f": {rule['reason']}" if rule.get("reason") else ""
    return cause_of(f"rule {int(rule.get('index', 0)) + 1} ({rule.get('tool', '?')}{when}){said}")


def _runs(team: Team, week: Week) -> list[Item]:
    rows: Iterable[tuple[Any, ...]] = (
        Run.objects.filter(
            agent__team=team,
            status=Run.Status.FAILED,
            finished_at__gte=week.start,
            finished_at__lt=week.end,
        )
        .order_by()
        .values_list("pk", "finished_at", "error", "agent__slug")
    )
    return [
        Item(FAILED_RUN, cause_of(error), at, slug, pk, None, "", error[:300], _run_chain(pk))
        for pk, at, error, slug in rows
    ]


def _steps(team: Team, week: Week) -> list[Item]:
    """Failed tool steps (by when they finished) and refused ones (by when journaled)."""
    S = Action.Status
    failed = Q(status=S.FAILED, finished_at__gte=week.start, finished_at__lt=week.end)
    refused = Q(status__in=[S.DENIED, S.INVALID], created_at__gte=week.start) & Q(
        created_at__lt=week.end
    )
    rows: Iterable[tuple[Any, ...]] = (
        Action.objects.filter(failed | refused, run__agent__team=team, kind=Action.Kind.TOOL)
        .order_by()
        .values_list(
            "run_id",
            "seq",
            "name",
            "status",
            "error",
            "reason",
            "rule",
            "created_at",
            "finished_at",
            "run__agent__slug",
        )
    )
    out = []
    for run_id, seq, name, status, error, reason, rule, created, finished, slug in rows:
        link = _action_chain(run_id, seq)
        if status == S.FAILED:
            out.append(
                Item(
                    FAILED_STEP,
                    cause_of(error),
                    finished,
                    slug,
                    run_id,
                    seq,
                    name,
                    error[:300],
                    link,
                )
            )
        else:
            cause = _rule_cause(rule, reason, status)
            out.append(Item(DENIED, cause, created, slug, run_id, seq, name, reason[:300], link))
    return out


def _requests(team: Team, week: Week) -> list[Item]:
    AS = ApprovalRequest.Status
    rejection = ApprovalDecision.objects.filter(
        request=OuterRef("pk"), verdict=ApprovalDecision.Verdict.REJECT
    ).order_by("-created_at", "-pk")
    rows: Iterable[tuple[Any, ...]] = (
        ApprovalRequest.objects.filter(
            agent__team=team,
            status__in=[AS.REJECTED, AS.EXPIRED],
            decided_at__gte=week.start,
            decided_at__lt=week.end,
        )
        .annotate(
            comment=Subquery(rejection.values("comment")[:1]),
            rejecter=Subquery(rejection.values("user__username")[:1]),
        )
        .order_by()
        .values_list(
            "status",
            "decided_at",
            "tool",
            "run_id",
            "action__seq",
            "agent__slug",
            "comment",
            "rejecter",
            "approver_group",
            "escalated_to",
        )
    )
    out = []
    for status, at, tool, run_id, seq, slug, comment, rejecter, group, escalated in rows:
        link = _action_chain(run_id, seq)
        if status == AS.REJECTED:
            detail = f"rejected by {rejecter}: {comment}" if rejecter else "rejected"
            out.append(
                Item(
                    REJECTED,
                    cause_of(comment or ""),
                    at,
                    slug,
                    run_id,
                    seq,
                    tool,
                    detail[:300],
                    link,
                )
            )
        else:
            waited = escalated or group or "the agent's supervisors"
            cause = f"{tool}: nobody in {waited} decided in time"
            out.append(Item(EXPIRED, cause, at, slug, run_id, seq, tool, cause, link))
    return out


def _trail(team: Team, week: Week) -> list[Item]:
    """Kill-switch engagements and alerts, from the audit trail."""
    switches = Q(verb=Verb.KILLSWITCH_ENGAGED) & (
        Q(team_id=team.pk) | Q(team_id__isnull=True, agent_id__isnull=True)
    )
    alerts = Q(verb__startswith=ALERT_PREFIX, team_id=team.pk) & ~Q(verb__in=ALERT_NOT_LISTED)
    events = (
        AuditEvent.objects.filter(
            switches | alerts,
            occurred_at__gte=format_time(week.start),
            occurred_at__lt=format_time(week.end),
        )
        .order_by("seq")
        .only("seq", "body", "verb", "occurred_at", "run_id", "agent_id")
    )
    agents = dict(team.agents.values_list("pk", "slug"))
    out = []
    for e in events:
        payload = e.payload if isinstance(e.payload, dict) else {}
        slug = agents.get(e.agent_id or 0, "")
        event_link = reverse("audit-event", args=[e.seq])
        if e.verb == Verb.KILLSWITCH_ENGAGED:
            reason = str(payload.get("reason", ""))
            target = str(payload.get("target", ""))
            mode = str(payload.get("mode", ""))
            detail = f"{mode} {target}: {reason}"[:300]
            out.append(
                Item(SWITCH, cause_of(reason), e.when, slug, e.run_id, None, "", detail, event_link)
            )
            continue
        # An alert rule's name names the cause as it is (its numbers are part of it).
        name = str(payload.get("rule_name") or payload.get("name") or "").strip()
        cause = f"{e.verb}: {name}" if name else e.verb
        cause = cause if len(cause) <= CAUSE_LENGTH else cause[: CAUSE_LENGTH - 1] + "…"
        detail = str(payload.get("summary") or payload.get("message") or name)[:300]
        link = _run_chain(e.run_id) if e.run_id else event_link
        out.append(Item(ALERT, cause, e.when, slug, e.run_id, None, "", detail, link))
    return out


def review(team: Team, week: Week) -> Review:
    items = _runs(team, week) + _steps(team, week) + _requests(team, week) + _trail(team, week)
    by_kind: dict[str, dict[str, Group]] = defaultdict(dict)
    for item in sorted(items, key=lambda i: (i.at, i.run_id or 0, i.step or 0)):
        groups = by_kind[item.kind]
        groups.setdefault(item.cause, Group(item.cause)).items.append(item)
    sections = [
        Section(
            kind,
            KIND_TITLES[kind],
            sorted(by_kind[kind].values(), key=lambda g: (-len(g.items), g.cause)),
        )
        for kind in KINDS
    ]
    return Review(team, week, sections)
