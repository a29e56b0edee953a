"""The KPIs read from the journal: a few aggregate queries grouped by a part (agent, team,
version) and by a split of the runs' creation (the window or the one before; the hour, for
the rollup), whatever the number of runs — and, for the percentiles, the parts' durations
packed."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import numpy as np
from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    BinaryField,
    Case,
    Count,
    DateTimeField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncDay, TruncHour

from agents.kpis.statements import (
    AmongIds,
    Bound,
    BoundIds,
    compiled,
    kept_statement,
    run_statement,
)
from agents.kpis.windows import Figures, Pair, Window
from agents.models import Action, Payment, PurchaseOrder, Run, ShadowDecision
from approvals.models import ApprovalRequest

# How the runtime words a run it failed because its program asked for another step than
# the journal holds (agents.gateway.core.check_same; tests/agents/test_gateway.py).
DIVERGED = "diverged at step"
# The sandbox tables and the tools that write them, keyed by the step's idempotency key.
PAY_TOOL = "payments.pay"
ORDER_TOOL = "purchasing.create_po"

KEYS = {"agent": "agent_id", "team": "agent__team_id", "version": "version_id"}
DECIDED = (ApprovalRequest.Status.APPROVED, ApprovalRequest.Status.REJECTED)


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


def _p50_p95(values: np.ndarray) -> tuple[float, float]:
    """percentile_cont's p50 and p95 of values (not empty), from the values at the ranks
    each lies between alone (np.partition): np.percentile, the same, cost more in its
    own steps than in the values for a page's few hundred groups."""
    last = len(values) - 1
    ranks = (0.5 * last, 0.95 * last)
    below = [int(r) for r in ranks]
    around = sorted({*below, *(min(b + 1, last) for b in below)})
    part = np.partition(values, around)
    out = []
    for rank, b in zip(ranks, below, strict=True):
        lo, hi = float(part[b]), float(part[min(b + 1, last)])
        out.append(lo + (hi - lo) * (rank - b))
    return out[0], out[1]


def _in_sql() -> bool:
    return connection.vendor == "postgresql"


def _between(prefix: str, window: Window) -> dict[str, Any]:
    return {
        f"{prefix}created_at__gte": window.previous_start,
        f"{prefix}created_at__lt": window.end,
    }


