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
the number of agents or runs. The percentiles are Postgres' percentile_cont (linear
interpolation between the closest ranks), computed here with numpy from the durations
the database returns packed a group at a time (on the embedded default's SQLite, one by
one): the same definition on both databases, and no sort of a month's durations in
Postgres.

The pages read the additive figures of a window's whole hours (and whole days) from the
rollup agents.rollup keeps from the journal — derived data, computed by this module's
journal queries grouped by hour, rebuilt from the journal at will — and only the rest
from the journal: the partial hours at the window's edges, the hours not examined yet,
and the hours still open (a run not final, a request pending). The percentiles are
taken from the durations of both parts together, the rolled-up part's read from the
journal. Nothing in a rolled-up hour changes any more, so the page keeps what it read of
that part in the shared cache, under everything it depends on (closed_part), and reads
only the journal's part on every request.

This module sits above the approvals app in the layers (pyproject.toml): it reads the
approval requests.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, cast

import numpy as np
from django.core.cache import caches
from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    BinaryField,
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
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from redis.exceptions import RedisError

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

log = logging.getLogger(__name__)

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
    """An interval in seconds (Postgres), as a double: date_part, not EXTRACT, which gives
    a numeric (converting a month's durations from it cost a third of their read)."""

    template = "date_part('epoch', %(expressions)s)"
    output_field = FloatField()


class Durations(Aggregate):
    """A group's durations in seconds as one bytea of big-endian float8s (Postgres): a
    month of a fleet's runs (120,000) comes back in a few hundred values, neither sorted
    by Postgres (the percentiles' sorts were most of a month's page) nor parsed a number
    at a time; numpy reads each with np.frombuffer."""

    function = "string_agg"
    template = "string_agg(float8send(%(expressions)s), ''::bytea)"
    output_field = BinaryField()


def percentile_cont(values: Sequence[float] | np.ndarray, fraction: float) -> float | None:
    """Postgres' percentile_cont: linear interpolation between the closest ranks (numpy's
    default method)."""
    if len(values) == 0:
        return None
    return float(np.percentile(values, fraction * 100))


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
    # The runs' sparkline bars, when asked: the bar of a run of the current window (the
    # start of its hour or day), and where each group's runs and exceptions of a bar go.
    bar: Any = None
    bars: Bars | None = None
    # Whether the runs' cycle times and the requests' times to decide are asked too (the
    # pages' percentiles: journal_figures).
    durations: bool = False


def _paging(key: str, window: Window, bars: Bars | None = None) -> Grouping:
    bar = None
    if bars is not None:
        trunc = TruncHour if window.hourly else TruncDay
        bar = Case(
            When(created_at__gte=window.start, then=trunc("created_at", tzinfo=UTC)),
            default=None,
        )
    return Grouping(
        key, lambda prefix: _current(prefix, window), window.previous_start, bar, bars, True
    )


class Bars:
    """Sparkline bars being counted: each part's runs and exceptions a bar, added to its
    group's (`group_of`) as an array of two rows (runs, exceptions) and a column a bar;
    written into the groups' current Figures by `done`."""

    def __init__(self, window: Window, group_of: Callable[[int], int] | None = None):
        self.buckets = window.buckets
        self.index = {at: i for i, at in enumerate(self.buckets)}
        self.group_of = group_of or _same
        self.counts: dict[int, np.ndarray] = {}

    def _of(self, gid: int) -> np.ndarray:
        group = self.group_of(gid)
        counts = self.counts.get(group)
        if counts is None:
            counts = self.counts[group] = np.zeros((2, len(self.buckets)), dtype=np.int64)
        return counts

    def add(self, gid: int, at: datetime, runs: int | None, exceptions: int | None) -> None:
        if at.tzinfo is None:  # a truncation comes back naive on SQLite
            at = at.replace(tzinfo=UTC)
        slot = self.index.get(at)
        if slot is not None:
            counts = self._of(gid)
            counts[0, slot] += runs or 0
            counts[1, slot] += exceptions or 0

    def add_counts(self, gid: int, counts: np.ndarray) -> None:
        mine = self._of(gid)
        mine += counts

    def done(self, pairs: dict[int, Pair]) -> None:
        for group, counts in self.counts.items():
            f = pairs[group].current
            f.runs_per_bucket, f.exceptions_per_bucket = counts[0].tolist(), counts[1].tolist()


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
    kept_as: str = "",
    up: Target | None = None,
    part_percentiles: bool = True,
) -> dict[int, Pair]:
    """figures(), and with `up` the groups up's percentiles and sparkline bars, which go
    straight into their pairs: the pages draw the bars of the groups up alone (a team's,
    an agent's)."""
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
    plan = plan_rollup(scope, window) if scope is not None else None
    closed = Closed()
    if plan is not None and scope is not None and plan.hours:
        # The journal's part alone (its ranges lie within the window): with the window's
        # range around them too, Postgres took the ranges' share of the window's share and
        # expected a handful of runs where there are a thousand (nested loops over them).
        base = runs.filter(plan.journal).order_by()
        closed = closed_part(scope, kept_as, key, window, plan, sparklines)
    cycle, decide = journal_figures(base, _paging(key, window, bars), of)
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
    for f, p50, p95 in _percentiles([cycle, closed.cycle], targets):
        f.cycle_p50, f.cycle_p95 = p50, p95
    for f, p50, p95 in _percentiles([decide, closed.decide], targets):
        f.decide_p50, f.decide_p95 = p50, p95
    return dict(pairs)


