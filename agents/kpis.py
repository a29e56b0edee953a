"""KPIs per agent, team and version, read from the journal (runs, their steps, the requests
held for people) and the sandbox tables the tools write: no second source of truth.

A window is the last 24 hours, 7 days or 30 days; every figure comes with the same
figure over the window before it. A run counts in the window it was created in, and so
does everything that belongs to it (its steps, its requests, the money its steps moved):
per-run ratios then divide like with like.

The figures:
- runs, and cycle time p50/p95: created → finished, over the finished ones;
- exception rate: the share of runs that failed (a divergence from the journal is a
  failure, counted apart too), had a tool step denied by policy, or had a held step
  rejected by people;
- shadow: tool steps the shadow version's policy would have decided otherwise (shown
  beside the exceptions, not counted in them: nothing went wrong in the run);
- held share: tool steps held for people (an approval request, by policy or after an
  unknown outcome) over tool steps;
- time to decide p50/p95 (held → approved or rejected by people) and SLA attainment:
  decisions within the agent's `decision_sla_minutes` over the requests that ended
  (approved, rejected, expired: an expiry missed it; pending and cancelled are left out);
- cost: model calls' tokens and cost (Action.meta, as the gateway records them), per run
  and per business transaction (a run that succeeded: a claim paid, an order placed);
- value moved: payments (per currency) and purchase orders the run's steps wrote.

Each figure set is a few aggregate queries grouped by agent, team or version, whatever
the number of agents or runs; percentiles are computed by Postgres (percentile_cont),
and, on the embedded default's SQLite, from the durations in Python with the same
definition (linear interpolation between the closest ranks).

The pages read the additive figures of a window's whole hours (and whole days) from the
rollup agents.rollup keeps from the journal — derived data, computed by this module's
journal queries grouped by hour, rebuilt from the journal at will — and only the rest
from the journal: the partial hours at the window's edges, the hours not examined yet,
and the hours still open (a run not final, a request pending). The percentiles are
always taken from the whole window's durations (plan_rollup, figures).

This module sits above the approvals app in the layers (pyproject.toml): it reads the
approval requests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    Case,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    FilteredRelation,
    FloatField,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncDay, TruncHour
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from agents.models import (
    Action,
    Agent,
    AgentVersion,
    KpiHour,
    KpiHourPaid,
    KpiHourWait,
    KpiOpenHour,
    KpiRollup,
    Payment,
    PurchaseOrder,
    Run,
)
from agents.permissions import agents_for_user
from approvals.models import ApprovalRequest

WINDOWS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_WINDOW = "7d"
UNKNOWN_WINDOW = "Choose a window of 24h, 7d or 30d."

# How the runtime words a run it failed because its program asked for another step than
# the journal holds (agents.gateway.core.check_same; tests/agents/test_gateway.py).
DIVERGED = "diverged at step"
# The sandbox tables and the tools that write them, keyed by the step's idempotency key.
PAY_TOOL = "payments.pay"
ORDER_TOOL = "purchasing.create_po"

KEYS = {"agent": "agent_id", "team": "agent__team_id", "version": "version_id"}
DECIDED = (ApprovalRequest.Status.APPROVED, ApprovalRequest.Status.REJECTED)
ENDED = (*DECIDED, ApprovalRequest.Status.EXPIRED)


@dataclass(frozen=True)
class Window:
    name: str
    end: datetime
    # A window of another length than the named ones: drift's baseline, the four windows
    # before the current one (agents.drift).
    span: timedelta | None = None

    @property
    def length(self) -> timedelta:
        return self.span or WINDOWS[self.name]

    @property
    def start(self) -> datetime:
        return self.end - self.length

    @property
    def previous_start(self) -> datetime:
        return self.start - self.length

    @property
    def hourly(self) -> bool:
        return self.length <= timedelta(days=1)

    @property
    def buckets(self) -> list[datetime]:
        """The starts of the sparkline's bars: hours for a day, days otherwise (UTC)."""
        step = timedelta(hours=1) if self.hourly else timedelta(days=1)
        first = self.start.replace(minute=0, second=0, microsecond=0)
        if not self.hourly:
            first = first.replace(hour=0)
        out = []
        at = first
        while at < self.end:
            out.append(at)
            at += step
        return out


def window_named(name: str, now: datetime | None = None) -> Window:
    """The window called `name` ending now; ValueError(UNKNOWN_WINDOW) for another name."""
    if name not in WINDOWS:
        raise ValueError(UNKNOWN_WINDOW)
    return Window(name, now or timezone.now())


