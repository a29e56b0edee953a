"""Reads of agents and runs, already filtered to what the user may see."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db.models import (
    Count,
    Exists,
    FloatField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncMinute
from django.http import Http404
from django.utils import timezone

from agents.killswitches import targets_for
from agents.models import Action, Agent, KillSwitch, Run, ShadowDecision
from agents.permissions import agents_for_user, grants_prefetch, team_can, user_can


def runs_for_user(user: Any) -> QuerySet[Run]:
    return Run.objects.filter(agent__in=agents_for_user(user).values("pk")).select_related(
        "agent__team", "version"
    )


def run_for_user(user: Any, run_id: int) -> Run:
    run = runs_for_user(user).filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return run


def journal(run: Run) -> list[Action]:
    return list(run.actions.select_related("approval_request").order_by("seq"))


def engaged_switches() -> list[KillSwitch]:
    return list(KillSwitch.objects.filter(released_at__isnull=True).select_related("team", "agent"))


def agent_state(agent: Agent, switches: list[KillSwitch]) -> str:
    """active, paused or halted: the strongest switch covering the agent."""
    targets = targets_for(agent)
    covering = [s.mode for s in switches if s.target in targets]
    if KillSwitch.Mode.HALT in covering:
        return "halted"
    return "paused" if covering else "active"


def _runs_counted(condition: Q) -> Coalesce:
    """A card's count of its agent's runs in some statuses: counted from the index on
    (agent, status) alone, for each card; joining the cards' runs read and grouped every
    run of their history (a year of it: 175,000 rows for one page of cards)."""
    runs = (
        Run.objects.filter(condition, agent=OuterRef("pk"))
        .order_by()
        .values("agent")
        .annotate(n=Count("agent"))
        .values("n")
    )
    return Coalesce(Subquery(runs), 0)


def agent_cards(
    user: Any,
    agent_ids: set[int] | list[int] | None = None,
    switches: list[KillSwitch] | None = None,
) -> list[Any]:
    """Agents with what their cards show: state, run counts, whether the person may stop
    them. All the person may see, or only those of `agent_ids`; never an archived one
    (its team's page lists it). Ordered by team, then name (the overview's order)."""
    visible = agents_for_user(user).filter(archived_at__isnull=True)
    if agent_ids is not None:
        visible = visible.filter(pk__in=agent_ids)
    agents = list(
        visible.annotate(
            active_runs=_runs_counted(Q(status__in=Run.ACTIVE)),
            waiting_runs=_runs_counted(Q(status=Run.Status.WAITING)),
            failed_runs=_runs_counted(Q(status=Run.Status.FAILED)),
        ).order_by("team__name", "team_id", "name", "pk")
    )
    grants_prefetch(user, agents)
    switches = engaged_switches() if switches is None else switches
    pace = actions_per_minute([a.pk for a in agents])
    current = _current_runs([a.pk for a in agents])
    for agent in agents:
        agent.state = agent_state(agent, switches)
        agent.can_supervise = user_can(user, "supervise", agent)
        agent.team.can_supervise = team_can(user, "supervise", agent.team)
        agent.pace = pace.get(agent.pk, [0] * PACE_MINUTES)
        agent.current_run = current.get(agent.pk)
    return agents


PACE_MINUTES = 15


def actions_per_minute(agent_ids: list[int]) -> dict[int, list[int]]:
    """Tool actions per minute over the last PACE_MINUTES minutes, oldest first."""
    now = timezone.now().replace(second=0, microsecond=0)
    since = now - timedelta(minutes=PACE_MINUTES - 1)
    rows = (
        Action.objects.filter(
            run__agent_id__in=agent_ids, kind=Action.Kind.TOOL, created_at__gte=since
        )
        .annotate(minute=TruncMinute("created_at"))
        .values("run__agent_id", "minute")
        .annotate(n=Count("pk"))
    )
    pace: dict[int, list[int]] = {}
    for row in rows:
        slot = int((row["minute"] - since).total_seconds() // 60)
        if 0 <= slot < PACE_MINUTES:
            pace.setdefault(row["run__agent_id"], [0] * PACE_MINUTES)[slot] += row["n"]
    return pace


def _current_runs(agent_ids: list[int]) -> dict[int, Run]:
    running = Run.objects.filter(agent_id__in=agent_ids, status=Run.Status.RUNNING).order_by("-pk")
    current: dict[int, Run] = {}
    for run in running:
        current.setdefault(run.agent_id, run)
    return current


# --- the overview at fleet size: teams summed up, one page of cards -----------------------

CARDS_PAGE_SIZE = 24
ATTENTION_CARDS = 12
# A failed run asks for attention this long after it failed (the card counts them all).
ATTENTION_WINDOW = timedelta(hours=24)
OVERVIEW_STATES = ("attention", "active", "paused", "halted", "waiting", "failed")


def _switch_conditions(switches: list[KillSwitch]) -> tuple[Q, Q]:
    """Conditions on agents, from the engaged switches (agent_state's rule in SQL): a halt
    covers it, and any switch covers it."""
    nothing = Q(pk__in=[])

    def covered(found: list[KillSwitch]) -> Q:
        if any(s.scope == KillSwitch.Scope.GLOBAL for s in found):
            return ~nothing
        teams = [s.team_id for s in found if s.scope == KillSwitch.Scope.TEAM]
        agents = [s.agent_id for s in found if s.scope == KillSwitch.Scope.AGENT]
        return Q(team_id__in=teams) | Q(pk__in=agents) if teams or agents else nothing

    halts = [s for s in switches if s.mode == KillSwitch.Mode.HALT]
    return covered(halts), covered(switches)


def _state_condition(state: str, switches: list[KillSwitch], since: Any) -> Q:
    halted, stopped = _switch_conditions(switches)
    waiting = Q(Exists(Run.objects.filter(agent=OuterRef("pk"), status=Run.Status.WAITING)))
    failed = Q(
        Exists(
            Run.objects.filter(
                agent=OuterRef("pk"), status=Run.Status.FAILED, finished_at__gte=since
            )
        )
    )
    return {
        "attention": stopped | waiting | failed,
        "active": ~stopped,
        "paused": stopped & ~halted,
        "halted": halted,
        "waiting": waiting,
        "failed": failed,
    }[state]


@dataclass
class TeamSummary:
    """One team's line on the overview: its visible agents by state, and its runs that
    wait or failed lately."""

    id: int
    slug: str
    name: str
    agents: int = 0
    paused: int = 0
    halted: int = 0
    waiting_runs: int = 0
    failed_runs: int = 0

    @property
    def active(self) -> int:
        return self.agents - self.paused - self.halted

    @property
    def needs_attention(self) -> bool:
        return bool(self.paused or self.halted or self.waiting_runs or self.failed_runs)


def team_summaries(user: Any, switches: list[KillSwitch], since: Any) -> list[TeamSummary]:
    """The teams of the agents the person sees, each summed up: two queries whatever the
    number of agents and teams."""
    visible = agents_for_user(user).filter(archived_at__isnull=True)
    halted, stopped = _switch_conditions(switches)
    rows = (
        visible.order_by()
        .values("team_id", "team__slug", "team__name")
        .annotate(
            n=Count("pk"),
            n_halted=Count("pk", filter=halted),
            n_stopped=Count("pk", filter=stopped),
        )
    )
    teams = {
        r["team_id"]: TeamSummary(
            r["team_id"],
            r["team__slug"],
            r["team__name"],
            agents=r["n"],
            paused=r["n_stopped"] - r["n_halted"],
            halted=r["n_halted"],
        )
        for r in rows
    }
    runs = (
        Run.objects.filter(agent__in=visible.values("pk"))
        .filter(Q(status=Run.Status.WAITING) | Q(status=Run.Status.FAILED, finished_at__gte=since))
        .order_by()
        .values("agent__team_id")
        # Counted by agent, not by id: the columns of run_status_finished, so Postgres
        # reads the index and not the runs.
        .annotate(
            waiting=Count("agent", filter=Q(status=Run.Status.WAITING)),
            failed=Count("agent", filter=Q(status=Run.Status.FAILED)),
        )
    )
    for r in runs:
        team = teams.get(r["agent__team_id"])
        if team is not None:
            team.waiting_runs, team.failed_runs = r["waiting"], r["failed"]
    return sorted(teams.values(), key=lambda t: (t.name, t.id))


def _cards_page(
    visible: QuerySet[Agent],
    switches: list[KillSwitch],
    since: Any,
    q: str,
    team: str,
    state: str,
    page: int,
) -> tuple[int, int, int, list[int]]:
    """One page of the agents the filter keeps: how many it keeps, the page (within
    range), the number of pages and the ids of this page's agents, in the cards' order."""
    chosen = visible
    if q:
        chosen = chosen.filter(Q(name__icontains=q) | Q(slug__icontains=q))
    if team:
        chosen = chosen.filter(team__slug=team)
    if state:
        chosen = chosen.filter(_state_condition(state, switches, since))
    total = chosen.count()
    pages = max(1, -(-total // CARDS_PAGE_SIZE))
    page = min(max(page, 1), pages)
    start = (page - 1) * CARDS_PAGE_SIZE
    page_ids = list(
        chosen.order_by("team__name", "team_id", "name", "pk").values_list("pk", flat=True)[
            start : start + CARDS_PAGE_SIZE
        ]
    )
    return total, page, pages, page_ids


def overview_card_ids(
    user: Any, *, q: str = "", team: str = "", state: str = "", page: int = 1
) -> list[int]:
    """The ids of the agents on one page of the overview's cards (the live parts of a
    page that asked for all its cards)."""
    switches = engaged_switches()
    since = timezone.now() - ATTENTION_WINDOW
    visible = agents_for_user(user).filter(archived_at__isnull=True).order_by()
    return _cards_page(visible, switches, since, q, team, state, page)[3]


def overview(
    user: Any, *, q: str = "", team: str = "", state: str = "", page: int = 1
) -> dict[str, Any]:
    """The overview at any fleet size: the person's teams summed up; the agents that need
    attention (stopped, a run waiting, a run failed lately), the first few as cards; and
    one page of cards of the agents the filter keeps (a name, a team, a state), by team.
    A bounded number of queries, whatever the number of agents (tests/console/
    test_query_counts.py)."""
    switches = engaged_switches()
    since = timezone.now() - ATTENTION_WINDOW
    teams = team_summaries(user, switches, since)
    visible = agents_for_user(user).filter(archived_at__isnull=True).order_by()
    attention_ids = list(
        visible.filter(_state_condition("attention", switches, since))
        .order_by("team__name", "team_id", "name", "pk")
        .values_list("pk", flat=True)
    )
    total, page, pages, page_ids = _cards_page(visible, switches, since, q, team, state, page)
    first_attention = attention_ids[:ATTENTION_CARDS]
    cards = {a.pk: a for a in agent_cards(user, set(page_ids) | set(first_attention), switches)}
    # Newest first by id (runs are numbered as they are created): the primary key's index
    # serves it, where ordering by created_at sorted every visible run.
    recent_runs = (
        Run.objects.filter(agent__in=visible.values("pk"))
        .select_related("agent", "version")
        .order_by("-pk")[:15]
    )
    return {
        "teams": teams,
        "agents": [cards[pk] for pk in page_ids if pk in cards],
        "attention": [cards[pk] for pk in first_attention if pk in cards],
        "attention_total": len(attention_ids),
        "total": total,
        "page": page,
        "pages": pages,
        "filtered": bool(q or team or state),
        "recent_runs": recent_runs,
        "switches": switches,
    }


RUNS_PAGE_SIZE = 50


def agent_detail(agent: Agent, *, before: int | None = None) -> dict[str, Any]:
    """The agent, its versions, and one page of its runs, newest first: a keyset page of
    the runs older than `before` (a run id), so any page costs the same."""
    switches = engaged_switches()
    agent.state = agent_state(agent, switches)
    runs = agent.runs.select_related("version").order_by("-pk")
    if before is not None:
        runs = runs.filter(pk__lt=before)
    page = list(runs[: RUNS_PAGE_SIZE + 1])
    return {
        "agent": agent,
        "versions": agent.versions.select_related("author").order_by("-number"),
        "runs": page[:RUNS_PAGE_SIZE],
        "older": page[RUNS_PAGE_SIZE - 1].pk if len(page) > RUNS_PAGE_SIZE else None,
        "paged": before is not None,
    }


def workers(user: Any) -> list[Any]:
    """Workers that beat recently or stopped lately, each with the visible runs it runs."""
    from agents.heartbeat import alive_since
    from agents.models import WorkerBeat

    running: dict[str, list[Run]] = {}
    for run in runs_for_user(user).filter(status=Run.Status.RUNNING).order_by("pk"):
        running.setdefault(run.worker, []).append(run)
    beats = list(WorkerBeat.objects.all())
    threshold = alive_since()
    for beat in beats:
        beat.alive = beat.stopped_at is None and beat.last_seen >= threshold
        beat.runs = running.get(beat.hostname, [])
    return sorted(beats, key=lambda b: (not b.alive, b.hostname))


# --- rollout: where the shadow version would have decided otherwise -----------------------


@dataclass
class ShadowDifference:
    """Steps the live version decided `live` and the shadow version would have decided
    `shadow` (policy effects): how many, and the latest few as examples."""

    live: str
    shadow: str
    count: int
    examples: list[ShadowDecision] = field(default_factory=list)


@dataclass
class ShadowComparison:
    version_id: int | None
    compared: int
    differences: list[ShadowDifference]

    @property
    def differing(self) -> int:
        return sum(d.count for d in self.differences)


def shadow_differences(
    agent: Agent, *, version_id: int | None = None, examples: int = 3
) -> ShadowComparison:
    """For an agent the caller may see (agents.permissions): the steps of live runs where
    the shadow version (the current one, or `version_id`) would have decided otherwise,
    counted by (live, shadow) effect, most frequent first, with examples (their action
    and run loaded)."""
    version_id = version_id if version_id is not None else agent.shadow_version_id
    recorded = ShadowDecision.objects.filter(agent=agent, version_id=version_id)
    pairs = recorded.order_by().values_list("action__decision", "effect").annotate(n=Count("pk"))
    compared, differences = 0, []
    for live, shadow, n in pairs:
        compared += n
        if live != shadow:
            differences.append(ShadowDifference(live, shadow, n))
    differences.sort(key=lambda d: (-d.count, d.live, d.shadow))
    for difference in differences:
        difference.examples = list(
            recorded.filter(action__decision=difference.live, effect=difference.shadow)
            .select_related("action__run")
            .order_by("-created_at", "-pk")[:examples]
        )
    return ShadowComparison(version_id, compared, differences)


# --- rollout: the canary beside the live version --------------------------------------------

# What the canary page compares, per tool step: the share of steps with each outcome.
CANARY_OUTCOMES: dict[str, Q] = {
    "allowed": Q(decision=Action.Decision.ALLOW),
    "held": Q(decision=Action.Decision.APPROVE),
    "denied": Q(status=Action.Status.DENIED),
    "rejected": Q(status=Action.Status.REJECTED),
    "errors": Q(status__in=(Action.Status.FAILED, Action.Status.UNKNOWN)),
}
# Two-sided 5 %: a difference beyond this many standard errors is called significant.
SIGNIFICANT_Z = 1.96


@dataclass
class VersionFigures:
    version_id: int | None
    runs: int
    steps: int
    counts: dict[str, int]
    cost_eur: float

    def share(self, outcome: str) -> float:
        return self.counts[outcome] / self.steps if self.steps else 0.0


@dataclass
class OutcomeDifference:
    outcome: str
    live: float
    canary: float
    z: float

    @property
    def significant(self) -> bool:
        return abs(self.z) >= SIGNIFICANT_Z


@dataclass
class CanaryComparison:
    live: VersionFigures
    canary: VersionFigures
    differences: list[OutcomeDifference]

    @property
    def significant(self) -> bool:
        return any(d.significant for d in self.differences)


def _two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    if not n1 or not n2:
        return 0.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return (k2 / n2 - k1 / n1) / se if se else 0.0


def _figures(agent: Agent, version_id: int | None, since: Any) -> VersionFigures:
    runs = Run.objects.filter(agent=agent, version_id=version_id)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    steps = Action.objects.filter(run__in=runs.values("pk"))
    tool = steps.filter(kind=Action.Kind.TOOL).aggregate(
        steps=Count("pk"), **{name: Count("pk", filter=q) for name, q in CANARY_OUTCOMES.items()}
    )
    cost = steps.filter(kind=Action.Kind.MODEL).aggregate(
        eur=Sum(Cast(KT("meta__cost_eur"), FloatField()))
    )["eur"]
    total = tool.pop("steps")
    return VersionFigures(version_id, runs.count(), total, tool, float(cost or 0))


def canary_comparison(agent: Agent) -> CanaryComparison:
    """For an agent the caller may see (agents.permissions): its canary and live versions
    side by side over the runs started since the canary's first run (the same window for
    both), per tool step: allowed, held, denied, rejected by people, errors, and the
    model cost; each share's difference with a two-proportion z (steps are counted as
    independent trials, which runs of many steps make optimistic)."""
    first = Run.objects.filter(agent=agent, version_id=agent.canary_version_id).aggregate(
        at=Min("created_at")
    )["at"]
    live = _figures(agent, agent.live_version_id, first)
    canary = _figures(agent, agent.canary_version_id, first)
    differences = [
        OutcomeDifference(
            outcome,
            live.share(outcome),
            canary.share(outcome),
            _two_proportion_z(
                live.counts[outcome], live.steps, canary.counts[outcome], canary.steps
            ),
        )
        for outcome in CANARY_OUTCOMES
    ]
    return CanaryComparison(live, canary, differences)
