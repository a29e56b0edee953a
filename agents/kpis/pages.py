"""What the KPI pages show: an agent's figures beside its versions' (and a canary beside the
live version), the fleet's by team and agent, each figure as a line with its trend, and
the runs' sparklines drawn as SVG."""

from __future__ import annotations

from typing import Any, TypedDict

from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from agents.kpis.grouped import figures_summed
from agents.kpis.rolled import kept_as_for
from agents.kpis.windows import Figures, Pair, Window, _fill_buckets
from agents.models import Agent, AgentVersion, Run
from agents.permissions import agents_for_user


def agent_page(agent: Agent, window: Window) -> dict[str, Any]:
    """An agent's KPIs (for an agent the caller may see: agents.permissions), its
    versions' beside them, and during a canary the canary beside the live version."""
    scope = Q(agent_id=agent.pk)
    # A run's version is one of its agent's.
    by_version, by_agent = figures_summed(
        Run.objects.filter(scope),
        "version",
        "agent",
        lambda _: agent.pk,
        window,
        scope=scope,
        kept_as=kept_as_for([agent]),
        agent_ids=[agent.pk],
    )
    pair = by_agent.get(agent.pk, Pair())
    _fill_buckets(pair, window)
    versions = {v.pk: v for v in AgentVersion.objects.filter(pk__in=list(by_version))}
    canary = None
    live_id, canary_id = agent.live_version_id or 0, agent.canary_version_id
    if canary_id is not None:
        names = dict(
            AgentVersion.objects.filter(pk__in=[live_id, canary_id]).values_list("pk", "number")
        )
        canary = {
            "live": names.get(live_id),
            "canary": names.get(canary_id),
            "lines": compare(
                by_version.get(live_id, Pair()).current,
                by_version.get(canary_id, Pair()).current,
            ),
        }
    return {
        "agent": agent,
        "pair": pair,
        "lines": lines(pair),
        "chart": sparkline(pair.current, window),
        "versions": [
            {"version": versions[pk], "lines": lines(by_version[pk])}
            for pk in sorted(by_version, key=lambda pk: -versions[pk].number)
        ],
        "canary": canary,
    }


# What the fleet page reads of each agent it shows: its row (name, link), its team's
# section, whether it is archived, and what its kept figures are kept under (kept_as_for).
SEEN_FIELDS = (
    "slug",
    "name",
    "archived_at",
    "decision_sla_minutes",
    "team__slug",
    "team__name",
)


def fleet_page(user: Any, window: Window) -> dict[str, Any]:
    """The KPIs of the teams and agents the person may see (agents.permissions): a team's
    figures cover only its agents the person sees."""
    # With their teams, not their live versions (agents_for_user's default), and only what
    # the page and the figures read of them (the query-count test fails on a field read
    # later, one query an agent): a hundred versions' policies were a quarter of this
    # query's time, the agents' other columns half of the rest.
    seen = list(
        agents_for_user(user)
        .select_related(None)
        .select_related("team")
        .only(*SEEN_FIELDS)
        .order_by("team__name", "team_id", "name", "pk")
    )
    # The agents by their ids, not by the permission query again as a subquery in every
    # query: Postgres then filters the window's runs by the list as it reads them from the
    # index, where the subquery made it misjudge the journal's part and join it with every
    # agent in a nested loop (the requests' query at 24 hours: 56 ms, 33 of them that join).
    if not seen:
        return {"teams": []}
    by_agent, by_team = fleet_figures(seen, window)
    agents = [a for a in seen if a.archived_at is None or a.pk in by_agent]
    teams: dict[int, dict[str, Any]] = {}
    for agent in agents:
        team = teams.get(agent.team_id)
        if team is None:
            pair = by_team.get(agent.team_id, Pair())
            _fill_buckets(pair, window)
            team = teams[agent.team_id] = {
                "team": agent.team,
                "lines": lines(pair),
                "chart": sparkline(pair.current, window),
                "agents": [],
            }
        f = by_agent.get(agent.pk, Pair()).current
        # A row of plain values, its cells by name (the table's columns, in the template).
        team["agents"].append(
            {
                "slug": agent.slug,
                "name": agent.name,
                "url": f"{reverse('agent-kpis', args=[agent.slug])}?window={window.name}",
                **{name: show(getattr(f, name), how) for name, how in AGENT_CELLS},
            }
        )
    return {"teams": list(teams.values())}


def fleet_figures(
    agents: list[Agent], window: Window, *, keep: bool = True
) -> tuple[dict[int, Pair], dict[int, Pair]]:
    """The fleet page's figures of these agents, by agent and by team (the teams' are
    their agents' here; the agents' percentiles are not asked: the page shows none), the
    window's rolled-up part kept between requests (`keep`; closed_part)."""
    ids = [a.pk for a in agents]
    scope = Q(agent_id__in=ids)
    team_of = {a.pk: a.team_id for a in agents}
    return figures_summed(
        Run.objects.filter(scope),
        "agent",
        "team",
        team_of.__getitem__,
        window,
        scope=scope,
        kept_as=kept_as_for(agents) if keep else "",
        part_percentiles=False,
        agent_ids=ids,
    )


