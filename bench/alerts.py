"""One evaluation of the alert rules (issue 14 §2): what `alerts.evaluate`, the beat timer
run every BATON_ALERT_EVALUATE_SECONDS (30 s), costs with a fleet's rules over a long
history.

The history is bench/kpis.py's (`build_history`, imported, in SQL): 100 agents in 10
teams, BENCH_ALERTS_RUNS_PER_DAY runs an agent a day (20) for BENCH_ALERTS_DAYS days
(365): 730,000 runs with their journal, approval requests and decisions, ending now (the
benchmark evaluates at that end, so a kept history measured again is the same), so
the rules' windows hold the last minutes' work. On it, BENCH_ALERTS_RULES rules (200):
nine in ten on an agent, one in ten on a team, their metrics taken in turn from every
metric a rule may watch (the KPIs, the raw counts and drift) and their windows in turn
from 5 min, 15 min, 1 h and 24 h; one in five compares the change against the window
before. Thresholds are out of reach, so every pass is the steady state: measure every
rule, write its last value, no transition (a transition is one compare-and-set and an
audit event, measured by the tests, not here).

Measured: `alerts.alerts_evaluate()` in process, BENCH_ALERTS_PASSES times (20) after one
to warm up, its queries and how much of its time is measuring (`measure_rules`); then
one pass of each metric's rules alone, to say where the time goes. Floors from the same
run: a bare `SELECT 1`, and one rule's measurement (a denial count over 5 min on one
agent). The pass time is set against the evaluation period: a pass longer than the
period would have beat queue passes behind it.

Run: python -m bench.alerts (database BENCH_ALERTS_DB, `bench_alerts`, dropped and
re-created, then kept; BENCH_ALERTS_REUSE=1 measures it again without building).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from typing import Any

RUNS_PER_DAY = int(os.environ.get("BENCH_ALERTS_RUNS_PER_DAY", "20"))
DAYS = int(os.environ.get("BENCH_ALERTS_DAYS", "365"))
RULES = int(os.environ.get("BENCH_ALERTS_RULES", "200"))
PASSES = int(os.environ.get("BENCH_ALERTS_PASSES", "20"))
DB_NAME = os.environ.get("BENCH_ALERTS_DB", "bench_alerts")
REUSE = os.environ.get("BENCH_ALERTS_REUSE") == "1"
TEAMS, PER_TEAM = 10, 10
WINDOWS = [5, 15, 60, 24 * 60]
PREFIX = "alert"


def make_rules(agents: list[Any], teams: list[Any], n: int) -> list[Any]:
    """`n` enabled rules, nine in ten on an agent and one in ten on a team, every metric
    in turn, windows in turn; thresholds no history reaches (the steady state)."""
    from agents import alerts
    from agents.models import AlertRule

    metrics = sorted(alerts.METRICS)
    rules = []
    for i in range(n):
        on_team = i % 10 == 9
        change = i % 5 == 4
        rules.append(
            AlertRule(
                name=f"bench rule {i:04d}",
                agent=None if on_team else agents[i % len(agents)],
                team=teams[(i // 10) % len(teams)] if on_team else None,
                metric=metrics[i % len(metrics)],
                basis=AlertRule.Basis.CHANGE if change else AlertRule.Basis.VALUE,
                comparison=AlertRule.Comparison.ABOVE,
                threshold=1e9,
                clear_threshold=1e9,
                window_minutes=WINDOWS[(i // len(metrics)) % len(WINDOWS)],
                notify_supervisors=False,
            )
        )
    return AlertRule.objects.bulk_create(rules)


def history_end() -> datetime:
    """The moment the history ends (its last run's start): the benchmark evaluates there,
    so a kept history measured again later has the same busy last minutes."""
    from django.db.models import Max

    from agents.models import Run

    last = Run.objects.aggregate(last=Max("created_at"))["last"]
    assert last is not None, "no history"
    return last + timedelta(seconds=1)


def evaluate_pass(now: datetime) -> dict[str, float]:
    """One `alerts_evaluate` at `now`, timed whole; then its measuring step again, timed
    alone (`measure_rules`): the rest of a pass is reading the rules and writing their
    values (seconds, and the transitions made)."""
    from agents import alerts
    from agents.models import AlertRule

    began = time.perf_counter()
    made = alerts.alerts_evaluate(now)
    whole = time.perf_counter() - began
    rules = list(AlertRule.objects.filter(enabled=True).select_related("agent__team", "team"))
    began = time.perf_counter()
    alerts.measure_rules(rules, now)
    measuring = time.perf_counter() - began
    return {"whole": whole, "measuring": measuring, "transitions": made}


def queries_of_a_pass(now: datetime) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from agents import alerts

    with CaptureQueriesContext(connection) as queries:
        alerts.alerts_evaluate(now)
    return len(queries)


def by_metric(now: datetime) -> list[tuple[str, float, int]]:
    """(metric, seconds, rules) for each metric's rules measured alone (after a warm-up)."""
    from agents import alerts
    from agents.models import AlertRule

    rules = list(AlertRule.objects.filter(enabled=True).select_related("agent__team", "team"))
    out = []
    for metric in sorted({r.metric for r in rules}):
        mine = [r for r in rules if r.metric == metric]
        alerts.measure_rules(mine, now)
        began = time.perf_counter()
        alerts.measure_rules(mine, now)
        out.append((metric, time.perf_counter() - began, len(mine)))
    return sorted(out, key=lambda row: -row[1])


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def database() -> str:
    from bench.common import use_bench_database

    return use_bench_database(DB_NAME)


def reuse() -> None:
    from bench.common import use_kept_database

    use_kept_database(DB_NAME)


def main() -> None:
    runs = RUNS_PER_DAY * DAYS * TEAMS * PER_TEAM
    print(
        f"Alert evaluation benchmark: {RULES} rules on {TEAMS * PER_TEAM} agents in {TEAMS} "
        f"teams, {RUNS_PER_DAY} runs an agent a day for {DAYS} days ({runs:,} runs); {uptime()}",
        flush=True,
    )
    if REUSE:
        reuse()
    else:
        database()
    from django.conf import settings
    from django.db import connection

    from agents import alerts
    from agents.models import Agent, AlertRule, Team
    from bench.common import pct, report

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    if REUSE:
        print("  reusing the kept history (BENCH_ALERTS_REUSE=1)")
    else:
        from bench.kpis import build_history

        began = time.perf_counter()
        history = build_history(
            runs_per_day=RUNS_PER_DAY,
            days=DAYS,
            teams=TEAMS,
            per_team=PER_TEAM,
            prefix=PREFIX,
            log=print,
        )
        print(f"  history: {history.runs:,} runs in {time.perf_counter() - began:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    # The rules afresh each run.
    AlertRule.objects.all().delete()
    agents = list(Agent.objects.filter(slug__startswith=f"{PREFIX}-").order_by("slug"))
    teams = list(Team.objects.filter(slug__startswith=f"{PREFIX}-").order_by("slug"))
    rules = make_rules(agents, teams, RULES)
    metrics = sorted({r.metric for r in rules})
    windows = sorted({r.window_minutes for r in rules})
    print(
        f"  {len(rules)} rules ({sum(1 for r in rules if r.team_id)} on teams), "
        f"{len(metrics)} metrics, windows {windows} min; {uptime()}",
        flush=True,
    )

    # Floors: a bare round trip, and one rule measured alone.
    trips = []
    with connection.cursor() as cursor:
        for _ in range(200):
            began = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            trips.append(time.perf_counter() - began)
    one = AlertRule(
        name="floor", agent=agents[0], metric="denials", window_minutes=5, threshold=1e9
    )
    end = history_end()
    print(f"  evaluated at the history's end, {end:%Y-%m-%d %H:%M:%S} UTC")
    singles = []
    for _ in range(21):
        began = time.perf_counter()
        alerts.measure_rules([one], end)
        singles.append(time.perf_counter() - began)
    select1, single = pct(trips, 0.5), pct(singles[1:], 0.5)

    evaluate_pass(end)  # warm: connections, plans, the metric registry
    passes = [evaluate_pass(end) for _ in range(PASSES)]
    whole = [p["whole"] for p in passes]
    period = float(settings.BATON_ALERT_EVALUATE_SECONDS)
    p50, p95 = pct(whole, 0.5), pct(whole, 0.95)
    measuring = pct([p["measuring"] for p in passes], 0.5)
    rest = pct([p["whole"] - p["measuring"] for p in passes], 0.5)
    assert all(p["transitions"] == 0 for p in passes), "the steady state has no transition"
    rows = [
        ("floor: SELECT 1, p50", f"{select1 * 1000:.3f} ms", ""),
        ("floor: one rule measured, p50", f"{single * 1000:.2f} ms", "denials over 5 min, 1 agent"),
        (
            f"one pass ({len(rules)} rules), p50",
            f"{p50 * 1000:.0f} ms",
            f"{p50 / single:.0f}x one rule, {p50 / select1:,.0f}x SELECT 1; "
            f"{p50 / period:.1%} of the {period:g} s period",
        ),
        (
            "one pass, p95 / max",
            f"{p95 * 1000:.0f} ms",
            f"max {max(whole) * 1000:.0f} ms; {p95 / period:.1%} of the period",
        ),
        ("  of which measuring, p50", f"{measuring * 1000:.0f} ms", "measure_rules"),
        (
            "  the rest, p50",
            f"{rest * 1000:.0f} ms",
            "reading the rules, writing their values (a pass − measuring)",
        ),
        ("queries a pass", f"{queries_of_a_pass(end)}", "the quiet rules' values in one UPDATE"),
    ]
    print(f"  {PASSES} passes after one to warm up; {uptime()}:")
    report(rows)
    print("  each metric's rules measured alone (one pass, after a warm-up):")
    report([(m, f"{s * 1000:.0f} ms", f"{n} rules") for m, s, n in by_metric(end)])
    verdict = "within" if p95 < period else "NOT within"
    print(f"  a pass p95 {p95:.2f} s is {verdict} the evaluation period ({period:g} s); {uptime()}")


if __name__ == "__main__":
    main()