def _current(prefix: str, start: Any) -> Case:
    """Whether the run was created in the current window (from `start`, a datetime or a
    Bound one) rather than the window before."""
    return Case(
        When(**{f"{prefix}created_at__gte": start}, then=Value(True)),
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
    # A page's grouping: its expressions and its runs' filter hold Bound values, `values`
    # gives them, and `shape` says what else its queries depend on — they are compiled
    # once a process (statements.kept_statement). None: built and compiled each time.
    shape: tuple[Any, ...] | None = None
    values: dict[str, Any] | None = None


def _fetch(name: str, g: Grouping, build: Callable[[], QuerySet[Any]]) -> Iterator[dict[str, Any]]:
    """The rows of the query `build` makes (a queryset of values), kept under the
    grouping's shape when it has one."""
    if g.shape is None:
        return run_statement(compiled(build()), g.values)
    return run_statement(kept_statement((name, *g.shape), build), g.values)


def _paging(
    key: str, window: Window, bars: Bars | None = None, runs_shape: tuple[Any, ...] | None = None
) -> Grouping:
    """A page's grouping: the window or the window before, and the current window's bars
    when asked (`bars`). With `runs_shape` — what the runs' filter depends on besides its
    Bound values (journal_runs) — the window's bounds are Bound values too, and the
    page's queries are kept (statements)."""
    start: Any = window.start
    since: Any = window.previous_start
    shape, values = None, None
    if runs_shape is not None:
        start, since = Bound("start", DateTimeField()), Bound("since", DateTimeField())
        shape = (key, window.hourly, bars is not None, *runs_shape)
        values = {"start": window.start, "since": window.previous_start}
    bar = None
    if bars is not None:
        trunc = TruncHour if window.hourly else TruncDay
        bar = Case(
            When(created_at__gte=start, then=trunc("created_at", tzinfo=UTC)),
            default=None,
        )
    return Grouping(
        key, lambda prefix: _current(prefix, start), since, bar, bars, True, shape, values
    )


def journal_runs(
    agent_ids: list[int], ranges: Sequence[tuple[datetime, datetime]]
) -> tuple[QuerySet[Run], tuple[Any, ...], dict[str, Any]]:
    """The runs of these agents created within these ranges, as a page's queries keep
    them (_paging): the queryset, with Bound values; its shape (how many ranges); and
    its values."""
    within = Q(pk__in=[])
    values: dict[str, Any] = {"agents": agent_ids}
    for i, (a, b) in enumerate(ranges):
        values[f"from{i}"], values[f"to{i}"] = a, b
        within |= Q(
            created_at__gte=Bound(f"from{i}", DateTimeField()),
            created_at__lt=Bound(f"to{i}", DateTimeField()),
        )
    runs = Run.objects.filter(AmongIds("agent_id", BoundIds("agents")), within).order_by()
    return runs, ("ranges", len(ranges)), values


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
    journal into the Figures `of(row, prefix)` names. Two queries (the runs', the steps'
    with the requests that held them; on SQLite a third for the decisions within the
    target). When the grouping asks for durations, also the finished runs' cycle times and
    the decided requests' times to decide, by part and split (Parts; else empty): on
    Postgres packed by those two queries themselves, on SQLite read by two more."""
    cycle: Parts = {}
    decide: Parts = {}
    packed = grouping.durations and _in_sql()
    _runs(base, grouping, of, cycle if packed else None)
    _steps(base, grouping, of, decide if packed else None)
    if grouping.durations and not packed:
        cycle = _cycle_durations(base, grouping.key, grouping.split, grouping.values)
        decide = _decide_durations(
            Q(run__in=base.values("pk")),
            grouping.key,
            grouping.since,
            grouping.split,
            grouping.values,
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

    def build() -> QuerySet[Any]:
        runs = base.annotate(cur=g.split(""))
        grouped = [g.key, "cur"]
        if g.bar is not None:
            runs, grouped = runs.annotate(bar=g.bar), [*grouped, "bar"]
        # An unfinished run's cycle time is NULL, which string_agg leaves out.
        packed = (
            {}
            if cycle is None
            else {"ds": Durations(Seconds(_duration("finished_at", "created_at")))}
        )
        return runs.values(*grouped).annotate(
            n=Count("pk"),
            finished=Count("pk", filter=Q(finished_at__isnull=False)),
            succeeded=Count("pk", filter=Q(status=Run.Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Run.Status.FAILED)),
            diverged=Count("pk", filter=Q(status=Run.Status.FAILED, error__contains=DIVERGED)),
            exceptions=Count("pk", filter=_exception(g.since)),
            **packed,
        )

    for row in _fetch("runs" if cycle is None else "runs+durations", g, build):
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


def _cycle_durations(
    base: QuerySet[Run],
    key: str,
    split: Callable[[str], Any],
    values: dict[str, Any] | None = None,
) -> Parts:
    """The finished runs' cycle times, from their creation and end alone (read from the
    index run_created_durations on Postgres); `values`: the Bound values of `base` and
    `split`, if they have any."""
    finished = base.filter(finished_at__isnull=False)
    return _durations(finished, "", key, split, "finished_at", values)


def _decide_durations(
    of_runs: Q,
    key: str,
    since: Any,
    split: Callable[[str], Any],
    values: dict[str, Any] | None = None,
) -> Parts:
    """The times to decide of the decided requests of the runs `of_runs` selects (a filter
    on the requests), from the requests' times alone."""
    decided = ApprovalRequest.objects.filter(of_runs, created_at__gte=since, status__in=DECIDED)
    return _durations(decided, "run__", key, split, "decided_at", values)