def _same(gid: int) -> int:
    return gid


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


# A part's durations in seconds, by (part id, in the current window): big-endian float8s.
Parts = dict[tuple[int, bool], bytes]


def journal_figures(
    base: QuerySet[Run], grouping: Grouping, of: Callable[..., Figures]
) -> tuple[Parts, Parts]:
    """Every additive figure of the runs of `base`, grouped (Grouping), read from the
    journal into the Figures `of(row, prefix)` names. Four queries. When the grouping asks
    for durations, also the finished runs' cycle times and the decided requests' times to
    decide, by part and split (Parts; else empty): on Postgres packed by the runs' and the
    requests' queries themselves, on SQLite read by two more."""
    cycle: Parts = {}
    decide: Parts = {}
    packed = grouping.durations and _in_sql()
    _runs(base, grouping, of, cycle if packed else None)
    _steps(base, grouping, of)
    _requests(base.values("pk"), grouping, of, decide if packed else None)
    _value(base, grouping, of)
    if grouping.durations and not packed:
        cycle = _cycle_durations(base, grouping.key, grouping.split)
        decide = _decide_durations(
            Q(run__in=base.values("pk")), grouping.key, grouping.since, grouping.split
        )
    return cycle, decide


def _pack(parts: Parts, gid: int, cur: Any, blob: Any) -> None:
    """A group's packed durations (Durations) added to its part's, if it has any."""
    if blob:
        at = (gid, bool(cur))
        parts[at] = parts.get(at, b"") + bytes(blob)


def _runs(base: QuerySet[Run], g: Grouping, of: Any, cycle: Parts | None) -> None:
    """The runs' counts, and their sparkline bars when the grouping asks for them (a row
    a group, window and bar: the exceptions' look-ups run once for both); with `cycle`
    (Postgres), the finished runs' cycle times packed into it."""
    rows = base.annotate(cur=g.split(""))
    grouped = [g.key, "cur"]
    if g.bar is not None:
        rows, grouped = rows.annotate(bar=g.bar), [*grouped, "bar"]
    # An unfinished run's cycle time is NULL, which string_agg leaves out.
    packed = (
        {} if cycle is None else {"ds": Durations(Seconds(_duration("finished_at", "created_at")))}
    )
    rows = rows.values(*grouped).annotate(
        n=Count("pk"),
        finished=Count("pk", filter=Q(finished_at__isnull=False)),
        succeeded=Count("pk", filter=Q(status=Run.Status.SUCCEEDED)),
        failed=Count("pk", filter=Q(status=Run.Status.FAILED)),
        diverged=Count("pk", filter=Q(status=Run.Status.FAILED, error__contains=DIVERGED)),
        exceptions=Count("pk", filter=_exception(g.since)),
        **packed,
    )
    for row in rows:
        if cycle is not None:
            _pack(cycle, row[g.key], row["cur"], row["ds"])
        f = of(row)
        f.runs += row["n"]
        f.finished += row["finished"]
        f.succeeded += row["succeeded"]
        f.failed += row["failed"]
        f.diverged += row["diverged"]
        f.exceptions += row["exceptions"]
        if g.bars is not None and row["bar"] is not None:
            g.bars.add(row[g.key], row["bar"], row["n"], row["exceptions"])


def _cycle_durations(base: QuerySet[Run], key: str, split: Callable[[str], Any]) -> Parts:
    """The finished runs' cycle times, from their creation and end alone (read from the
    index run_created_durations on Postgres)."""
    finished = base.filter(finished_at__isnull=False)
    return _durations(finished, "", key, split, "finished_at")