@dataclass
class Figures:
    runs: int = 0
    finished: int = 0
    succeeded: int = 0
    failed: int = 0
    diverged: int = 0
    exceptions: int = 0
    cycle_p50: float | None = None  # seconds
    cycle_p95: float | None = None
    steps: int = 0  # tool steps
    denied: int = 0
    # Tool steps the shadow version's policy would have decided otherwise (recorded beside
    # the step, never executed: agents.rollout).
    shadow_differs: int = 0
    held: int = 0
    rejected: int = 0  # by people
    decided: int = 0  # approved or rejected by people
    expired: int = 0
    within_sla: int = 0
    decide_p50: float | None = None  # seconds
    decide_p95: float | None = None
    model_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_eur: float = 0.0
    paid: dict[str, Decimal] = field(default_factory=dict)  # per currency
    ordered: Decimal = Decimal(0)
    runs_per_bucket: list[int] = field(default_factory=list)
    exceptions_per_bucket: list[int] = field(default_factory=list)

    @property
    def exception_rate(self) -> float | None:
        return self.exceptions / self.runs if self.runs else None

    @property
    def held_share(self) -> float | None:
        return self.held / self.steps if self.steps else None

    @property
    def sla_attainment(self) -> float | None:
        ended = self.decided + self.expired
        return self.within_sla / ended if ended else None

    @property
    def cost_per_run(self) -> float | None:
        return self.cost_eur / self.runs if self.runs else None

    @property
    def cost_per_transaction(self) -> float | None:
        return self.cost_eur / self.succeeded if self.succeeded else None

    @property
    def tokens_per_run(self) -> float | None:
        return (self.tokens_in + self.tokens_out) / self.runs if self.runs else None


@dataclass
class Pair:
    """A figure set over the window, and over the window before it."""

    current: Figures = field(default_factory=Figures)
    previous: Figures = field(default_factory=Figures)


# --- SQL helpers ---------------------------------------------------------------------------


class Seconds(Func):
    """An interval in seconds (Postgres)."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)::double precision"
    output_field = FloatField()


class PercentileCont(Aggregate):
    """Postgres' percentile_cont: the continuous percentile of the non-null values."""

    function = "percentile_cont"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        # The fraction is a constant of this module, never input.
        self.template = (
            f"percentile_cont({float(fraction)!r}) WITHIN GROUP (ORDER BY %(expressions)s)"
        )
        super().__init__(expression, **extra)


