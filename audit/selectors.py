"""Reads of the audit trail, filtered to what the person may see (DESIGN sections 7, 9).

Compliance (the model-wide `audit.view_auditevent`) reads everything. A supervisor reads
the events of the teams they hold a grant on and of the agents they hold one on. Pages
are keyset-paginated on `seq`, and every filter is turned into something an index of
AuditEvent serves, so a page costs the same at ten million rows as at ten.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from django.db.models import Q, QuerySet
from django.http import Http404
from guardian.shortcuts import get_objects_for_user

from agents.models import Action, Agent, AgentVersion, Run, Team
from agents.permissions import agents_for_user
from audit import jsonsafe
from audit.chain import format_time
from audit.models import AuditEvent
from audit.verbs import Verb

PAGE_SIZE = 50
# A text search has no index: it reads events newest first until a page is full, and a
# rare word would read the whole trail. So one request reads stretches of this many events
# for at most this long, then offers to go on (the page says how far back it looked).
SEARCH_WINDOW = 1_500
SEARCH_BUDGET = 0.009  # seconds: with the last stretch and the page, p95 < 20 ms
# An event's time is read a moment before it takes its seq (in the same transaction,
# waiting at most for the chain head's lock), so time order and seq order can disagree
# by that wait and by clock skew between servers, never by more than this. Time bounds
# become seq bounds this much wider, and the exact time test still applies.
CLOCK_SLACK = timedelta(minutes=15)
# Up to this many grants, a supervisor's page is one index scan per grant, merged.
MAX_BRANCHES = 8
RUN_INPUT_VERBS = (Verb.RUN_QUEUED, Verb.RUN_STARTED)
# What a person means by a decision (the filter form's choices), as the verb that records it.
DECISIONS = {
    "allowed": Verb.ACTION_ALLOWED,
    "denied": Verb.ACTION_DENIED,
    "shadowed": Verb.ACTION_SHADOWED,
    "held": Verb.ACTION_HELD,
    "approved": Verb.APPROVAL_APPROVED,
    "rejected": Verb.APPROVAL_REJECTED,
    "expired": Verb.APPROVAL_EXPIRED,
    "failed": Verb.ACTION_FAILED,
}
DECISION_STATUS = {
    Verb.APPROVAL_APPROVED: "approved",
    Verb.APPROVAL_REJECTED: "rejected",
    Verb.APPROVAL_EXPIRED: "expired",
    Verb.APPROVAL_CANCELLED: "cancelled",
}


# --- who sees what --------------------------------------------------------------------
# The one rule for who sees which event (DESIGN sections 8, 9). The audit pages, the live
# stream (which groups a socket joins and which events it is sent), the catch-up endpoint
# and the export all read through Scope.condition(); the kill-switch banners follow the
# same rule through Scope.sees_switch().

# Events about nothing narrower than everything that every signed-in person is shown: the
# global kill switch (its banner is on every page).
EVERYONE_SEES = Q(agent_id__isnull=True, team_id__isnull=True, subject_type="killswitch")
_NOTHING = Q(seq__in=[])


@dataclass(frozen=True)
class Scope:
    """The events a person may see: everything (compliance), or the global switches, every
    event of the teams they hold a grant on and of the agents they hold one on, and the
    events about a whole team (agent_id empty: its switch, its grants) of the teams whose
    agents they see."""

    everything: bool = False
    teams: tuple[int, ...] = ()
    agents: tuple[int, ...] = ()
    team_level: tuple[int, ...] = ()  # teams seen through one of their agents only
    signed_in: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.everything or self.signed_in)

    def sees_team(self, team_id: int) -> bool:
        return self.everything or team_id in self.teams or team_id in self.team_level

    def sees_agent(self, agent_id: int, team_id: int) -> bool:
        return self.everything or agent_id in self.agents or team_id in self.teams

    def sees_switch(self, agent_id: int | None, team_id: int | None) -> bool:
        """Whether the person is shown a kill switch of this scope (banner and events)."""
        if agent_id is not None:
            return self.sees_agent(agent_id, team_id or 0)
        if team_id is not None:
            return self.sees_team(team_id)
        return not self.nothing

    def condition(self) -> Q:
        """What the person may see, as one condition on AuditEvent."""
        if self.everything:
            return Q()
        branches = self.branches()
        if not branches:
            return _NOTHING
        condition = branches[0]
        for branch in branches[1:]:
            condition |= branch
        return condition

    def sees(self, event: AuditEvent) -> bool:
        """Whether the person may see this event: condition() applied to one event in
        memory, read from the very same branches (the live stream reads each new event
        once per process and sorts it to the sockets by this)."""
        if self.everything:
            return True
        return any(_holds(branch, event) for branch in self.branches())

    def branches(self) -> list[Q]:
        """One condition per grant; their union is what the person may see."""
        if self.everything or self.nothing:
            return []
        return (
            [Q(team_id=t) for t in self.teams]
            + [Q(agent_id=a) for a in self.agents]
            + [Q(team_id=t, agent_id__isnull=True) for t in self.team_level]
            + [EVERYONE_SEES]
        )


def _holds(condition: Q, event: AuditEvent) -> bool:
    """A condition of the rule above evaluated on one event: equality, `isnull` and `in`
    on its own columns, AND and OR (all the rule uses; anything else is refused, not
    guessed)."""
    results = []
    for child in condition.children:
        if isinstance(child, Q):
            results.append(_holds(child, event))
            continue
        lookup, value = cast("tuple[str, Any]", child)
        column, _, op = lookup.partition("__")
        actual = getattr(event, column)
        if op == "":
            results.append(actual == value)
        elif op == "isnull":
            results.append((actual is None) == bool(value))
        elif op == "in":
            results.append(actual in value)
        else:
            raise ValueError(f"the visibility rule uses a lookup sees() cannot read: {lookup}")
    held = all(results) if condition.connector == Q.AND else any(results)
    return not held if condition.negated else held


def audit_scope(user: Any) -> Scope:
    if not user.is_authenticated or not user.is_active:
        return Scope()
    # Remembered for the request: the navigation and the page both ask.
    memo: Scope | None = user.__dict__.get("_baton_audit_scope")
    if memo is not None:
        return memo
    if user.is_superuser or user.has_perm("audit.view_auditevent"):
        scope = Scope(everything=True, signed_in=True)
    else:
        granted = get_objects_for_user(
            user, "agents.view_team", Team, accept_global_perms=False, with_superuser=False
        ).values_list("pk", flat=True)
        team_ids = tuple(sorted(granted))
        # Agents seen through a team grant are covered by it (their events carry the team).
        seen = agents_for_user(user).exclude(team_id__in=team_ids).values_list("pk", "team_id")
        scope = Scope(
            teams=team_ids,
            agents=tuple(sorted(a for a, _ in seen)),
            team_level=tuple(sorted({t for _, t in seen})),
            signed_in=True,
        )
    user.__dict__["_baton_audit_scope"] = scope
    return scope


def can_browse(user: Any) -> bool:
    """Whether the person may open the audit trail (the navigation link, and 403): anyone
    signed in, who reads there exactly what the rule above lets them see."""
    return not audit_scope(user).nothing


def events_for_user(user: Any) -> QuerySet[AuditEvent]:
    scope = audit_scope(user)
    events = AuditEvent.objects.order_by("-seq")
    if scope.nothing:
        return events.none()
    return events.filter(scope.condition())


def visible_agents(user: Any) -> QuerySet[Agent]:
    """Agents the person may filter the trail by."""
    if audit_scope(user).everything:
        return Agent.objects.all()
    return agents_for_user(user)


def visible_teams(user: Any) -> QuerySet[Team]:
    """Teams the person may filter the trail by: theirs, and those of agents they see."""
    scope = audit_scope(user)
    if scope.everything:
        return Team.objects.all()
    return Team.objects.filter(pk__in=scope.teams + scope.team_level)


# --- filters --------------------------------------------------------------------------


def _seq_range(since: datetime | None, until: datetime | None) -> Q:
    """Seq bounds that hold every event in [since, until), found with one step each down
    the occurred_at index. Narrowing by seq is what lets a time range share the
    seq-ordered indexes with the other filters instead of sorting the whole range."""
    bounds = Q()
    if since is not None:
        # The last event clearly before the range: all events in it come after.
        before = (
            AuditEvent.objects.filter(occurred_at__lt=format_time(since - CLOCK_SLACK))
            .order_by("-occurred_at")
            .values_list("seq", flat=True)
            .first()
        )
        if before is not None:
            bounds &= Q(seq__gt=before)
    if until is not None:
        after = (
            AuditEvent.objects.filter(occurred_at__gte=format_time(until + CLOCK_SLACK))
            .order_by("occurred_at")
            .values_list("seq", flat=True)
            .first()
        )
        if after is not None:
            bounds &= Q(seq__lt=after)
    return bounds


def filter_q(cleaned: dict[str, Any]) -> Q:
    """The cleaned AuditFilter as one condition (without the page cursor)."""
    q = Q()
    if cleaned.get("agent") is not None:
        q &= Q(agent_id=cleaned["agent"].pk)
    if cleaned.get("team") is not None:
        q &= Q(team_id=cleaned["team"].pk)
    if cleaned.get("actor"):
        q &= Q(actor_label=cleaned["actor"])
    if cleaned.get("verb"):
        q &= Q(verb=cleaned["verb"])
    if cleaned.get("decision"):
        q &= Q(verb=DECISIONS[cleaned["decision"]])
    if cleaned.get("run"):
        q &= Q(run_id=cleaned["run"])
    if cleaned.get("q"):
        # The payload is only in the body; a contained-text search reads rows in seq
        # order until a page is full, so it is fastest combined with another filter.
        # Searched as it is written inside the JSON: quotes and backslashes escaped.
        q &= Q(body__icontains=json.dumps(cleaned["q"], ensure_ascii=False)[1:-1])
    since, until = cleaned.get("since"), cleaned.get("until")
    if since is not None:
        q &= Q(occurred_at__gte=format_time(since))
    if until is not None:
        q &= Q(occurred_at__lt=format_time(until))
    if since is not None or until is not None:
        q &= _seq_range(since, until)
    return q


def audit_query(user: Any, cleaned: dict[str, Any]) -> QuerySet[AuditEvent]:
    """The events the person may see that match the cleaned AuditFilter, newest first.
    The `before` cursor is not applied: that is the page's business (audit_page)."""
    return events_for_user(user).filter(filter_q(cleaned))


