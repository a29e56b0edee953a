"""The alert benchmark (bench/alerts.py) at a tiny size, so it cannot rot: its rules on
bench/kpis.py's history cover every metric, every window and both scopes, and a pass at
the history's end measures each of them without a transition (its steady state)."""

from __future__ import annotations

import pytest

from agents import alerts
from agents.models import AlertRule
from bench.alerts import evaluate_pass, history_end, make_rules
from bench.kpis import build_history
from tests.conftest import ON_SQLITE

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(ON_SQLITE, reason="the benchmark's history is built in Postgres' SQL"),
]


def test_the_benchmark_rules_are_measured_in_their_steady_state() -> None:
    history = build_history(
        runs_per_day=48, days=2, teams=2, per_team=3, pending_per_agent=1, prefix="tiny"
    )
    rules = make_rules(history.agents, history.teams, 60)
    assert {r.metric for r in rules} == set(alerts.METRICS)
    assert {r.window_minutes for r in rules} == {5, 15, 60, 1440}
    assert any(r.team_id for r in rules) and any(r.basis == "change" for r in rules)
    figures = evaluate_pass(history_end())
    assert figures["transitions"] == 0
    measured = AlertRule.objects.filter(last_evaluated_at__isnull=False)
    assert measured.count() == 60
    # The history's last minutes are busy: counts and KPIs over 5 minutes have values.
    assert measured.filter(window_minutes=5, metric="runs", last_value__gt=0).exists()