def percentile_cont(values: list[float], fraction: float) -> float | None:
    """percentile_cont in Python: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    at = fraction * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _in_sql() -> bool:
    return connection.vendor == "postgresql"


def _between(prefix: str, window: Window) -> dict[str, Any]:
    return {
        f"{prefix}created_at__gte": window.previous_start,
        f"{prefix}created_at__lt": window.end,
    }


def _current(prefix: str, window: Window) -> Case:
    return Case(
        When(**{f"{prefix}created_at__gte": window.start}, then=Value(True)),
        default=Value(False),
    )


def _exception(since: datetime) -> Q:
    """A run failed, had a tool step denied or a held step rejected. The steps and requests
    are looked for from `since`, the earliest creation of the runs asked about (a run's
    come after it): Postgres may answer the EXISTS from a hash of every denied step, which
    must not grow with the history."""
    denied = Action.objects.filter(
        run=OuterRef("pk"),
        kind=Action.Kind.TOOL,
        status=Action.Status.DENIED,
        created_at__gte=since,
    )
    rejected = ApprovalRequest.objects.filter(
        run=OuterRef("pk"), status=ApprovalRequest.Status.REJECTED, created_at__gte=since
    )
    return Q(status=Run.Status.FAILED) | Q(Exists(denied)) | Q(Exists(rejected))


def _duration(later: str, earlier: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(later) - F(earlier), output_field=DurationField())


# --- the figures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    """How the journal's figures are grouped: by `key` (a KEYS value) and by `split(prefix)`,
    an expression of the run's creation (prefix: the path from the rows to the run) — the
    window or the window before (the pages), or the hour (the rollup: agents.rollup) — over
    runs created from `since` on (their steps and requests come after it)."""

    key: str
    split: Callable[[str], Any]
    since: datetime


def _paging(key: str, window: Window) -> Grouping:
    return Grouping(key, lambda prefix: _current(prefix, window), window.previous_start)


@contextmanager
def _without_jit() -> Iterator[None]:
    """Postgres JIT-compiles a query its planner thinks big before running it, which cost
    these aggregates more than it saved (150–400 ms a query: bench/README.md): off for the
    figures' queries; and the percentiles' sorts of a month of a fleet's runs (120,000
    durations, 11 MB) kept in memory rather than spilled to disk. SET LOCAL: this
    transaction only."""
    if not _in_sql() or getattr(connection, "_kpis_jit_off", False):
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            # SET LOCAL both, in one statement (as any client protocol takes it).
            cursor.execute(
                "SELECT set_config('jit', 'off', true), set_config('work_mem', '32MB', true)"
            )
        connection._kpis_jit_off = True  # type: ignore[attr-defined]
        try:
            yield
        finally:
            connection._kpis_jit_off = False  # type: ignore[attr-defined]


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
    up: tuple[str, dict[int, Pair]] | None = None,
    part_percentiles: bool = True,
) -> dict[int, Pair]:
    key = KEYS[by]
    pairs: dict[int, Pair] = defaultdict(Pair)

    def of(row: dict[str, Any], prefix: str = "") -> Figures:
        pair = pairs[row[prefix + key]]
        return pair.current if row["cur"] else pair.previous

    whole = runs.filter(**_between("", window)).order_by()
    base = whole
    rolled: dict[int, Pair] = {}
    if scope is not None:
        plan = plan_rollup(scope, window)
        # The journal's part alone (its ranges lie within the window): with the window's
        # range around them too, Postgres took the ranges' share of the window's share and
        # expected a handful of runs where there are a thousand (nested loops over them).
        if plan.hours:
            base = runs.filter(plan.journal).order_by()
        rolled = _from_rollup(scope, key, window, plan)
    grouping = _paging(key, window)
    journal_figures(base, grouping, of)
    if sparklines:
        _sparklines(base, key, window, pairs)
    for gid, pair in rolled.items():
        _add(pairs[gid].current, pair.current)
        _add(pairs[gid].previous, pair.previous)
    if sparklines:
        for pair in pairs.values():
            _fill_buckets(pair, window)
    # The percentiles are not sums: from the durations of the whole window, for the groups
    # and, when asked (`up`: a KEYS name and the pairs to fill), for the groups up too, in
    # the same query.
    groups: list[tuple[str, dict[int, Pair]]] = [(key, pairs)]
    if up is not None:
        groups.append((KEYS[up[0]], up[1]))
        if not part_percentiles:
            # The groups up's alone: each duration sorted once, not once a grouping.
            groups = groups[1:]
    _cycle_percentiles(whole, groups, window)
    # The requests of the window's runs: by the scope on their run, joined, when there is
    # one — Postgres then reads the window's requests and each one's run by its key,
    # rather than hashing every run of the window (two months of a fleet: 120,000) for
    # a semi-join.
    of_runs = (
        Q(run__in=whole.values("pk"))
        if scope is None
        else _under(scope, "run__") & Q(**_between("run__", window))
    )
    _decide_percentiles(of_runs, groups, window)
    return dict(pairs)


def _under(q: Q, prefix: str) -> Q:
    """The filter `q` on a model, said from a model that points at it by `prefix`."""
    out = Q()
    out.connector, out.negated = q.connector, q.negated
    children: list[Any] = list(q.children)  # Q objects and (lookup, value) pairs
    out.children = [
        _under(child, prefix) if isinstance(child, Q) else (prefix + child[0], child[1])
        for child in children
    ]
    return out


def journal_figures(base: QuerySet[Run], grouping: Grouping, of: Callable[..., Figures]) -> None:
    """Every additive figure of the runs of `base`, grouped (Grouping), read from the
    journal into the Figures `of(row, prefix)` names. Five queries."""
    _runs(base, grouping, of)
    _steps(base, grouping, of)
    _requests(base.values("pk"), grouping, of)
    _value(base, grouping, of)


def _runs(base: QuerySet[Run], g: Grouping, of: Any) -> None:
    rows = (
        base.annotate(cur=g.split(""))
        .values(g.key, "cur")
        .annotate(
            n=Count("pk"),
            finished=Count("pk", filter=Q(finished_at__isnull=False)),
            succeeded=Count("pk", filter=Q(status=Run.Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Run.Status.FAILED)),
            diverged=Count("pk", filter=Q(status=Run.Status.FAILED, error__contains=DIVERGED)),
            exceptions=Count("pk", filter=_exception(g.since)),
        )
    )
    for row in rows:
        f = of(row)
        f.runs, f.finished, f.succeeded = row["n"], row["finished"], row["succeeded"]
        f.failed, f.diverged, f.exceptions = row["failed"], row["diverged"], row["exceptions"]


def _cycle_percentiles(
    base: QuerySet[Run], groups: list[tuple[str, dict[int, Pair]]], window: Window
) -> None:
    """Cycle time p50/p95, from the finished runs' creation and end alone (read from the
    index run_created_durations on Postgres), for each grouping of `groups` (a KEYS value,
    the pairs to fill) in one query."""
    finished = base.filter(finished_at__isnull=False)
    for f, p50, p95 in _percentiles(finished, "", groups, window, "finished_at"):
        f.cycle_p50, f.cycle_p95 = p50, p95


def _percentiles(
    rows: QuerySet[Any],
    prefix: str,
    groups: list[tuple[str, dict[int, Pair]]],
    window: Window,
    later: str,
) -> Iterator[tuple[Figures, float | None, float | None]]:
    """The p50 and p95 of `later` - created_at over `rows` (prefix: the path from them to
    the run), in the window and the window before, for each grouping of `groups`: the
    Figures each pair of percentiles belongs to. One query: on Postgres, percentile_cont
    grouped by GROUPING SETS, one set a grouping (the rows read and joined once); on
    SQLite, the durations grouped in Python, the same definition."""
    assert 1 <= len(groups) <= 2, "the groups, and perhaps the groups up"
    keys = [prefix + key for key, _ in groups]
    rows = rows.annotate(cur=_current(prefix, window)).order_by()

    def figures_of(i: int, gid: Any, cur: Any) -> Figures:
        pair = groups[i][1][gid]
        return pair.current if cur else pair.previous

    if not _in_sql():
        durations: dict[tuple[int, Any, bool], list[float]] = defaultdict(list)
        for *gids, cur, created, done in rows.values_list(*keys, "cur", "created_at", later):
            seconds = (done - created).total_seconds()
            for i, gid in enumerate(gids):
                durations[(i, gid, bool(cur))].append(seconds)
        for (i, gid, cur), values in durations.items():
            p50, p95 = percentile_cont(values, 0.5), percentile_cont(values, 0.95)
            yield figures_of(i, gid, cur), p50, p95
        return
    names = [f"g{i}" for i in range(len(keys))]
    inner = rows.annotate(
        **{name: F(k) for name, k in zip(names, keys, strict=True)},
        d=Seconds(_duration(later, "created_at")),
    ).values(*names, "cur", "d")
    sql, params = inner.query.sql_with_params()
    cols, grouped = ", ".join(names), ", ".join(f"GROUPING({n})" for n in names)
    # With groups up (`groups`: the groups, then the groups up), the groups up first: a
    # group lies within one group up (an agent in its team, a version in its agent), so
    # the groups' set (up, cur, group) and the groups up's (up, cur) are read from one
    # sort of the durations.
    sets = "(g1, cur, g0), (g1, cur)" if len(names) == 2 else "(g0, cur)"
    # Only this module's names go into the statement; Django's compiled subquery keeps its
    # values as params.
    statement = (
        f"SELECT {cols}, cur, {grouped}, "  # noqa: S608
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY d) "
        f"FROM ({sql}) AS durations GROUP BY GROUPING SETS ({sets})"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        found = cursor.fetchall()
    n = len(names)
    for row in found:
        gids, cur, flags = row[:n], row[n], row[n + 1 : 2 * n + 1]
        i = flags.index(0)  # the grouping set of this row: its key not rolled up
        yield figures_of(i, gids[i], cur), row[-2], row[-1]


def _steps(base: QuerySet[Run], g: Grouping, of: Any) -> None:
    """From the runs to their steps (the reverse join), so Postgres reads the runs of the
    window by their index and each run's steps by theirs; a step query filtered by
    `run__in` had to join every run of the history for the group and the window."""
    tool, model = Q(actions__kind=Action.Kind.TOOL), Q(actions__kind=Action.Kind.MODEL)
    rows = (
        base.annotate(cur=g.split(""))
        .values(g.key, "cur")
        .annotate(
            steps=Count("actions", filter=tool),
            denied=Count("actions", filter=tool & Q(actions__status=Action.Status.DENIED)),
            shadow_differs=Count(
                "actions",
                filter=tool
                & Q(actions__shadow__isnull=False)
                & ~Q(actions__shadow__effect=F("actions__decision")),
            ),
            model_calls=Count("actions", filter=model),
            tokens_in=Sum(
                Cast(KeyTextTransform("tokens_in", "actions__meta"), IntegerField()), filter=model
            ),
            tokens_out=Sum(
                Cast(KeyTextTransform("tokens_out", "actions__meta"), IntegerField()), filter=model
            ),
            cost=Sum(
                Cast(KeyTextTransform("cost_eur", "actions__meta"), FloatField()), filter=model
            ),
        )
    )
    for row in rows:
        f = of(row)
        f.steps, f.denied, f.model_calls = row["steps"], row["denied"], row["model_calls"]
        f.shadow_differs = row["shadow_differs"]
        f.tokens_in, f.tokens_out = row["tokens_in"] or 0, row["tokens_out"] or 0
        f.cost_eur = float(row["cost"] or 0)


def _requests(run_ids: Any, g: Grouping, of: Any) -> None:
    """The requests held for people, and those decided within the agent's target."""
    in_sql = _in_sql()
    decided = Q(status__in=DECIDED)
    # A request is held after its run was created, so none of the window's runs has one
    # created before the window: said outright, Postgres reads the window's requests and
    # then their runs, instead of every run of the history for the join.
    requests = ApprovalRequest.objects.filter(run__in=run_ids, created_at__gte=g.since).annotate(
        cur=g.split("run__")
    )
    extra: dict[str, Any] = {}
    if in_sql:
        wait = Case(
            When(decided, then=Seconds(_duration("decided_at", "created_at"))),
            default=None,
            output_field=FloatField(),
        )
        requests = requests.annotate(wait=wait)
        extra = {"within": Count("pk", filter=Q(wait__lte=F("agent__decision_sla_minutes") * 60))}
    rows = requests.values("run__" + g.key, "cur").annotate(
        held=Count("pk"),
        decided=Count("pk", filter=decided),
        rejected=Count("pk", filter=Q(status=ApprovalRequest.Status.REJECTED)),
        expired=Count("pk", filter=Q(status=ApprovalRequest.Status.EXPIRED)),
        **extra,
    )
    for row in rows:
        f = of(row, "run__")
        f.held, f.decided, f.rejected, f.expired = (
            row["held"],
            row["decided"],
            row["rejected"],
            row["expired"],
        )
        if in_sql:
            f.within_sla = row["within"]
    if not in_sql:
        within: dict[tuple[int, Any], int] = defaultdict(int)
        for group, cur, created, done, sla in requests.filter(decided).values_list(
            "run__" + g.key, "cur", "created_at", "decided_at", "agent__decision_sla_minutes"
        ):
            within[(group, cur)] += (done - created).total_seconds() <= sla * 60
        for (group, cur), n in within.items():
            of({"run__" + g.key: group, "cur": cur}, "run__").within_sla = n