def _durations(
    rows: QuerySet[Any],
    prefix: str,
    key: str,
    split: Callable[[str], Any],
    later: str,
    values: dict[str, Any] | None,
) -> Parts:
    """`later` - created_at over `rows` (prefix: the path from them to the run), by each
    part `key` names and `split` (of the run's creation). One query: on Postgres each
    part's packed by Durations, on SQLite read one by one and packed here."""
    rows = rows.filter(**{f"{later}__isnull": False}).annotate(cur=split(prefix))
    rows = rows.order_by()
    gid = prefix + key
    if _in_sql():
        packed = (
            rows.annotate(d=Seconds(_duration(later, "created_at")))
            .values(gid, "cur")
            .annotate(ds=Durations("d"))
        )
        return {
            (row[gid], bool(row["cur"])): bytes(row["ds"])
            for row in run_statement(compiled(packed), values)
        }
    durations: dict[tuple[Any, bool], list[float]] = defaultdict(list)
    read = rows.values(gid, "cur", "created_at", later)
    for row in run_statement(compiled(read), values):
        done, created = row[later], row["created_at"]
        durations[(row[gid], bool(row["cur"]))].append((done - created).total_seconds())
    return {at: np.asarray(v, dtype=">f8").tobytes() for at, v in durations.items()}


# Where a group's percentiles go: its pairs, and the group of each part (a leaf group).
Target = tuple[dict[int, Pair], Callable[[int], int]]


# A kept part's durations by group and split, sorted (read only: shared by the requests of
# a process, as the part they come from: rolled.Closed.sorted).
Sorted = dict[tuple[int, bool], np.ndarray]


def _sorted_by_group(kept: Parts, group_of: Callable[[int], int], memo: dict[Any, Any]) -> Sorted:
    """The durations of `kept` by group (`group_of` its parts) and split, each sorted: made
    once for a grouping of its parts and kept in `memo` (the kept part's)."""
    said = tuple(sorted({(gid, group_of(gid)) for gid, _ in kept}))
    found = memo.get(said)
    if found is not None:
        return cast(Sorted, found)
    together: dict[tuple[int, bool], list[bytes]] = defaultdict(list)
    for (gid, cur), blob in kept.items():
        together[(group_of(gid), cur)].append(blob)
    out: Sorted = {}
    for at, blobs in together.items():
        values = np.sort(np.frombuffer(b"".join(blobs), dtype=">f8").astype(np.float64))
        values.setflags(write=False)
        out[at] = values
    memo[said] = out
    return out