# The figures of an agent's row on the fleet page (the columns of its table, named in
# templates/agents/fleet_kpis.html), as `show`s.
AGENT_CELLS = (
    ("runs", "count"),
    ("exception_rate", "share"),
    ("held_share", "share"),
    ("sla_attainment", "share"),
    ("cost_per_run", "eur"),
)


class Line(TypedDict):
    """One figure as a page shows it: now, in the window before, and which way it went
    (`worse` when it moved the way a manager would not want). A dict: the template reads
    a dict's keys at once, an object's attributes after a failed key look-up each (a
    fleet page shows 180 lines)."""

    name: str
    label: str
    now: str
    before: str
    trend: str  # "up", "down" or "" (unchanged, or nothing to compare)
    worse: bool


# name, label, how to show it, whether a rise is bad (None: neither)
LINES: list[tuple[str, str, str, bool | None]] = [
    ("runs", "runs", "count", None),
    ("cycle_p50", "cycle time p50", "seconds", True),
    ("cycle_p95", "cycle time p95", "seconds", True),
    ("exception_rate", "exception rate", "share", True),
    ("failed", "failed runs", "count", True),
    ("diverged", "diverged from the journal", "count", True),
    ("denied", "steps denied by policy", "count", True),
    ("shadow_differs", "steps the shadow version would decide otherwise", "count", None),
    ("rejected", "held steps rejected by people", "count", True),
    ("held_share", "tool steps held for people", "share", None),
    ("decide_p50", "time to decide p50", "seconds", True),
    ("decide_p95", "time to decide p95", "seconds", True),
    ("sla_attainment", "decided within the SLA", "share", False),
    ("tokens_per_run", "model tokens per run", "number", True),
    ("cost_per_run", "model cost per run", "eur", True),
    ("cost_per_transaction", "model cost per business transaction", "eur", True),
    ("paid", "paid", "money", None),
    ("ordered", "ordered", "amount", None),
]


def show(value: Any, how: str) -> str:
    if value is None:
        return "—"
    if how == "count":
        return f"{value:,}"
    if how == "number":
        return f"{value:,.0f}"
    if how == "share":
        return f"{value * 100:.1f} %"
    if how == "eur":
        return f"{value:,.4f} EUR"
    if how == "amount":
        return f"{value:,.2f}"
    if how == "money":
        return " · ".join(f"{v:,.2f} {c}" for c, v in sorted(value.items())) or "—"
    return duration(value)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _trend(now: Any, before: Any) -> str:
    if isinstance(now, dict) or now is None or before is None or now == before:
        return ""
    return "up" if now > before else "down"


def lines(pair: Pair) -> list[Line]:
    out = []
    for name, label, how, rise_is_bad in LINES:
        now, before = getattr(pair.current, name), getattr(pair.previous, name)
        trend = _trend(now, before)
        worse = rise_is_bad is not None and trend == ("up" if rise_is_bad else "down")
        out.append(
            Line(
                name=name,
                label=label,
                now=show(now, how),
                before=show(before, how),
                trend=trend,
                worse=worse,
            )
        )
    return out


def compare(live: Figures, canary: Figures) -> list[Line]:
    """The canary's figures beside the live version's, over the same window: `before` is
    the live version's, `now` the canary's."""
    return lines(Pair(current=canary, previous=live))


def sparkline(f: Figures, window: Window) -> str:
    """Runs per bar (an hour or a day) and, over them, the runs with an exception: an SVG
    drawn here, styled by the stylesheet (no inline style: the CSP forbids it)."""
    runs, exceptions = f.runs_per_bucket, f.exceptions_per_bucket
    height, bar, gap = 32, 6, 2
    peak = max(runs, default=0) or 1
    width = max(len(runs), 1) * (bar + gap)
    unit = "hour" if window.hourly else "day"

    # Numbers alone go into the bars (made ints and floats here), so they need no
    # escaping: a page draws hundreds of them.
    rects = []
    for i, (n, e) in enumerate(zip(runs, exceptions, strict=True)):
        n, e = int(n), int(e)
        x, h, he = i * (bar + gap), round(n / peak * height, 1), round(e / peak * height, 1)
        rects.append(
            f'<rect class="runs" x="{x}" y="{height - h}" width="{bar}" height="{h}">'
            f"<title>{n} run{'s' if n != 1 else ''}, {e} with an exception</title></rect>"
            f'<rect class="exceptions" x="{x}" y="{height - he}" width="{bar}" '
            f'height="{he}"></rect>'
        )
    parts = mark_safe("".join(rects))  # noqa: S308  (numbers only, built above)
    label = (
        f"runs per {unit} over the last {window.name}: {', '.join(map(str, runs)) or 'none'}; "
        f"with an exception: {', '.join(map(str, exceptions)) or 'none'}"
    )
    return format_html(
        '<svg class="spark" viewBox="0 0 {} {}" preserveAspectRatio="none" role="img" '
        'aria-label="{}" data-testid="sparkline">{}</svg>',
        width,
        height,
        label,
        parts,
    )