def _decide_percentiles(
    of_runs: Q, groups: list[tuple[str, dict[int, Pair]]], window: Window
) -> None:
    """Time to decide p50/p95, from the decided requests' times alone, of the runs
    `of_runs` selects (a filter on the requests), for each grouping of `groups` in one
    query."""
    decided = ApprovalRequest.objects.filter(
        of_runs, created_at__gte=window.previous_start, status__in=DECIDED
    )
    for f, p50, p95 in _percentiles(decided, "run__", groups, window, "decided_at"):
        f.decide_p50, f.decide_p95 = p50, p95


def _value(base: QuerySet[Run], g: Grouping, of: Any) -> None:
    """Payments and purchase orders the runs' steps wrote: each sandbox row is found by
    its step's idempotency key (unique in its table). From the runs to their steps, as
    _steps."""

    def written(tool: str) -> QuerySet[Run]:
        step = FilteredRelation(
            "actions",
            condition=Q(
                actions__kind=Action.Kind.TOOL,
                actions__status=Action.Status.SUCCEEDED,
                actions__name=tool,
            ),
        )
        return base.annotate(step=step).filter(step__isnull=False).annotate(cur=g.split(""))

    payment = Payment.objects.filter(idempotency_key=OuterRef("step__idempotency_key"))
    paid = (
        written(PAY_TOOL)
        .annotate(currency=Subquery(payment.values("currency")[:1]))
        .values(g.key, "cur", "currency")
        .annotate(total=Sum(Subquery(payment.values("amount")[:1])))
    )
    for row in paid:
        if row["currency"] is not None and row["total"] is not None:
            f = of(row)
            f.paid[row["currency"]] = f.paid.get(row["currency"], Decimal(0)) + Decimal(
                str(row["total"])
            )
    order = PurchaseOrder.objects.filter(idempotency_key=OuterRef("step__idempotency_key"))
    ordered = (
        written(ORDER_TOOL)
        .values(g.key, "cur")
        .annotate(total=Sum(Subquery(order.values("total")[:1])))
    )
    for row in ordered:
        if row["total"] is not None:
            of(row).ordered = Decimal(str(row["total"]))