def _p50_p95_of_both(kept: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """_p50_p95 of the kept values (sorted) and the others together, exact, from the kept
    values around each rank alone: below rank k of both, at most len(other) of the others,
    so the value of rank k (and k + 1) lies among the kept values from k - len(other) to
    k + 1 and the others."""
    n, m = len(kept), len(other)
    if n == 0 or m > n:
        return _p50_p95(np.concatenate((kept, other)))
    last = n + m - 1
    out = []
    for fraction in (0.5, 0.95):
        rank = fraction * last
        k = int(rank)
        lo, hi = max(0, k - m), min(n, k + 2)
        near = np.sort(np.concatenate((kept[lo:hi], other)))
        below = float(near[k - lo])
        above = float(near[min(k + 1, last) - lo])
        out.append(below + (above - below) * (rank - k))
    return out[0], out[1]


def _percentiles(
    journal: Parts, kept: Parts, targets: list[Target], memo: dict[Any, Any] | None = None
) -> Iterator[tuple[Figures, float, float]]:
    """The p50 and p95 of each group of each target (the pairs to fill, and the group of
    each part), from its parts' durations in the journal's part of the window and the
    kept (rolled-up) one together: the Figures each pair of percentiles belongs to. The
    kept part's durations sorted by group once (`memo`, the kept part's; none: here and
    now), each group's percentiles then from its kept durations around the ranks and its
    journal's few. One definition for both databases (percentile_cont's)."""
    for pairs, group_of in targets:
        closed = _sorted_by_group(kept, group_of, {} if memo is None else memo)
        recent: dict[tuple[int, bool], list[bytes]] = defaultdict(list)
        for (gid, cur), blob in journal.items():
            recent[(group_of(gid), cur)].append(blob)
        for at in closed.keys() | recent.keys():
            other = np.frombuffer(b"".join(recent.get(at, ())), dtype=">f8").astype(np.float64)
            both = closed.get(at, _NONE)
            if not len(both) and not len(other):
                continue
            p50, p95 = _p50_p95_of_both(both, other)
            gid, cur = at
            pair = pairs[gid]
            yield pair.current if cur else pair.previous, p50, p95


_NONE = np.zeros(0)


def _meta(name: str, as_type: Any) -> Cast:
    """A figure a model call's step keeps in its meta (tokens, cost), as a number."""
    return Cast(KeyTextTransform(name, "actions__meta"), as_type)


class JsonArray(Func):
    """A JSON array of the expressions (jsonb on Postgres, whose text Django reads)."""

    function = "JSONB_BUILD_ARRAY"
    output_field = TextField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return super().as_sql(compiler, connection, function="JSON_ARRAY", **extra_context)


class JsonArrays(Aggregate):
    """A group's JSON arrays (JsonArray) in one JSON array, as text: the values may be
    anything an agent wrote (a currency), which no separator would be safe from. On
    SQLite a row the filter leaves out is a null in it."""

    function = "JSONB_AGG"
    output_field = TextField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return super().as_sql(compiler, connection, function="JSON_GROUP_ARRAY", **extra_context)


def _moved() -> JsonArrays:
    """The money the steps moved, a tool step that succeeded at a time: [tool, currency,
    amount] for a payment (its amount and currency in the payments) or a purchase order
    (its total in the orders, no currency), each sandbox row found by its step's
    idempotency key (unique in its table). The amount as text: read as a Decimal."""
    payment = Payment.objects.filter(idempotency_key=OuterRef("actions__idempotency_key"))
    order = PurchaseOrder.objects.filter(idempotency_key=OuterRef("actions__idempotency_key"))
    paying = Q(actions__name=PAY_TOOL)
    amount = Case(
        When(paying, then=Subquery(payment.values("amount")[:1])),
        default=Subquery(order.values("total")[:1]),
    )
    currency = Case(When(paying, then=Subquery(payment.values("currency")[:1])))
    moved = Q(
        actions__kind=Action.Kind.TOOL,
        actions__status=Action.Status.SUCCEEDED,
        actions__name__in=(PAY_TOOL, ORDER_TOOL),
    )
    return JsonArrays(
        JsonArray(F("actions__name"), currency, Cast(amount, TextField())), filter=moved
    )


def _add_moved(f: Figures, moved: str | None) -> None:
    """The money a group's steps moved (_moved) added to its figures."""
    for step in json.loads(moved) if moved else ():
        if step is None or step[2] is None:  # left out (SQLite), or no sandbox row
            continue
        tool, currency, amount = step
        total = Decimal(str(amount))
        if tool == ORDER_TOOL:
            f.ordered += total
        elif currency is not None:
            f.paid[currency] = f.paid.get(currency, Decimal(0)) + total


# The path from a run to the approval requests of its steps (a step holds one at most).
HELD = "actions__approval_request__"


def _held(field: str, **lookups: Any) -> Q:
    """A filter on the request of the step, by `field` (the steps' join: HELD)."""
    return Q(**{f"{HELD}{field}__{lookup}": v for lookup, v in lookups.items()})


def _steps(base: QuerySet[Run], g: Grouping, of: Any, decide: Parts | None) -> None:
    """From the runs to their steps (the reverse join), so Postgres reads the runs of the
    window by their index and each run's steps by theirs; a step query filtered by
    `run__in` had to join every run of the history for the group and the window. The
    steps' counts, their model calls' tokens and cost, the money they moved, and the
    requests they were held by — decided, within the agent's target (Postgres) — with
    `decide` (Postgres) the decided ones' times to decide packed into it: one query (the
    money's and the requests' of their own read every step of the runs, or every request
    since the window before began, again)."""
    in_sql = _in_sql()
    decided = _held("status", **{"in": DECIDED})

    def build() -> QuerySet[Any]:
        tool, model = Q(actions__kind=Action.Kind.TOOL), Q(actions__kind=Action.Kind.MODEL)
        # A shadow decision looked for by its step, and for tool steps alone (an EXISTS
        # after the kind): joined to every step, it was a look-up a step, model calls
        # included.
        differs = ShadowDecision.objects.filter(action=OuterRef("actions__id")).exclude(
            effect=OuterRef("actions__decision")
        )
        request = f"{HELD}id"
        runs = base.annotate(cur=g.split(""))
        extra: dict[str, Any] = {}
        if in_sql:
            wait = Case(
                When(decided, then=Seconds(_duration(f"{HELD}decided_at", f"{HELD}created_at"))),
                default=None,
                output_field=FloatField(),
            )
            runs = runs.annotate(wait=wait)
            within = Q(wait__lte=F("agent__decision_sla_minutes") * 60)
            extra = {"within": Count(request, filter=within)}
            if decide is not None:  # NULL for a request not decided: left out
                extra["ds"] = Durations("wait")
        return runs.values(g.key, "cur").annotate(
            steps=Count("actions", filter=tool),
            denied=Count("actions", filter=tool & Q(actions__status=Action.Status.DENIED)),
            shadow_differs=Count("actions", filter=tool & Q(Exists(differs))),
            model_calls=Count("actions", filter=model),
            tokens_in=Sum(_meta("tokens_in", IntegerField()), filter=model),
            tokens_out=Sum(_meta("tokens_out", IntegerField()), filter=model),
            cost=Sum(_meta("cost_eur", FloatField()), filter=model),
            moved=_moved(),
            held=Count(request),
            decided=Count(request, filter=decided),
            rejected=Count(request, filter=_held("status", exact=ApprovalRequest.Status.REJECTED)),
            expired=Count(request, filter=_held("status", exact=ApprovalRequest.Status.EXPIRED)),
            **extra,
        )

    name = "steps" if decide is None else "steps+durations"
    for row in _fetch(name, g, build):
        if decide is not None:
            _pack(decide, row[g.key], row["cur"], row["ds"])
        f = of(row)
        f.steps, f.denied, f.model_calls = row["steps"], row["denied"], row["model_calls"]
        f.shadow_differs = row["shadow_differs"]
        f.tokens_in, f.tokens_out = row["tokens_in"] or 0, row["tokens_out"] or 0
        f.cost_eur = float(row["cost"] or 0)
        _add_moved(f, row["moved"])
        f.held, f.decided = row["held"], row["decided"]
        f.rejected, f.expired = row["rejected"], row["expired"]
        if in_sql:
            f.within_sla = row["within"]
    if not in_sql:
        _within_in_python(base, g, of, decided)


def _within_in_python(base: QuerySet[Run], g: Grouping, of: Any, decided: Q) -> None:
    """The decisions within the agent's target, a decided request at a time (SQLite)."""
    within: dict[tuple[int, Any], int] = defaultdict(int)
    times = (
        base.filter(decided)
        .annotate(cur=g.split(""))
        .values(
            g.key,
            "cur",
            f"{HELD}created_at",
            f"{HELD}decided_at",
            "agent__decision_sla_minutes",
        )
    )
    for row in run_statement(compiled(times), g.values):
        waited = (row[f"{HELD}decided_at"] - row[f"{HELD}created_at"]).total_seconds()
        within[(row[g.key], row["cur"])] += waited <= row["agent__decision_sla_minutes"] * 60
    for (group, cur), n in within.items():
        of({g.key: group, "cur": cur}).within_sla = n
