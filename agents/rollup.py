"""The KPI rollup: per agent, version and hour of the runs' creation, the additive figures
the KPI pages show (agents.kpis.ROLLED, the money paid per currency, and the decisions by
the whole minutes they took, from which "decided within the SLA" is summed for whatever
target the agent has when a page asks). Derived data, never a second source of truth:
computed from the journal by the very queries the pages run on it
(agents.kpis.journal_figures, grouped by version and hour), and rebuilt from it at will
(`manage.py kpi_rollup --rebuild`).

An hour is written only once it is closed for an agent: every run of the agent created in
it is final and none of their approval requests is still pending — nothing can change its
figures any more. A round (the beat timer `kpis.rollup`, every
BATON_KPI_ROLLUP_EVERY_SECONDS) first examines again the hours still open (KpiOpenHour:
a long-waiting run keeps its hour read from the journal until it ends), then the hours
that ended at least SETTLE ago and were not examined yet, a week at a time
(KpiRollup.through says how far). Each step is one transaction holding the rollup's one
row (select_for_update; on SQLite, where that is a no-op, a lock of this process — `make
run`'s worker is threads of one process), and replaces the rows of the hours it examined:
two workers running a round at once, or one round twice, leave the same rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from agents.kpis import (
    DAY,
    DAY_HOURS,
    DECIDED,
    HOUR,
    ROLLED,
    Figures,
    Grouping,
    any_of,
    floor_day,
    floor_hour,
    journal_figures,
)
from agents.models import (
    AgentVersion,
    KpiHour,
    KpiHourPaid,
    KpiHourWait,
    KpiOpenHour,
    KpiRollup,
    Run,
)
from approvals.models import ApprovalRequest

ROLLUP_TASK = "kpis.rollup"
# An hour is examined once it ended this long ago: a run created in its last instant is
# committed by then (its transaction is short), so no run of an examined hour comes later
# (a run's created_at is set when it is inserted; a history written with earlier times —
# an import, a test — is rolled up by `manage.py kpi_rollup --rebuild`).
SETTLE = timedelta(minutes=5)
# The hours examined in one transaction when catching up.
CHUNK = timedelta(days=7)
NOT_FINAL = tuple(s for s in Run.Status if s not in Run.FINAL)
_one_at_a_time = threading.Lock()


@dataclass(frozen=True)
class Span:
    """Hours [lo, hi) of some agents (None: all)."""

    lo: datetime
    hi: datetime
    agents: tuple[int, ...] | None = None

    def runs(self) -> Q:
        q = Q(created_at__gte=self.lo, created_at__lt=self.hi)
        return q if self.agents is None else q & Q(agent_id__in=self.agents)

    def rows(self) -> Q:
        q = Q(hour__gte=self.lo, hour__lt=self.hi)
        return q if self.agents is None else q & Q(agent_id__in=self.agents)


@dataclass
class Rolled:
    hours: int = 0  # hours examined (an hour of all agents, or of the agents open in it)
    written: int = 0  # KpiHour rows written
    open: int = 0  # agent-hours left open


def _mark_ensure() -> None:
    if KpiRollup.objects.filter(pk=1).exists():
        return
    try:
        with transaction.atomic():
            KpiRollup.objects.create(pk=1)
    except IntegrityError:
        pass  # another worker made it first


def _locked() -> KpiRollup:
    return KpiRollup.objects.select_for_update().get(pk=1)


def kpi_rollup(now: datetime | None = None, *, seconds: float | None = None) -> Rolled:
    """One round: the open hours again, then the hours not examined yet that ended SETTLE
    before `now`, a CHUNK a transaction, for about `seconds` (None: until caught up)."""
    now = now or timezone.now()
    until = floor_hour(now - SETTLE)
    deadline = None if seconds is None else time.monotonic() + seconds
    out = Rolled()
    _mark_ensure()
    with _one_at_a_time, transaction.atomic():
        mark = _locked()
        if mark.through is not None:
            by_hour: dict[datetime, list[int]] = defaultdict(list)
            for agent_id, hour in (
                KpiOpenHour.objects.filter(hour__lt=mark.through)
                .order_by("hour", "agent_id")
                .values_list("agent_id", "hour")
            ):
                by_hour[hour].append(agent_id)
            if by_hour:
                spans = [Span(h, h + HOUR, tuple(agents)) for h, agents in by_hour.items()]
                _examine(spans, out, mark.through)
    while deadline is None or time.monotonic() < deadline:
        with _one_at_a_time, transaction.atomic():
            mark = _locked()
            lo = mark.through
            if lo is None:
                first = Run.objects.order_by("created_at").values_list("created_at").first()
                if first is None:
                    break
                lo = floor_hour(first[0])
            if lo >= until:
                break
            hi = min(lo + CHUNK, until)
            _examine([Span(lo, hi)], out, hi)
            mark.through, mark.updated_at = hi, timezone.now()
            mark.save(update_fields=["through", "updated_at"])
    return out


def kpi_rollup_rebuild(since: datetime | None = None, until: datetime | None = None) -> Rolled:
    """Compute the examined hours from `since` to `until` again from the journal (None:
    every hour; then the rollup is emptied and caught up anew). The rows are replaced a
    CHUNK a transaction; a page reading meanwhile reads each hour from one or the other."""
    out = Rolled()
    _mark_ensure()
    if since is None and until is None:
        with _one_at_a_time, transaction.atomic():
            mark = _locked()
            for model in (KpiHour, KpiHourPaid, KpiHourWait, KpiOpenHour):
                model.objects.all().delete()
            mark.through = None
            mark.generation = uuid.uuid4()
            mark.save(update_fields=["through", "generation"])
        rolled = kpi_rollup()
        out.hours, out.written, out.open = rolled.hours, rolled.written, rolled.open
        return out
    lo = floor_hour(since) if since is not None else None
    while True:
        with _one_at_a_time, transaction.atomic():
            mark = _locked()
            if mark.through is None:
                break
            if lo is None:
                first = KpiHour.objects.filter(hours=1).order_by("hour").values_list("hour").first()
                lo = first[0] if first else mark.through
            top = mark.through if until is None else min(mark.through, floor_hour(until))
            if lo >= top:
                break
            hi = min(lo + CHUNK, top)
            _examine([Span(lo, hi)], out, mark.through)
            mark.generation = uuid.uuid4()
            mark.save(update_fields=["generation"])
        lo = hi
    return out


def _unclosed(spans: list[Span]) -> set[tuple[int, datetime]]:
    """The agents' hours of the spans with a run not final or a request still pending."""
    runs = any_of(s.runs() for s in spans)
    since = min(s.lo for s in spans)
    out = {
        (agent_id, floor_hour(created))
        for agent_id, created in Run.objects.filter(runs, status__in=NOT_FINAL).values_list(
            "agent_id", "created_at"
        )
    }
    pending = ApprovalRequest.objects.filter(
        status=ApprovalRequest.Status.PENDING,
        created_at__gte=since,
        run__in=Run.objects.filter(runs).values("pk"),
    ).values_list("run__agent_id", "run__created_at")
    out.update((agent_id, floor_hour(created)) for agent_id, created in pending)
    return out