# --- the rollup, read ------------------------------------------------------------------------

HOUR = timedelta(hours=1)
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


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(at: datetime) -> datetime:
    floor = floor_hour(at)
    return floor if floor == at else floor + HOUR


DAY = timedelta(days=1)
DAY_HOURS = 24  # KpiHour.hours of a day's row


def floor_day(at: datetime) -> datetime:
    return floor_hour(at).replace(hour=0)


def ceil_day(at: datetime) -> datetime:
    floor = floor_day(at)
    return floor if floor == at else floor + DAY


@dataclass(frozen=True)
class RollupPlan:
    """Which runs of a window the rollup holds, and which the journal must give: `rollup`
    selects rows of the rollup's tables (on agent and hour), `journal` runs."""

    rollup: Q
    journal: Q
    hours: int  # whole hours read from the rollup, for the agents of the scope


def plan_rollup(scope: Q, window: Window) -> RollupPlan:
    """The whole hours of the window (and of the window before) that the rollup has
    examined — less the hour the two windows meet in, unless they meet on the hour, and
    less the hours still open for an agent (KpiOpenHour) — are read from the rollup, from
    its day rows where a whole day of an agent is rolled up (windows of days: their bars
    are days); the rest of the window from the journal. Two queries."""
    through = KpiRollup.objects.values_list("through", flat=True).first()
    lo = ceil_hour(window.previous_start)
    hi = floor_hour(window.end)
    if through is None or min(hi, through) <= lo:
        return RollupPlan(rollup=Q(pk__in=[]), journal=Q(), hours=0)
    hi = min(hi, through)
    cut = floor_hour(window.start) if floor_hour(window.start) != window.start else None
    open_hours: dict[datetime, list[int]] = defaultdict(list)
    open_days: dict[datetime, set[int]] = defaultdict(set)
    for agent_id, hour in (
        KpiOpenHour.objects.filter(scope, hour__gte=lo, hour__lt=hi)
        .order_by("hour", "agent_id")
        .values_list("agent_id", "hour")
    ):
        open_hours[hour].append(agent_id)
        open_days[floor_day(hour)].add(agent_id)
    hour_rows = Q(hours=1, hour__gte=lo, hour__lt=hi)
    # Each range bounded on both sides, so Postgres reads each by the index of the runs'
    # creation rather than the whole window filtered.
    journal = Q(created_at__gte=window.previous_start, created_at__lt=lo) | Q(
        created_at__gte=hi, created_at__lt=window.end
    )
    if cut is not None:
        hour_rows &= ~Q(hour=cut)
        journal |= Q(created_at__gte=cut, created_at__lt=cut + HOUR)
    for hour, agents in open_hours.items():
        hour_rows &= ~Q(hour=hour, agent_id__in=agents)
        journal |= Q(created_at__gte=hour, created_at__lt=hour + HOUR, agent_id__in=agents)
    hours = int((hi - lo) / HOUR) - (cut is not None and lo <= cut < hi)
    # The whole days within, but the one the windows meet in (unless they meet at
    # midnight) and an agent's days with an hour open, from the day rows; their hours'
    # rows are then left out.
    dlo, dhi = ceil_day(lo), floor_day(hi)
    if window.hourly or dhi <= dlo:
        return RollupPlan(rollup=hour_rows, journal=journal, hours=hours)
    day_rows = Q(hours=DAY_HOURS, hour__gte=dlo, hour__lt=dhi)
    by_days = Q(hour__gte=dlo, hour__lt=dhi)
    meet = floor_day(window.start)
    if meet != window.start:
        day_rows &= ~Q(hour=meet)
        by_days &= ~Q(hour__gte=meet, hour__lt=meet + DAY)
    for day, ids in open_days.items():
        day_rows &= ~Q(hour=day, agent_id__in=sorted(ids))
        by_days &= ~Q(hour__gte=day, hour__lt=day + DAY, agent_id__in=sorted(ids))
    return RollupPlan(rollup=(hour_rows & ~by_days) | day_rows, journal=journal, hours=hours)