def _decide_durations(of_runs: Q, key: str, since: datetime, split: Callable[[str], Any]) -> Parts:
    """The times to decide of the decided requests of the runs `of_runs` selects (a filter
    on the requests), from the requests' times alone."""
    decided = ApprovalRequest.objects.filter(of_runs, created_at__gte=since, status__in=DECIDED)
    return _durations(decided, "run__", key, split, "decided_at")


def _durations(
    rows: QuerySet[Any], prefix: str, key: str, split: Callable[[str], Any], later: str
) -> Parts:
    """`later` - created_at over `rows` (prefix: the path from them to the run), by each
    part `key` names and `split` (of the run's creation). One query: on Postgres each
    part's packed by Durations, on SQLite read one by one and packed here."""
    rows = rows.filter(**{f"{later}__isnull": False}).annotate(cur=split(prefix))
    rows = rows.order_by()
    if _in_sql():
        packed = (
            rows.annotate(d=Seconds(_duration(later, "created_at")))
            .values(prefix + key, "cur")
            .annotate(ds=Durations("d"))
            .values_list(prefix + key, "cur", "ds")
        )
        return {(gid, bool(cur)): bytes(blob) for gid, cur, blob in packed}
    durations: dict[tuple[Any, bool], list[float]] = defaultdict(list)
    for gid, cur, created, done in rows.values_list(prefix + key, "cur", "created_at", later):
        durations[(gid, bool(cur))].append((done - created).total_seconds())
    return {at: np.asarray(v, dtype=">f8").tobytes() for at, v in durations.items()}


# Where a group's percentiles go: its pairs, and the group of each part (a leaf group).
Target = tuple[dict[int, Pair], Callable[[int], int]]


def _percentiles(
    sources: Iterable[Parts], targets: list[Target]
) -> Iterator[tuple[Figures, float, float]]:
    """The p50 and p95 of each group of each target (the pairs to fill, and the group of
    each part), from its parts' durations in every source together (the journal's part of
    the window and the rollup's): the Figures each pair of percentiles belongs to. One
    definition for both databases (percentile_cont's, by numpy)."""
    parts: dict[tuple[int, bool], list[bytes]] = defaultdict(list)
    for source in sources:
        for at, blob in source.items():
            parts[at].append(blob)
    for pairs, group_of in targets:
        together: dict[tuple[int, bool], list[bytes]] = defaultdict(list)
        for (gid, cur), blobs in parts.items():
            together[(group_of(gid), cur)] += blobs
        for (gid, cur), blobs in together.items():
            values = np.frombuffer(b"".join(blobs), dtype=">f8")
            if not len(values):
                continue
            p50, p95 = (float(p) for p in np.percentile(values, [50, 95]))
            pair = pairs[gid]
            yield pair.current if cur else pair.previous, p50, p95


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


def _requests(run_ids: Any, g: Grouping, of: Any, decide: Parts | None) -> None:
    """The requests held for people, and those decided within the agent's target; with
    `decide` (Postgres), the decided ones' times to decide packed into it."""
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
        if decide is not None:  # NULL for a request not decided: left out
            extra["ds"] = Durations("wait")
    rows = requests.values("run__" + g.key, "cur").annotate(
        held=Count("pk"),
        decided=Count("pk", filter=decided),
        rejected=Count("pk", filter=Q(status=ApprovalRequest.Status.REJECTED)),
        expired=Count("pk", filter=Q(status=ApprovalRequest.Status.EXPIRED)),
        **extra,
    )
    for row in rows:
        if decide is not None:
            _pack(decide, row["run__" + g.key], row["cur"], row["ds"])
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