def _examine(spans: list[Span], out: Rolled, through: datetime) -> None:
    """Replace the rollup's rows of the spans' hours: the closed agent-hours' figures, and
    the open ones listed. In the caller's transaction."""
    runs = Run.objects.filter(any_of(s.runs() for s in spans)).order_by()
    since = min(s.lo for s in spans)
    unclosed = _unclosed(spans)
    hours: dict[tuple[int, datetime], Figures] = defaultdict(Figures)

    def of(row: dict[str, Any], prefix: str = "") -> Figures:
        return hours[(row[prefix + "version_id"], row["cur"])]

    grouping = Grouping("version_id", lambda p: TruncHour(f"{p}created_at", tzinfo=UTC), since)
    journal_figures(runs, grouping, of)
    # The decisions by the whole minutes they took (rounded up): within an SLA of m
    # minutes exactly when minutes <= m, as the journal's wait <= m * 60 s.
    waits: Counter[tuple[int, datetime, int]] = Counter()
    for version_id, run_created, created, decided in ApprovalRequest.objects.filter(
        run__in=runs.values("pk"), created_at__gte=since, status__in=DECIDED
    ).values_list("run__version_id", "run__created_at", "created_at", "decided_at"):
        if decided is None:  # never within the target, as on the journal
            continue
        minutes = max(0, -((created - decided) // timedelta(minutes=1)))
        waits[(version_id, floor_hour(run_created), minutes)] += 1
    agent_of = dict(
        AgentVersion.objects.filter(pk__in={v for v, _ in hours}).values_list("pk", "agent_id")
    )
    rows = Q(pk__in=[])
    for s in spans:
        rows |= s.rows()
    for model in (KpiHour, KpiHourPaid, KpiHourWait):
        model.objects.filter(rows, hours=1).delete()
    KpiOpenHour.objects.filter(rows).delete()
    closed = {
        (version_id, hour): f
        for (version_id, hour), f in hours.items()
        if (agent_of[version_id], hour) not in unclosed
    }
    KpiHour.objects.bulk_create(
        [
            KpiHour(
                agent_id=agent_of[version_id],
                version_id=version_id,
                hour=hour,
                **{name: getattr(f, name) for name in ROLLED},
            )
            for (version_id, hour), f in closed.items()
        ],
        batch_size=1000,
    )
    KpiHourPaid.objects.bulk_create(
        [
            KpiHourPaid(
                agent_id=agent_of[version_id],
                version_id=version_id,
                hour=hour,
                currency=currency,
                amount=amount,
            )
            for (version_id, hour), f in closed.items()
            for currency, amount in f.paid.items()
        ],
        batch_size=1000,
    )
    KpiHourWait.objects.bulk_create(
        [
            KpiHourWait(
                agent_id=agent_of[version_id],
                version_id=version_id,
                hour=hour,
                minutes=minutes,
                decided=n,
            )
            for (version_id, hour, minutes), n in waits.items()
            if (version_id, hour) in closed
        ],
        batch_size=1000,
    )
    KpiOpenHour.objects.bulk_create(
        [KpiOpenHour(agent_id=agent_id, hour=hour) for agent_id, hour in sorted(unclosed)],
        batch_size=1000,
    )
    out.hours += sum(int((s.hi - s.lo) / HOUR) for s in spans)
    out.written += len(closed)
    out.open += len(unclosed)
    days: dict[datetime, set[int] | None] = {}
    for s in spans:
        day = floor_day(s.lo)
        while day < s.hi:
            if s.agents is None or days.get(day, set()) is None:
                days[day] = None
            else:
                days.setdefault(day, set()).update(s.agents)  # type: ignore[union-attr]
            day += DAY
    _days(days, through)


def _days(days: dict[datetime, set[int] | None], through: datetime) -> None:
    """Replace the day rows of these days (of these agents; None: all) by their hours'
    rows added up, for the days wholly examined (before `through`) and the agents with no
    hour of the day open."""
    rows = Q(pk__in=[])
    for day, agents in days.items():
        if day + DAY > through:
            continue
        q = Q(hour__gte=day, hour__lt=day + DAY)
        rows |= q if agents is None else q & Q(agent_id__in=sorted(agents))
    for model in (KpiHour, KpiHourPaid, KpiHourWait):
        model.objects.filter(rows, hours=DAY_HOURS).delete()
    still_open = {
        (agent_id, floor_day(hour))
        for agent_id, hour in KpiOpenHour.objects.filter(rows).values_list("agent_id", "hour")
    }
    by_day = TruncDay("hour", tzinfo=UTC)

    def whole(row: Any) -> bool:
        return (row["agent_id"], row["day"]) not in still_open

    hour_rows = KpiHour.objects.filter(rows, hours=1).annotate(day=by_day).order_by()
    summed: Any = hour_rows.values("agent_id", "version_id", "day").annotate(
        **{f"sum_{name}": Sum(name) for name in ROLLED}
    )
    KpiHour.objects.bulk_create(
        [
            KpiHour(
                agent_id=row["agent_id"],
                version_id=row["version_id"],
                hour=row["day"],
                hours=DAY_HOURS,
                **{name: row[f"sum_{name}"] for name in ROLLED},
            )
            for row in summed
            if whole(row)
        ],
        batch_size=1000,
    )
    paid = KpiHourPaid.objects.filter(rows, hours=1).annotate(day=by_day).order_by()
    KpiHourPaid.objects.bulk_create(
        [
            KpiHourPaid(
                agent_id=row["agent_id"],
                version_id=row["version_id"],
                hour=row["day"],
                hours=DAY_HOURS,
                currency=row["currency"],
                amount=row["total"],
            )
            for row in paid.values("agent_id", "version_id", "day", "currency").annotate(
                total=Sum("amount")
            )
            if whole(row)
        ],
        batch_size=1000,
    )
    waits = KpiHourWait.objects.filter(rows, hours=1).annotate(day=by_day).order_by()
    KpiHourWait.objects.bulk_create(
        [
            KpiHourWait(
                agent_id=row["agent_id"],
                version_id=row["version_id"],
                hour=row["day"],
                hours=DAY_HOURS,
                minutes=row["minutes"],
                decided=row["n"],
            )
            for row in waits.values("agent_id", "version_id", "day", "minutes").annotate(
                n=Sum("decided")
            )
            if whole(row)
        ],
        batch_size=1000,
    )


@shared_task(name=ROLLUP_TASK)
def rollup() -> int:
    """The beat timer's round: at most BATON_KPI_ROLLUP_SECONDS of catching up a time."""
    return kpi_rollup(seconds=settings.BATON_KPI_ROLLUP_SECONDS).written