def _from_rollup(scope: Q, key: str, window: Window, plan: RollupPlan) -> dict[int, Pair]:
    """The additive figures of the plan's rolled-up hours, grouped by `key`, with the
    runs and exceptions of each sparkline bar. Four queries."""
    pairs: dict[int, Pair] = defaultdict(Pair)

    def of(row: dict[str, Any]) -> Figures:
        pair = pairs[row[key]]
        return pair.current if row["cur"] else pair.previous

    if not plan.hours:
        return pairs
    cur = Case(When(hour__gte=window.start, then=Value(True)), default=Value(False))
    bucket = F("hour") if window.hourly else TruncDay("hour", tzinfo=UTC)
    buckets = window.buckets
    index = {at: i for i, at in enumerate(buckets)}
    sums = [f"sum_{name}" for name in ROLLED]
    rolled = KpiHour.objects.filter(scope, plan.rollup).annotate(cur=cur)
    # The sums a group and window (a few hundred rows), apart from the bars (runs and
    # exceptions a group and hour or day of the current window: thousands of rows, two
    # figures each) — one row a bar with every figure cost the page more in Python than
    # the query.
    rows = (
        rolled.values(key, "cur")
        .annotate(**{f"sum_{name}": Sum(name) for name in ROLLED})
        .order_by()
        .values_list(key, "cur", *sums)
    )
    for gid, is_cur, *values in rows:
        f = of({key: gid, "cur": is_cur})
        for name, value in zip(ROLLED, values, strict=True):
            if not value:
                continue
            if name == "ordered":
                value = Decimal(str(value))
            elif name == "cost_eur":
                value = float(value)
            setattr(f, name, getattr(f, name) + value)
    bars = (
        rolled.filter(hour__gte=window.start)
        .annotate(bar=bucket)
        .values(key, "bar")
        .annotate(runs_at=Sum("runs"), exceptions_at=Sum("exceptions"))
        .order_by()
        .values_list(key, "bar", "runs_at", "exceptions_at")
    )
    for gid, at, runs, exceptions in bars:
        if at.tzinfo is None:  # a truncation comes back naive on SQLite
            at = at.replace(tzinfo=UTC)
        slot = index.get(at)
        if slot is None:
            continue
        f = pairs[gid].current
        if not f.runs_per_bucket:
            f.runs_per_bucket = [0] * len(buckets)
            f.exceptions_per_bucket = [0] * len(buckets)
        f.runs_per_bucket[slot] += runs or 0
        f.exceptions_per_bucket[slot] += exceptions or 0
    paid = (
        KpiHourPaid.objects.filter(scope, plan.rollup)
        .annotate(cur=cur)
        .values(key, "cur", "currency")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    for row in paid:
        f = of(row)
        f.paid[row["currency"]] = f.paid.get(row["currency"], Decimal(0)) + Decimal(
            str(row["total"])
        )
    within = (
        KpiHourWait.objects.filter(
            scope, plan.rollup, minutes__lte=F("agent__decision_sla_minutes")
        )
        .annotate(cur=cur)
        .values(key, "cur")
        .annotate(n=Sum("decided"))
        .order_by()
    )
    for row in within:
        of(row).within_sla += row["n"] or 0
    return pairs


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
    part_percentiles: bool = True,
) -> tuple[dict[int, Pair], dict[int, Pair]]:
    """The KPIs of `runs` grouped `by` (versions, agents) and grouped `up` (agents, teams),
    where `parent` names each group's group up (a version's agent, an agent's team): the
    groups up are their parts added — counts, sums, money, bars — and only their
    percentiles are asked of the database, in the parts' percentile queries (one
    query for either pair of percentiles), not every figure twice; without
    `part_percentiles`, the groups up's percentiles only (the parts' stay None: the fleet
    page shows no agent's).
    Same figures as figures(runs, up, window); `scope` as there."""
    pairs: dict[int, Pair] = defaultdict(Pair)
    with _without_jit():
        parts = _figures(
            runs,
            by,
            window,
            sparklines=True,
            scope=scope,
            up=(up, pairs),
            part_percentiles=part_percentiles,
        )
    for gid, pair in parts.items():
        whole = pairs[parent(gid)]
        _add(whole.current, pair.current)
        _add(whole.previous, pair.previous)
    return parts, dict(pairs)