# --- pages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    event: AuditEvent
    agent: str
    team: str
    summary: str


@dataclass(frozen=True)
class AuditPage:
    rows: list[Row]
    older: int | None  # the `before` cursor of the next older page, if there is one
    newest: bool  # whether this is the first page
    searched_from: int | None = None  # a text search stopped here, short of a full page


def audit_page(user: Any, cleaned: dict[str, Any], size: int = PAGE_SIZE) -> AuditPage:
    """One page, newest first: WHERE seq < before ORDER BY seq DESC LIMIT size + 1. A text
    search reads stretches of SEARCH_WINDOW events, newest first, until the page is full
    or SEARCH_BUDGET is spent; the page then says how far back it looked."""
    before = cleaned.get("before")
    condition = filter_q(cleaned)
    if not cleaned.get("q"):
        events = _fetch(user, cleaned, condition & _below(before), size + 1)
        return _page(events, size, before)
    top = before or latest_seq() + 1
    deadline = time.monotonic() + SEARCH_BUDGET
    events = []
    while top > 1 and len(events) <= size:
        floor = max(1, top - SEARCH_WINDOW)
        window = condition & Q(seq__lt=top, seq__gte=floor)
        events += _fetch(user, cleaned, window, size + 1 - len(events))
        top = floor
        if time.monotonic() > deadline:
            break
    if len(events) <= size and top > 1:
        # Time ran out before the page filled: older events are still unsearched.
        return AuditPage(rows=rows_for(events), older=top, newest=not before, searched_from=top)
    return _page(events, size, before)