def _value(base: QuerySet[Run], g: Grouping, of: Any) -> None:
    """Payments and purchase orders the runs' steps wrote, in one query: each sandbox row
    is found by its step's idempotency key (unique in its table), a payment's amount and
    currency in the payments, an order's total in the orders (its currency NULL). From the
    runs to their steps, as _steps."""
    step = FilteredRelation(
        "actions",
        condition=Q(
            actions__kind=Action.Kind.TOOL,
            actions__status=Action.Status.SUCCEEDED,
            actions__name__in=(PAY_TOOL, ORDER_TOOL),
        ),
    )
    payment = Payment.objects.filter(idempotency_key=OuterRef("step__idempotency_key"))
    order = PurchaseOrder.objects.filter(idempotency_key=OuterRef("step__idempotency_key"))
    paying = Q(step__name=PAY_TOOL)
    amount = Case(
        When(paying, then=Subquery(payment.values("amount")[:1])),
        default=Subquery(order.values("total")[:1]),
    )
    rows = (
        base.annotate(step=step)
        .filter(step__isnull=False)
        .annotate(
            cur=g.split(""),
            tool=F("step__name"),
            currency=Case(When(paying, then=Subquery(payment.values("currency")[:1]))),
        )
        .values(g.key, "cur", "tool", "currency")
        .annotate(total=Sum(amount))
    )
    for row in rows:
        if row["total"] is None:
            continue
        f, total = of(row), Decimal(str(row["total"]))
        if row["tool"] == ORDER_TOOL:
            f.ordered += total
        elif row["currency"] is not None:
            f.paid[row["currency"]] = f.paid.get(row["currency"], Decimal(0)) + total


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
    selects rows of the rollup's tables (on agent and hour), `rolled` the runs they hold,
    `journal` the other runs."""

    rollup: Q
    journal: Q
    hours: int  # whole hours read from the rollup, for the agents of the scope
    rolled: Q = field(default_factory=lambda: Q(pk__in=[]))
    # What the rollup's part is, said as plain values (the closed part's cache key):
    # the hour and day ranges read from it, and the rollup's generation.
    ranges: tuple[tuple[int, datetime, datetime], ...] = ()
    generation: uuid.UUID | None = None


def plan_rollup(scope: Q, window: Window) -> RollupPlan:
    """The whole hours of the window (and of the window before) that the rollup has
    examined — less the hour the two windows meet in, unless they meet on the hour, and
    less every hour still open for an agent of the scope (KpiOpenHour) — are read from
    the rollup, from its day rows where a whole day is rolled up (windows of days: their
    bars are days); the rest of the window from the journal. An open hour is read from
    the journal for every agent of the scope, not only for the agents it is open for: a
    few runs more, and the plan is hour ranges alone (no list of agents per hour in
    every query: with the hours of a thousand waiting runs open, building and binding
    those lists was most of the fleet page's time). Two queries."""
    mark = KpiRollup.objects.values_list("through", "generation").first()
    through, generation = mark if mark is not None else (None, None)
    lo = ceil_hour(window.previous_start)
    hi = floor_hour(window.end)
    if through is None or min(hi, through) <= lo:
        return RollupPlan(rollup=Q(pk__in=[]), journal=Q(), hours=0)
    hi = min(hi, through)
    # The hours of [lo, hi) read from the journal: the one the windows meet in, unless
    # they meet on the hour, and the open ones.
    from_journal = set(
        KpiOpenHour.objects.filter(scope, hour__gte=lo, hour__lt=hi)
        .order_by()
        .values_list("hour", flat=True)
        .distinct()
    )
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
    journal = any_of(Q(created_at__gte=a, created_at__lt=b) for a, b in _merged(spans) if a < b)
    hours = sum((b - a) // HOUR for a, b in hour_ranges + day_ranges)
    ranges = tuple((1, a, b) for a, b in hour_ranges) + tuple(
        (DAY_HOURS, a, b) for a, b in day_ranges
    )
    return RollupPlan(rollup, journal, hours, rolled, ranges, generation)


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


# What a page keeps of a window's rolled-up part (closed_part): its format (counted up
# when Closed or its queries change), and how long — the plan moves on each hour, so an
# entry is read for an hour at most, and then left to expire.
CLOSED_FORMAT = 2
CLOSED_KEPT_SECONDS = 2 * 3600


def closed_part(
    scope: Q, kept_as: str, key: str, window: Window, plan: RollupPlan, bars: bool
) -> Closed:
    """The plan's rolled-up part of the window for the agents of `scope`, grouped by `key`
    (and by bar, when asked: `bars`). The rolled-up hours are closed — no run of them,
    step, request or payment changes any more — so the part is the same for as long as
    the plan's ranges, the rollup's generation and what `kept_as` says of the scope's
    agents (their ids and SLA targets: kept_as_for) are: it is read once and kept
    in the shared cache under all of them (not kept when `kept_as` is empty). Six
    queries when read, none when kept."""
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
    return kept(
        "kpis:closed",
        said,
        lambda: _read_closed(scope, key, window, plan, bars),
        CLOSED_KEPT_SECONDS,
    )


T = TypeVar("T")


def kept(name: str, said: tuple[Any, ...], read: Callable[[], T], seconds: int) -> T:
    """`read()`, kept in the shared cache for `seconds` under `name` and `said` — every
    plain value the result depends on — and read anew without a kept one. The cache
    unreachable, the page reads and says so in the log, rather than failing."""
    entry = f"{name}:{hashlib.sha256(repr(said).encode()).hexdigest()}"
    cache = caches["default"]
    try:
        found = cache.get(entry)
    except (RedisError, OSError):
        log.warning("kpis.cache_unreachable", exc_info=True)
        return read()
    if found is not None:
        return cast(T, found)
    value = read()
    try:
        cache.set(entry, value, seconds)
    except (RedisError, OSError):
        log.warning("kpis.cache_unreachable", exc_info=True)
    return value


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
    split = lambda prefix: _current(prefix, window)  # noqa: E731
    out.cycle = _cycle_durations(runs, key, split)
    out.decide = _decide_durations(
        _under(scope, "run__") & _under(plan.rolled, "run__"), key, window.previous_start, split
    )
    return out


def _add_closed(closed: Closed, of: Callable[..., Figures], key: str, bars: Bars | None) -> None:
    """The closed part's sums added to the Figures `of(row)` names, and its bars to
    `bars` (None: none)."""
    for gid, is_cur, *values in closed.sums:
        f = of({key: gid, "cur": is_cur})
        for name, value in zip(ROLLED, values, strict=True):
            if not value:
                continue
            if name == "ordered":
                value = Decimal(str(value))
            elif name == "cost_eur":
                value = float(value)
            setattr(f, name, getattr(f, name) + value)
    for gid, is_cur, currency, total in closed.paid:
        f = of({key: gid, "cur": is_cur})
        f.paid[currency] = f.paid.get(currency, Decimal(0)) + Decimal(str(total))
    for gid, is_cur, n in closed.within:
        of({key: gid, "cur": is_cur}).within_sla += n or 0
    if bars is not None:
        for gid, counts in closed.bars.items():
            bars.add_counts(gid, counts)


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
) -> tuple[dict[int, Pair], dict[int, Pair]]:
    """The KPIs of `runs` grouped `by` (versions, agents) and grouped `up` (agents, teams),
    where `parent` names each group's group up (a version's agent, an agent's team): the
    groups up are their parts added — counts, sums, money — their sparkline bars are
    counted a group up and bar, and their percentiles come from their parts' durations
    (one query for either pair of percentiles), not every figure twice; without
    `part_percentiles`, the groups up's percentiles only (the parts' stay None: the fleet
    page shows no agent's).
    Same figures as figures(runs, up, window); `scope` as there, and `kept_as` what the
    rolled-up part is kept under between requests (closed_part; "": read each time)."""
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
    for name in SUMMED:
        setattr(into, name, getattr(into, name) + getattr(part, name))
    for currency, amount in part.paid.items():
        into.paid[currency] = into.paid.get(currency, Decimal(0)) + amount
    for name in BARS:
        value, mine = getattr(part, name), getattr(into, name)
        if len(mine) < len(value):
            mine.extend([0] * (len(value) - len(mine)))
        for i, n in enumerate(value):
            mine[i] += n


# --- what the pages show -------------------------------------------------------------------


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
    # With their teams, not their live versions (agents_for_user's default): the page shows
    # no version, and a hundred versions' policies were a quarter of this query's time.
    seen = list(
        agents_for_user(user)
        .select_related(None)
        .select_related("team")
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
        team["agents"].append(
            {
                "agent": agent,
                "url": f"{reverse('agent-kpis', args=[agent.slug])}?window={window.name}",
                "cells": [show(getattr(f, name), how) for name, how in AGENT_CELLS],
            }
        )
    return {"teams": list(teams.values())}


def fleet_figures(
    agents: list[Agent], window: Window, *, keep: bool = True
) -> tuple[dict[int, Pair], dict[int, Pair]]:
    """The fleet page's figures of these agents, by agent and by team (the teams' are
    their agents' here; the agents' percentiles are not asked: the page shows none), the
    window's rolled-up part kept between requests (`keep`; closed_part)."""
    scope = Q(agent_id__in=[a.pk for a in agents])
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
    )


# The figures of an agent's row on the fleet page (the columns of its table), as `show`s.
AGENT_CELLS = (
    ("runs", "count"),
    ("exception_rate", "share"),
    ("held_share", "share"),
    ("sla_attainment", "share"),
    ("cost_per_run", "eur"),
)


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