def _add(into: Figures, part: Figures) -> None:
    for name, value in vars(part).items():
        if name in PERCENTILES:
            continue
        if name == "paid":
            for currency, amount in value.items():
                into.paid[currency] = into.paid.get(currency, Decimal(0)) + amount
        elif isinstance(value, list):
            mine = getattr(into, name)
            if len(mine) < len(value):
                mine.extend([0] * (len(value) - len(mine)))
            for i, n in enumerate(value):
                mine[i] += n
        else:
            setattr(into, name, getattr(into, name) + value)


def _sparklines(base: QuerySet[Run], key: str, window: Window, pairs: dict[int, Pair]) -> None:
    """Runs and exceptions per hour (a day's window) or per day, over the window."""
    buckets = window.buckets
    index = {at: i for i, at in enumerate(buckets)}
    trunc = TruncHour if window.hourly else TruncDay
    rows = (
        base.filter(created_at__gte=window.start)
        .annotate(bucket=trunc("created_at", tzinfo=UTC))
        .values(key, "bucket")
        .annotate(n=Count("pk"), exceptions=Count("pk", filter=_exception(window.previous_start)))
    )
    for pair in pairs.values():
        pair.current.runs_per_bucket = [0] * len(buckets)
        pair.current.exceptions_per_bucket = [0] * len(buckets)
    for row in rows:
        slot = index.get(row["bucket"])
        if slot is None:
            continue
        current = pairs[row[key]].current
        if not current.runs_per_bucket:
            current.runs_per_bucket = [0] * len(buckets)
            current.exceptions_per_bucket = [0] * len(buckets)
        current.runs_per_bucket[slot] += row["n"]
        current.exceptions_per_bucket[slot] += row["exceptions"]


