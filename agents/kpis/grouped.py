"""The figures of a window: the journal's part and the rollup's together, grouped by a part
and, where a page asks, by the group up of each part (a version's agent, an agent's team)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet

from agents.kpis.journal import (
    KEYS,
    Bars,
    Target,
    _between,
    _paging,
    _percentiles,
    _same,
    _without_jit,
    journal_figures,
    journal_runs,
)
from agents.kpis.rolled import Closed, _add_closed, closed_part, plan_rollup
from agents.kpis.windows import Figures, Pair, Window, _fill_buckets
from agents.models import Run


def figures(
    runs: QuerySet[Run],
    by: str,
    window: Window,
    *,
    sparklines: bool = True,
    scope: Q | None = None,
) -> dict[int, Pair]:
    """The KPIs of `runs` (a queryset of the runs the person may see), grouped `by`
    agent, team or version (KEYS): {group id: Pair}. A bounded number of queries.

    `scope`, when given, is the filter on the run's `agent` that selects `runs` (as
    `Run.objects.filter(scope)`): the whole hours the rollup holds for those agents
    (agents.rollup) are then read from it, and only the rest — the hours still open, the
    window's partial hours at its edges — from the journal. Without it, every figure is
    read from the journal. Either way the same figures."""
    with _without_jit():
        return _figures(runs, by, window, sparklines=sparklines, scope=scope)


def _figures(
    runs: QuerySet[Run],
    by: str,
    window: Window,
    *,
    sparklines: bool,
    scope: Q | None,
    kept_as: str = "",
    up: Target | None = None,
    part_percentiles: bool = True,
    agent_ids: list[int] | None = None,
) -> dict[int, Pair]:
    """figures(), and with `up` the groups up's percentiles and sparkline bars, which go
    straight into their pairs: the pages draw the bars of the groups up alone (a team's,
    an agent's). With `agent_ids` — a page's: `runs` and `scope` are those agents' runs —
    the journal's part is read by the page's kept statements (journal_runs)."""
    key = KEYS[by]
    pairs: dict[int, Pair] = defaultdict(Pair)
    # The bars are drawn for the groups up alone when there are any (their pairs, and the
    # group up of each group): counted a part at a time, added into the group up's.
    bar_pairs, bar_group = (pairs, _same) if up is None else up
    bars = Bars(window, bar_group) if sparklines else None

    def of(row: dict[str, Any], prefix: str = "") -> Figures:
        pair = pairs[row[prefix + key]]
        return pair.current if row["cur"] else pair.previous

    base = runs.filter(**_between("", window)).order_by()
    journal_ranges: tuple[tuple[datetime, datetime], ...] = ((window.previous_start, window.end),)
    plan = plan_rollup(scope, window, agent_ids) if scope is not None else None
    closed = Closed()
    if plan is not None and scope is not None and plan.hours:
        # The journal's part alone (its ranges lie within the window): with the window's
        # range around them too, Postgres took the ranges' share of the window's share and
        # expected a handful of runs where there are a thousand (nested loops over them).
        base = runs.filter(plan.journal).order_by()
        journal_ranges = plan.journal_ranges
        closed = closed_part(scope, kept_as, key, window, plan, sparklines)
    if agent_ids is None:
        grouping = _paging(key, window, bars)
    else:
        base, runs_shape, values = journal_runs(agent_ids, journal_ranges)
        grouping = _paging(key, window, bars, runs_shape)
        grouping = replace(grouping, values={**(grouping.values or {}), **values})
    cycle, decide = journal_figures(base, grouping, of)
    _add_closed(closed, of, key, bars)
    if bars is not None:
        bars.done(bar_pairs)
        for pair in bar_pairs.values():
            _fill_buckets(pair, window)
    # The percentiles are not sums: from the durations of the journal's part and of the
    # rolled-up part together, for the groups and, when asked (`up`: the pairs of the
    # groups up, and each group's group up), for the groups up too, from the same
    # durations.
    targets: list[Target] = [(pairs, _same)]
    if up is not None:
        targets = [*targets, up] if part_percentiles else [up]
    memo = closed.sorted
    for f, p50, p95 in _percentiles(cycle, closed.cycle, targets, memo.setdefault("cycle", {})):
        f.cycle_p50, f.cycle_p95 = p50, p95
    for f, p50, p95 in _percentiles(decide, closed.decide, targets, memo.setdefault("decide", {})):
        f.decide_p50, f.decide_p95 = p50, p95
    return dict(pairs)


# Figures that are not sums of their parts' (percentiles): asked of the database again.
PERCENTILES = ("cycle_p50", "cycle_p95", "decide_p50", "decide_p95")


def figures_summed(
    runs: QuerySet[Run],
    by: str,
    up: str,
    parent: Callable[[int], int],
    window: Window,
    *,
    scope: Q | None = None,
    kept_as: str = "",
    part_percentiles: bool = True,
    agent_ids: list[int] | None = None,
) -> tuple[dict[int, Pair], dict[int, Pair]]:
    """The KPIs of `runs` grouped `by` (versions, agents) and grouped `up` (agents, teams),
    where `parent` names each group's group up (a version's agent, an agent's team): the
    groups up are their parts added — counts, sums, money — their sparkline bars are
    counted a group up and bar, and their percentiles come from their parts' durations
    (one query for either pair of percentiles), not every figure twice; without
    `part_percentiles`, the groups up's percentiles only (the parts' stay None: the fleet
    page shows no agent's).
    Same figures as figures(runs, up, window); `scope` as there, and `kept_as` what the
    rolled-up part is kept under between requests (closed_part; "": read each time), and
    `agent_ids` as in _figures."""
    pairs: dict[int, Pair] = defaultdict(Pair)
    with _without_jit():
        parts = _figures(
            runs,
            by,
            window,
            sparklines=True,
            scope=scope,
            kept_as=kept_as,
            up=(pairs, parent),
            part_percentiles=part_percentiles,
            agent_ids=agent_ids,
        )
    for gid, pair in parts.items():
        whole = pairs[parent(gid)]
        _add(whole.current, pair.current)
        _add(whole.previous, pair.previous)
    return parts, dict(pairs)


BARS = ("runs_per_bucket", "exceptions_per_bucket")
# The figures a group's Figures add up from its parts' as plain numbers.
SUMMED = tuple(f.name for f in fields(Figures) if f.name not in (*PERCENTILES, *BARS, "paid"))


def _add(into: Figures, part: Figures) -> None:
    # On the figures' dicts: a fleet page adds a hundred agents' pairs, 20 figures each.
    mine, theirs = vars(into), vars(part)
    for name in SUMMED:
        mine[name] += theirs[name]
    for currency, amount in part.paid.items():
        into.paid[currency] = into.paid.get(currency, Decimal(0)) + amount
    for name in BARS:
        value, mine = getattr(part, name), getattr(into, name)
        if len(mine) < len(value):
            mine.extend([0] * (len(value) - len(mine)))
        for i, n in enumerate(value):
            mine[i] += n
