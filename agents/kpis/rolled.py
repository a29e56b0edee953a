"""The rollup, read (agents.rollup keeps it): which runs of a window it holds (the plan), and
the window's rolled-up part — its sums, bars and durations — read once and kept in the
shared cache, since nothing in a rolled-up hour changes any more."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

import numpy as np
from django.core.cache import caches
from django.db.models import Case, DateTimeField, F, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDay
from redis.exceptions import RedisError

from agents.kpis.journal import Bars, Parts, _current, _cycle_durations, _decide_durations, _under
from agents.kpis.statements import AmongIds, Bound, BoundIds, kept_statement, run_statement
from agents.kpis.windows import (
    DAY,
    DAY_HOURS,
    HOUR,
    Figures,
    Window,
    ceil_day,
    ceil_hour,
    floor_day,
    floor_hour,
)
from agents.models import Agent, KpiHour, KpiHourPaid, KpiHourWait, KpiOpenHour, KpiRollup, Run

log = logging.getLogger(__name__)


# Figures the rollup (KpiHour) holds a column of, each the sum of its hours'.
ROLLED = (
    "runs",
    "finished",
    "succeeded",
    "failed",
    "diverged",
    "exceptions",
    "steps",
    "denied",
    "shadow_differs",
    "held",
    "rejected",
    "decided",
    "expired",
    "model_calls",
    "tokens_in",
    "tokens_out",
    "cost_eur",
    "ordered",
)


@dataclass(frozen=True)
class RollupPlan:
    """Which runs of a window the rollup holds, and which the journal must give: `rollup`
    selects rows of the rollup's tables (on agent and hour), `rolled` the runs they hold,
    `journal` the other runs."""

    rollup: Q
    journal: Q
    hours: int  # whole hours read from the rollup, for the agents of the scope
    rolled: Q = field(default_factory=lambda: Q(pk__in=[]))
    # The ranges of creation `journal` selects, as plain values (a page's kept queries:
    # journal.journal_runs).
    journal_ranges: tuple[tuple[datetime, datetime], ...] = ()
    # What the rollup's part is, said as plain values (the closed part's cache key):
    # the hour and day ranges read from it, and the rollup's generation.
    ranges: tuple[tuple[int, datetime, datetime], ...] = ()
    generation: uuid.UUID | None = None


def plan_rollup(scope: Q, window: Window, agent_ids: list[int] | None = None) -> RollupPlan:
    """The whole hours of the window (and of the window before) that the rollup has
    examined — less the hour the two windows meet in, unless they meet on the hour, and
    less every hour still open for an agent of the scope (KpiOpenHour) — are read from
    the rollup, from its day rows where a whole day is rolled up (windows of days: their
    bars are days); the rest of the window from the journal. An open hour is read from
    the journal for every agent of the scope, not only for the agents it is open for: a
    few runs more, and the plan is hour ranges alone (no list of agents per hour in
    every query: with the hours of a thousand waiting runs open, building and binding
    those lists was most of the fleet page's time). Two queries; with `agent_ids` (a
    page's, the agents `scope` selects), the open hours' one a kept statement."""
    mark = KpiRollup.objects.values_list("through", "generation").first()
    through, generation = mark if mark is not None else (None, None)
    lo = ceil_hour(window.previous_start)
    hi = floor_hour(window.end)
    if through is None or min(hi, through) <= lo:
        return RollupPlan(rollup=Q(pk__in=[]), journal=Q(), hours=0)
    hi = min(hi, through)
    # The hours of [lo, hi) read from the journal: the one the windows meet in, unless
    # they meet on the hour, and the open ones.
    from_journal = _open_hours(scope, lo, hi, agent_ids)
    if floor_hour(window.start) != window.start:
        from_journal.add(floor_hour(window.start))
    # Whole days (of a window of days) from the day rows: within [lo, hi), none of their
    # hours from the journal, and not the day the windows meet in unless they meet at
    # midnight (its hours lie in both).
    days: set[datetime] = set()
    if not window.hourly:
        day, meet = ceil_day(lo), floor_day(window.start)
        while day + DAY <= hi:
            if (day != meet or meet == window.start) and not any(
                day <= h < day + DAY for h in from_journal
            ):
                days.add(day)
            day += DAY
    hour_ranges, day_ranges = [], []
    at = lo
    while at < hi:
        if at in days:
            day_ranges.append((at, at + DAY))
            at += DAY
        elif at in from_journal:
            at += HOUR
        else:
            hour_ranges.append((at, at + HOUR))
            at += HOUR
    hour_ranges, day_ranges = _merged(hour_ranges), _merged(day_ranges)
    rollup = any_of(Q(hours=1, hour__gte=a, hour__lt=b) for a, b in hour_ranges)
    rollup |= any_of(Q(hours=DAY_HOURS, hour__gte=a, hour__lt=b) for a, b in day_ranges)
    rolled = any_of(
        Q(created_at__gte=a, created_at__lt=b) for a, b in _merged(hour_ranges + day_ranges)
    )
    # Each journal range bounded on both sides, so Postgres reads each by the index of
    # the runs' creation rather than the whole window filtered.
    spans = [(window.previous_start, lo), (hi, window.end)]
    spans += [(h, h + HOUR) for h in from_journal]
    journal_ranges = tuple((a, b) for a, b in _merged(spans) if a < b)
    journal = any_of(Q(created_at__gte=a, created_at__lt=b) for a, b in journal_ranges)
    hours = sum((b - a) // HOUR for a, b in hour_ranges + day_ranges)
    ranges = tuple((1, a, b) for a, b in hour_ranges) + tuple(
        (DAY_HOURS, a, b) for a, b in day_ranges
    )
    return RollupPlan(rollup, journal, hours, rolled, journal_ranges, ranges, generation)


def _open_hours(scope: Q, lo: datetime, hi: datetime, agent_ids: list[int] | None) -> set[datetime]:
    """The hours of [lo, hi) still open for an agent of the scope."""
    if agent_ids is None:
        return set(
            KpiOpenHour.objects.filter(scope, hour__gte=lo, hour__lt=hi)
            .order_by()
            .values_list("hour", flat=True)
            .distinct()
        )

    def build() -> QuerySet[Any]:
        hours = KpiOpenHour.objects.filter(
            AmongIds("agent_id", BoundIds("agents")),
            hour__gte=Bound("lo", DateTimeField()),
            hour__lt=Bound("hi", DateTimeField()),
        )
        return hours.order_by().values("hour").distinct()

    found = run_statement(
        kept_statement(("open hours",), build), {"agents": agent_ids, "lo": lo, "hi": hi}
    )
    return {row["hour"] for row in found}


def _merged(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The ranges [a, b) joined where they touch or overlap, in order."""
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def any_of(qs: Iterable[Q]) -> Q:
    """The filters joined by OR; none: nothing."""
    out: Q | None = None
    for q in qs:
        out = q if out is None else out | q
    return Q(pk__in=[]) if out is None else out


@dataclass
class Closed:
    """The rolled-up part of a window, as read (closed_part): the rows of the rollup's
    queries — the sums a part and window, the money paid a part, window and currency,
    the decisions within the agent's target a part and window, and each part's runs and
    exceptions a bar (Bars.counts) — and the part's durations from the journal."""

    sums: list[tuple[Any, ...]] = field(default_factory=list)
    paid: list[tuple[Any, ...]] = field(default_factory=list)
    within: list[tuple[Any, ...]] = field(default_factory=list)
    bars: dict[int, np.ndarray] = field(default_factory=dict)  # a part's: Bars.counts
    cycle: Parts = field(default_factory=dict)
    decide: Parts = field(default_factory=dict)
    # The durations sorted by group, as the percentiles ask them (journal.Sorted): filled
    # by the requests of the process that keeps this part, never in the shared cache's
    # copy (it is written there before any request reads it).
    sorted: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


# What a page keeps of a window's rolled-up part (closed_part): its format (counted up
# when Closed or its queries change), and how long — the plan moves on each hour, so an
# entry is read for an hour at most, and then left to expire.
CLOSED_FORMAT = 3
CLOSED_KEPT_SECONDS = 2 * 3600


def closed_part(
    scope: Q, kept_as: str, key: str, window: Window, plan: RollupPlan, bars: bool
) -> Closed:
    """The plan's rolled-up part of the window for the agents of `scope`, grouped by `key`
    (and by bar, when asked: `bars`). The rolled-up hours are closed — no run of them,
    step, request or payment changes any more — so the part is the same for as long as
    the plan's ranges, the rollup's generation and what `kept_as` says of the scope's
    agents (their ids and SLA targets: kept_as_for) are: it is read once and kept
    in the shared cache under all of them, and in the process that read it (kept,
    in_process; not kept when `kept_as` is empty). Six queries when read, none when
    kept."""
    if not kept_as:
        return _read_closed(scope, key, window, plan, bars)
    said = (
        CLOSED_FORMAT,
        kept_as,
        key,
        bars,
        window.length,
        floor_hour(window.start),
        len(window.buckets),
        plan.ranges,
        plan.generation,
    )
    part = kept(
        "kpis:closed",
        said,
        lambda: _read_closed(scope, key, window, plan, bars),
        CLOSED_KEPT_SECONDS,
        in_process=True,
    )
    # Shared by the requests of this process from now on: read only (its bytes and
    # tuples are immutable already).
    for counts in part.bars.values():
        counts.setflags(write=False)
    return part


T = TypeVar("T")


def kept(
    name: str,
    said: tuple[Any, ...],
    read: Callable[[], T],
    seconds: int,
    *,
    in_process: bool = False,
) -> T:
    """`read()`, kept in the shared cache for `seconds` under `name` and `said` — every
    plain value the result depends on — and read anew without a kept one. The cache
    unreachable, the page reads and says so in the log, rather than failing. With
    `in_process` (a value no caller changes), also kept in this process (_IN_PROCESS)."""
    entry = f"{name}:{hashlib.sha256(repr(said).encode()).hexdigest()}"
    if in_process:
        found = _in_process_get(entry)
        if found is not None:
            return cast(T, found)
    cache = caches["default"]
    reachable = True
    try:
        found = cache.get(entry)
    except (RedisError, OSError):
        log.warning("kpis.cache_unreachable", exc_info=True)
        found, reachable = None, False
    if found is None:
        found = read()
        try:
            if reachable:
                cache.set(entry, found, seconds)
        except (RedisError, OSError):
            log.warning("kpis.cache_unreachable", exc_info=True)
    if in_process:
        _in_process_put(entry, found, seconds)
    return cast(T, found)


# The entries a process read last (kept, in_process), with when each expires: a page asked
# again finds its rolled-up part without the shared cache's round trip and unpickling (a
# fleet's month of durations is a megabyte). Its key says all the entry depends on, as in
# the shared cache, so a copy here is as good as the one there; at most IN_PROCESS_KEPT
# entries, the least recently read dropped first.
_IN_PROCESS: OrderedDict[str, tuple[float, Any]] = OrderedDict()
_IN_PROCESS_LOCK = threading.Lock()
IN_PROCESS_KEPT = 16


def _in_process_get(entry: str) -> Any:
    with _IN_PROCESS_LOCK:
        found = _IN_PROCESS.get(entry)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del _IN_PROCESS[entry]
            return None
        _IN_PROCESS.move_to_end(entry)
        return found[1]


def _in_process_put(entry: str, value: Any, seconds: int) -> None:
    with _IN_PROCESS_LOCK:
        _IN_PROCESS[entry] = (time.monotonic() + seconds, value)
        _IN_PROCESS.move_to_end(entry)
        while len(_IN_PROCESS) > IN_PROCESS_KEPT:
            _IN_PROCESS.popitem(last=False)


def kept_as_for(agents: Iterable[Agent]) -> str:
    """What the rolled-up part of these agents' figures depends on besides the rollup and
    the plan: the agents, and the SLA target of each (the decisions within it). Not their
    teams: the part is read a part (agent, version) at a time, added up to the groups up
    as it is used."""
    said = ";".join(f"{a.pk},{a.decision_sla_minutes}" for a in agents)
    return hashlib.sha256(said.encode()).hexdigest()


def _read_closed(scope: Q, key: str, window: Window, plan: RollupPlan, bars: bool) -> Closed:
    out = Closed()
    if not plan.hours:
        return out
    cur = Case(When(hour__gte=window.start, then=Value(True)), default=Value(False))
    rolled = KpiHour.objects.filter(scope, plan.rollup).annotate(cur=cur)
    # The sums a group and window (a few hundred rows), apart from the bars (runs and
    # exceptions a group and hour or day of the current window: thousands of rows, two
    # figures each) — one row a bar with every figure cost the page more in Python than
    # the query.
    out.sums = list(
        rolled.values(key, "cur")
        .annotate(**{f"sum_{name}": Sum(name) for name in ROLLED})
        .order_by()
        .values_list(key, "cur", *(f"sum_{name}" for name in ROLLED))
    )
    if bars:
        bar = F("hour") if window.hourly else TruncDay("hour", tzinfo=UTC)
        counted = Bars(window)
        for gid, at, runs, exceptions in (
            rolled.filter(hour__gte=window.start)
            .annotate(bar=bar)
            .values(key, "bar")
            .annotate(runs_at=Sum("runs"), exceptions_at=Sum("exceptions"))
            .order_by()
            .values_list(key, "bar", "runs_at", "exceptions_at")
        ):
            counted.add(gid, at, runs, exceptions)
        out.bars = counted.counts
    out.paid = list(
        KpiHourPaid.objects.filter(scope, plan.rollup)
        .annotate(cur=cur)
        .values(key, "cur", "currency")
        .annotate(total=Sum("amount"))
        .order_by()
        .values_list(key, "cur", "currency", "total")
    )
    out.within = list(
        KpiHourWait.objects.filter(
            scope, plan.rollup, minutes__lte=F("agent__decision_sla_minutes")
        )
        .annotate(cur=cur)
        .values(key, "cur")
        .annotate(n=Sum("decided"))
        .order_by()
        .values_list(key, "cur", "n")
    )
    # The durations of the rolled-up hours' runs and requests, from the journal (the
    # rollup keeps sums, and a percentile is not one).
    runs = Run.objects.filter(scope, plan.rolled).order_by()
    split = lambda prefix: _current(prefix, window.start)  # noqa: E731
    out.cycle = _cycle_durations(runs, key, split)
    out.decide = _decide_durations(
        _under(scope, "run__") & _under(plan.rolled, "run__"), key, window.previous_start, split
    )
    return out


def _add_closed(closed: Closed, of: Callable[..., Figures], key: str, bars: Bars | None) -> None:
    """The closed part's sums added to the Figures `of(row)` names, and its bars to
    `bars` (None: none)."""
    for gid, is_cur, *values in closed.sums:
        mine = vars(of({key: gid, "cur": is_cur}))
        for name, value in zip(ROLLED, values, strict=True):
            if not value:
                continue
            if name == "ordered":
                value = Decimal(str(value))
            elif name == "cost_eur":
                value = float(value)
            mine[name] += value
    for gid, is_cur, currency, total in closed.paid:
        f = of({key: gid, "cur": is_cur})
        f.paid[currency] = f.paid.get(currency, Decimal(0)) + Decimal(str(total))
    for gid, is_cur, n in closed.within:
        of({key: gid, "cur": is_cur}).within_sla += n or 0
    if bars is not None:
        for gid, counts in closed.bars.items():
            bars.add_counts(gid, counts)