# --- what the pages show -------------------------------------------------------------------


def agent_page(agent: Agent, window: Window) -> dict[str, Any]:
    """An agent's KPIs (for an agent the caller may see: agents.permissions), its
    versions' beside them, and during a canary the canary beside the live version."""
    scope = Q(agent=agent)
    # A run's version is one of its agent's.
    by_version, by_agent = figures_summed(
        Run.objects.filter(scope), "version", "agent", lambda _: agent.pk, window, scope=scope
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


def fleet_page(user: Any, window: Window) -> dict[str, Any]:
    """The KPIs of the teams and agents the person may see (agents.permissions): a team's
    figures cover only its agents the person sees."""
    seen = list(agents_for_user(user).order_by("team__name", "team_id", "name", "pk"))
    # The agents by their ids, not by the permission query again as a subquery in every
    # query: Postgres then filters the window's runs by the list as it reads them from the
    # index, where the subquery made it misjudge the journal's part and join it with every
    # agent in a nested loop (the requests' query at 24 hours: 56 ms, 33 of them that join).
    if not seen:
        return {"teams": []}
    scope = Q(agent_id__in=[a.pk for a in seen])
    team_of = {a.pk: a.team_id for a in seen}
    by_agent, by_team = figures_summed(
        Run.objects.filter(scope),
        "agent",
        "team",
        team_of.__getitem__,
        window,
        scope=scope,
        part_percentiles=False,
    )
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
        pair = by_agent.get(agent.pk, Pair())
        team["agents"].append({"agent": agent, "f": pair.current, "before": pair.previous})
    return {"teams": list(teams.values())}


def _fill_buckets(pair: Pair, window: Window) -> None:
    if not pair.current.runs_per_bucket:
        pair.current.runs_per_bucket = [0] * len(window.buckets)
        pair.current.exceptions_per_bucket = [0] * len(window.buckets)


@dataclass(frozen=True)
class Line:
    """One figure as a page shows it: now, in the window before, and which way it went
    (`worse` when it moved the way a manager would not want)."""

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
        out.append(Line(name, label, show(now, how), show(before, how), trend, worse))
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

    def bars() -> Any:
        for i, (n, e) in enumerate(zip(runs, exceptions, strict=True)):
            x, h, he = i * (bar + gap), round(n / peak * height, 1), round(e / peak * height, 1)
            tip = f"{n} run{'s' if n != 1 else ''}, {e} with an exception"
            yield x, height - h, bar, h, tip, x, height - he, bar, he

    parts = format_html_join(
        "",
        '<rect class="runs" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>'
        '<rect class="exceptions" x="{}" y="{}" width="{}" height="{}"></rect>',
        bars(),
    )
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