def _below(before: int | None) -> Q:
    return Q(seq__lt=before) if before else Q()


def latest_seq() -> int:
    """The newest event's sequence number (0 on an empty trail)."""
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def _page(events: list[AuditEvent], size: int, before: int | None) -> AuditPage:
    shown = events[:size]
    older = shown[-1].seq if len(events) > size else None
    return AuditPage(rows=rows_for(shown), older=older, newest=not before)


def _fetch(user: Any, cleaned: dict[str, Any], condition: Q, limit: int) -> list[AuditEvent]:
    scope = audit_scope(user)
    keyed = cleaned.get("agent") is not None or cleaned.get("run")
    branches = scope.branches()
    if scope.everything or keyed or len(branches) <= 1 or len(branches) > MAX_BRANCHES:
        return list(events_for_user(user).filter(condition)[:limit])
    # "team IN (a, b) ORDER BY seq DESC" reads every row of both teams to sort them;
    # one scan of (team_id, -seq) per grant, merged, reads only a page of each.
    pages = [AuditEvent.objects.filter(condition & b).order_by("-seq")[:limit] for b in branches]
    merged = heapq.merge(*pages, key=lambda e: -e.seq)
    return list(_unique(merged, limit))


def _unique(events: Iterable[AuditEvent], limit: int) -> Iterable[AuditEvent]:
    seen: set[int] = set()
    for event in events:
        if event.seq not in seen:
            seen.add(event.seq)
            yield event
            if len(seen) == limit:
                return


