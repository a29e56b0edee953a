"""The KPI benchmark's history (bench/kpis.py) at a tiny size, so the benchmark cannot rot:
its SQL builds a history the KPIs read as the journal says (runs, held steps and their
requests, payments), and the fleet's KPI page costs a supervisor of one team the queries
it costs a supervisor of two (no query per agent or team)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Q, Sum
from django.test import Client
from django.utils import timezone

from agents import kpis
from agents.models import Action, KpiHour, KpiRollup, Payment, Run
from agents.rollup import SETTLE
from approvals.models import ApprovalRequest
from bench.kpis import build_history, people, query_count
from tests.conftest import ON_SQLITE

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(ON_SQLITE, reason="the benchmark's history is built in Postgres' SQL"),
]


def test_the_benchmark_history_reads_back_as_the_journal_says() -> None:
    now = timezone.now().replace(microsecond=0)
    history = build_history(
        runs_per_day=6, days=20, teams=2, per_team=3, pending_per_agent=2, now=now, prefix="tiny"
    )
    assert history.runs == 6 * 20 * 6 + 2 * 6
    assert Run.objects.count() == history.runs
    assert ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING).count() == 12
    # Every fate the KPIs tell apart is in the history.
    statuses = set(Run.objects.values_list("status", flat=True))
    assert {"succeeded", "failed", "cancelled", "waiting"} <= statuses
    assert Action.objects.filter(status=Action.Status.DENIED).exists()
    assert {"approved", "rejected", "expired", "pending"} <= set(
        ApprovalRequest.objects.values_list("status", flat=True)
    )

    # The rollup filled as its timer keeps it (the waiting runs, of the last seconds, are
    # in an hour not examined yet).
    assert KpiHour.objects.filter(hours=24).exists()
    through = KpiRollup.objects.get().through
    assert through is not None and through >= kpis.floor_hour(now - SETTLE) - timedelta(hours=1)
    window = kpis.window_named("7d", now + timedelta(seconds=1))
    got = kpis.figures(Run.objects.all(), "team", window, scope=Q())
    journal = kpis.figures(Run.objects.all(), "team", window)
    assert {t: (p.current.runs, p.current.held) for t, p in got.items()} == {
        t: (p.current.runs, p.current.held) for t, p in journal.items()
    }
    for team in history.teams:
        runs = Run.objects.filter(
            agent__team=team, created_at__gte=window.start, created_at__lt=window.end
        )
        figures = got[team.pk].current
        assert figures.runs == runs.count() > 0
        assert figures.failed == runs.filter(status=Run.Status.FAILED).count()
        assert figures.held == ApprovalRequest.objects.filter(run__in=runs).count()
        keys = Action.objects.filter(run__in=runs).values("idempotency_key")
        paid = Payment.objects.filter(idempotency_key__in=keys, currency="EUR")
        assert figures.paid.get("EUR", Decimal(0)) == (
            paid.aggregate(total=Sum("amount"))["total"] or Decimal(0)
        )


def test_the_fleet_kpis_cost_one_team_the_queries_they_cost_two() -> None:
    history = build_history(
        runs_per_day=2,
        days=10,
        teams=3,
        per_team=2,
        pending_per_agent=1,
        now=datetime.now(UTC),
        prefix="kpi",
    )
    two, one, compliance = people(history.teams[1:])
    counts = {}
    for who, user in (("one", one), ("two", two), ("compliance", compliance)):
        client = Client()
        client.force_login(user)
        counts[who] = [query_count(client, f"/kpis/?window={w}") for w in kpis.WINDOWS]
        agent = history.agents[-1]
        assert client.get(f"/agents/{agent.slug}/kpis/?window=30d").status_code == 200
    assert counts["one"] == counts["two"], counts