def rows_for(events: list[AuditEvent]) -> list[Row]:
    # Events keep ids, not foreign keys (the trail outlives what it names); labels are
    # looked up for the page, and an id stands in for anything since deleted.
    agents = dict(
        Agent.objects.filter(pk__in={e.agent_id for e in events if e.agent_id}).values_list(
            "pk", "slug"
        )
    )
    teams = dict(
        Team.objects.filter(pk__in={e.team_id for e in events if e.team_id}).values_list(
            "pk", "slug"
        )
    )
    return [
        Row(
            event=e,
            agent=_label(agents, e.agent_id),
            team=_label(teams, e.team_id),
            summary=summarize(e.payload),
        )
        for e in events
    ]


def _label(labels: dict[int, str], pk: int | None) -> str:
    if pk is None:
        return ""
    return labels.get(pk, f"#{pk}")


SUMMARY_KEYS = ("tool", "verdict", "comment", "reason", "error", "why", "input", "target")
# Said by the subject and the verb already.
SUMMARY_SKIP = {"seq", "status"}


def summarize(payload: dict[str, Any], width: int = 120) -> str:
    """A line saying what an event is about: its most telling payload fields first."""
    payload = jsonsafe.shown(payload)  # bounded: the trail may hold values too big to summarise
    keys = [k for k in SUMMARY_KEYS if payload.get(k) not in (None, "", {})]
    keys += [k for k in payload if k not in SUMMARY_KEYS and k not in SUMMARY_SKIP]
    parts = [f"{k}: {_short(payload[k])}" for k in keys[:4]]
    text = " · ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_short(v) for v in value)
    return str(value)


# --- one event ------------------------------------------------------------------------


def event_for_user(user: Any, seq: int) -> AuditEvent:
    event = events_for_user(user).filter(seq=seq).first()
    if event is None:
        raise Http404("No such audit event.")
    return event


def step_of(event: AuditEvent) -> int | None:
    """The step of its run an action or approval event is about, if any."""
    if event.run_id is None:
        return None
    if event.subject_type == "action":
        return _step_number(event.subject_id)
    if event.subject_type != "approval":
        return None
    requested = (
        AuditEvent.objects.filter(
            run_id=event.run_id, verb=Verb.APPROVAL_REQUESTED, subject_id=event.subject_id
        )
        .values_list("seq", flat=True)
        .first()
    )
    if requested is None:
        return None
    # A request is opened in the transaction that holds the action, right after it.
    held = (
        AuditEvent.objects.filter(run_id=event.run_id, seq__lt=requested, subject_type="action")
        .order_by("-seq")
        .values_list("subject_id", flat=True)
        .first()
    )
    return _step_number(held) if held else None


def _step_number(subject_id: str) -> int | None:
    _, _, step = subject_id.partition("/")
    return int(step) if step.isdigit() else None


# --- the decision chain ---------------------------------------------------------------


@dataclass
class Step:
    """One step of a run: a model call or a tool call, with every event about it."""

    number: int
    events: list[AuditEvent] = field(default_factory=list)
    output: Any = None  # a model call's answer
    output_in_trail: bool = False  # from the model.called event, not the journal

    @property
    def kind(self) -> str:
        return "model" if any(e.verb == Verb.MODEL_CALLED for e in self.events) else "tool"

    @property
    def name(self) -> str:
        for e in self.events:
            name = e.payload.get("tool") or e.payload.get("model")
            if name:
                return str(name)
        return ""

    @property
    def status(self) -> str:
        """Where the step ended, as far as the trail tells: its last action status, or
        the decision on it if nothing happened to it after that."""
        status = ""
        for e in self.events:
            status = DECISION_STATUS.get(e.verb) or str(e.payload.get("status") or status)
        return status


@dataclass(frozen=True)
class Entry:
    """One line of the timeline: a run event, or a step with its events."""

    event: AuditEvent | None = None
    step: Step | None = None


@dataclass(frozen=True)
class DecisionChain:
    run_id: int
    step: int | None  # the one action shown, or None for the whole run
    agent: str
    team: str
    inputs: list[AuditEvent]
    timeline: list[Entry]
    outcome: AuditEvent | None  # run.succeeded or run.failed, for the whole run
    output: Any = None  # the run's output
    output_in_trail: bool = False
    # The policy version every decision of the run was taken under (its number), and
    # whether the run was one of a canary's.
    version: int | None = None
    canary: bool = False


def decision_chain(user: Any, run_id: int, *, step: int | None = None) -> DecisionChain:
    """Everything the trail holds about one run (or one action of it), in the order it
    happened: the input, each model call and tool call with the rule that matched, who
    approved or rejected it and why, and the result. 404 if the person sees none of it."""
    events = list(events_for_user(user).filter(run_id=run_id).order_by("seq"))
    if not events:
        raise Http404("No such run in the audit trail.")
    steps: dict[int, Step] = {}
    approvals: dict[str, int] = {}  # approval request id -> step
    last_step: int | None = None
    timeline: list[Entry] = []
    for e in events:
        number = _step_for(e, approvals, last_step)
        if number is None:
            timeline.append(Entry(event=e))
            continue
        if e.subject_type == "action":
            last_step = number
        if number not in steps:
            steps[number] = Step(number)
            timeline.append(Entry(step=steps[number]))
        steps[number].events.append(e)
    if step is not None:
        if step not in steps:
            raise Http404("No such action in this run.")
        timeline = [Entry(step=steps[step])]
    shown = [x.step for x in timeline if x.step is not None and x.step.kind == "model"]
    _attach_model_outputs(run_id, shown)
    rows = rows_for(events[:1])
    finals = [e for e in events if e.verb in (Verb.RUN_SUCCEEDED, Verb.RUN_FAILED)]
    outcome = finals[-1] if finals and step is None else None
    if outcome is not None:  # shown once, under Result
        timeline = [x for x in timeline if x.event is None or x.event.seq != outcome.seq]
    return DecisionChain(
        run_id=run_id,
        step=step,
        agent=rows[0].agent,
        team=rows[0].team,
        inputs=[e for e in events if e.verb in RUN_INPUT_VERBS and "input" in e.payload],
        timeline=timeline,
        outcome=outcome,
        output_in_trail=outcome is not None and "output" in outcome.payload,
        output=_run_output(run_id, outcome),
        **_policy_version(events),
    )


def _policy_version(events: list[AuditEvent]) -> dict[str, Any]:
    """The version the run started on, named by its queued event (the version's id, which
    stays: versions are never deleted); a run keeps its version to the end."""
    queued = next((e for e in events if e.verb == Verb.RUN_QUEUED), None)
    if queued is None or not isinstance(queued.payload.get("version"), int):
        return {}
    number = (
        AgentVersion.objects.filter(pk=queued.payload["version"])
        .values_list("number", flat=True)
        .first()
    )
    return {"version": number, "canary": bool(queued.payload.get("canary"))}


def _run_output(run_id: int, outcome: AuditEvent | None) -> Any:
    """The run's output from its final event; for runs that ended before outputs were
    recorded there, from the run itself (the page says which)."""
    if outcome is None:
        return None
    if "output" in outcome.payload:
        return outcome.payload["output"]
    return Run.objects.filter(pk=run_id).values_list("output", flat=True).first()


def _step_for(e: AuditEvent, approvals: dict[str, int], last_step: int | None) -> int | None:
    if e.subject_type == "action":
        return _step_number(e.subject_id)
    if e.subject_type != "approval":
        return None
    if e.verb == Verb.APPROVAL_REQUESTED and last_step is not None:
        # Opened in the same transaction as the held action, so right after its event.
        approvals[e.subject_id] = last_step
    return approvals.get(e.subject_id)


def _attach_model_outputs(run_id: int, steps: list[Step]) -> None:
    """A model's answer is in its model.called event; for events written before answers
    were recorded there, it is shown from the run's journal, marked as such."""
    for s in steps:
        for e in s.events:
            if e.verb == Verb.MODEL_CALLED and "output" in e.payload:
                s.output, s.output_in_trail = e.payload["output"], True
    steps = [s for s in steps if not s.output_in_trail]
    if not steps:
        return
    outputs = dict(
        Action.objects.filter(
            run_id=run_id, seq__in=[s.number for s in steps], kind=Action.Kind.MODEL
        ).values_list("seq", "result")
    )
    for s in steps:
        s.output = outputs.get(s.number)
