"""Drift (agents.drift) on a constructed history: runs of one agent in a baseline window and
a current one, each with an input, a tool step's decision and a model call's output, drawn
from set distributions with a fixed seed. A distribution left alone reads as stable; one
shifted (a numeric input, a categorical input, the decisions, a model output field) is
found and ranked first; too few runs read as insufficient data, never as stable."""

from __future__ import annotations

import bisect
import math
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents import drift, kpis
from agents.models import Action, Agent, Run
from agents.services import team_create
from tests.conftest import ALLOW_ALL_TESTS, ON_SQLITE, ROOT

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
CURRENT = kpis.window_named("7d", NOW)
BASELINE = drift.baseline_before(CURRENT)
CHANNELS = ["web", "phone", "branch", "partner"]
DECISIONS = ["allow", "approve", "deny"]


@dataclass(frozen=True)
class Shape:
    """The distributions a window's runs are drawn from."""

    amount_mean: float = 1000.0
    amount_sd: float = 200.0
    channels: tuple[float, ...] = (0.5, 0.3, 0.15, 0.05)
    decisions: tuple[float, ...] = (0.7, 0.2, 0.1)
    payout_share: float = 0.9  # of the model's answers, "pay" (the rest "decline")


SAME = Shape()


def history(agent: Agent, rng: random.Random, window: kpis.Window, n: int, shape: Shape) -> Any:
    """`n` runs created across `window`; returns the amounts their inputs carry."""
    runs = Run.objects.bulk_create(
        Run(
            agent=agent,
            version=agent.live_version,
            status=Run.Status.SUCCEEDED,
            input={
                "claim_id": f"CLM-{rng.getrandbits(48):012x}",  # an id: never compared
                "amount": round(rng.gauss(shape.amount_mean, shape.amount_sd), 2),
                "channel": rng.choices(CHANNELS, shape.channels)[0],
                "documents": rng.randint(1, 6),
                "express": rng.random() < 0.25,
                "policyholder": {"name": "Ada", "since": 2019},  # nested: left out
            },
        )
        for _ in range(n)
    )
    for run in runs:  # created_at is set on insert: spread the runs over the window
        run.created_at = window.start + rng.random() * window.length
    Run.objects.bulk_update(runs, ["created_at"])
    steps = []
    for run in runs:
        pay = rng.random() < shape.payout_share
        steps.append(
            Action(
                run=run,
                seq=1,
                kind=Action.Kind.MODEL,
                name="scripted",
                args={"prompt": "Assess the claim", "purpose": "assess claim"},
                status=Action.Status.SUCCEEDED,
                result={
                    "decision": "pay" if pay else "decline",
                    "amount": run.input["amount"] if pay else 0,
                    "reason": f"because {rng.getrandbits(32)}",  # free text: not compared
                },
                args_hash="x",
                idempotency_key=f"baton-run{run.pk}-step1",
            )
        )
        decision = rng.choices(DECISIONS, shape.decisions)[0]
        status = {"allow": "succeeded", "approve": "held", "deny": "denied"}[decision]
        steps.append(
            Action(
                run=run,
                seq=2,
                kind=Action.Kind.TOOL,
                name="payments.pay",
                status=status,
                decision=decision,
                args_hash="x",
                idempotency_key=f"baton-run{run.pk}-step2",
            )
        )
    Action.objects.bulk_create(steps)
    return [r.input["amount"] for r in runs]


@pytest.fixture
def claims(make_agent: Any) -> Agent:
    return make_agent("drift-claims", "tests.support.agents.counter", ALLOW_ALL_TESTS)


def build(agent: Agent, current: Shape, seed: int = 7, n: int = 300) -> dict[str, Any]:
    """A baseline of 2n runs over four weeks, and n runs over the week after, drawn with a
    fixed seed: the baseline from the usual shape, the current week from `current`."""
    rng = random.Random(seed)
    before = history(agent, rng, BASELINE, 2 * n, SAME)
    now = history(agent, rng, CURRENT, n, current)
    return {"before": before, "now": now}


def field(report: drift.DriftReport, source: str, name: str) -> drift.FieldDrift:
    return next(f for f in report.fields if (f.source, f.name) == (source, name))


def test_the_baseline_is_the_four_windows_before_the_current_one() -> None:
    # Ending at the start of the hour the current window starts in (NOW is 12:30).
    assert (BASELINE.name, BASELINE.end, BASELINE.length) == (
        "28d",
        NOW - timedelta(days=7, minutes=30),
        timedelta(days=28),
    )
    day = drift.baseline_before(kpis.window_named("24h", NOW))
    assert (day.name, day.length, day.end) == (
        "4d",
        timedelta(days=4),
        NOW - timedelta(days=1, minutes=30),
    )


def test_an_unchanged_distribution_reads_as_stable(claims: Agent) -> None:
    build(claims, SAME)
    report = drift.drift_report(claims, CURRENT, BASELINE)
    assert (report.baseline_runs, report.current_runs) == (600, 300)
    assert report.level == drift.STABLE and report.score is not None and report.score < 0.1
    compared = {(f.source, f.name) for f in report.compared}
    assert compared == {
        ("input", "amount"),
        ("input", "channel"),
        ("input", "documents"),
        ("input", "express"),
        ("decision", "decision"),
        ("model output", "assess claim.amount"),
        ("model output", "assess claim.decision"),
    }
    assert all(f.level == drift.STABLE for f in report.fields)
    # Ids and free text are listed as not compared, never as stable.
    assert {(s, n) for s, n, _why in report.skipped} == {
        ("input", "claim_id"),
        ("model output", "assess claim.reason"),
    }


def test_a_numeric_input_shifted_by_two_deviations_is_found_and_ranked_first(
    claims: Agent,
) -> None:
    build(claims, Shape(amount_mean=1400.0))
    report = drift.drift_report(claims, CURRENT, BASELINE)
    assert report.level == drift.SHIFTED and report.score is not None and report.score >= 0.25
    first = report.top[0]
    assert (first.source, first.name, first.kind) == ("input", "amount", drift.NUMERIC)
    assert first.significant and first.p_value is not None and first.p_value < 1e-6
    assert first.test == "Kolmogorov–Smirnov" and report.score == first.psi
    # The fields left alone stay stable beside it.
    assert field(report, "input", "channel").level == drift.STABLE
    assert drift.drift_score(claims, NOW) == pytest.approx(report.score)


def test_a_categorical_input_shift_is_found(claims: Agent) -> None:
    build(claims, Shape(channels=(0.15, 0.3, 0.15, 0.4)))
    report = drift.drift_report(claims, CURRENT, BASELINE)
    first = report.top[0]
    assert (first.source, first.name, first.kind) == ("input", "channel", drift.CATEGORICAL)
    assert first.significant and first.level == drift.SHIFTED and report.level == drift.SHIFTED
    assert first.test == "χ²"
    assert field(report, "input", "amount").level == drift.STABLE


def test_a_shift_in_the_decisions_is_found(claims: Agent) -> None:
    build(claims, Shape(decisions=(0.35, 0.35, 0.3)))
    report = drift.drift_report(claims, CURRENT, BASELINE)
    first = report.top[0]
    assert (first.source, first.name) == ("decision", "decision")
    assert first.significant and report.level == drift.SHIFTED
    shares = {b.label: (b.baseline, b.current) for b in first.bins}
    assert set(shares) == {"allowed", "held", "denied"}
    assert shares["denied"][1] > shares["denied"][0]


def test_a_shift_in_the_model_outputs_is_found(claims: Agent) -> None:
    build(claims, Shape(payout_share=0.5))
    report = drift.drift_report(claims, CURRENT, BASELINE)
    moved = {(f.source, f.name) for f in report.compared if f.level != drift.STABLE}
    assert ("model output", "assess claim.decision") in moved
    assert report.level == drift.SHIFTED


def test_too_few_runs_read_as_insufficient_data_not_as_stable(claims: Agent) -> None:
    build(claims, Shape(amount_mean=3000.0), n=20)  # 40 before, 20 now
    report = drift.drift_report(claims, CURRENT, BASELINE)
    assert report.level == drift.INSUFFICIENT and report.score is None
    assert report.level_label == "insufficient data" and not report.compared
    assert field(report, "input", "amount").level == drift.INSUFFICIENT
    assert (
        field(report, "input", "amount").baseline_n,
        field(report, "input", "amount").current_n,
    ) == (40, 20)
    assert drift.drift_score(claims, NOW) is None


def test_an_agent_without_runs_reads_as_insufficient_data(claims: Agent) -> None:
    report = drift.drift_report(claims, CURRENT, BASELINE)
    assert report.level == drift.INSUFFICIENT and report.score is None
    assert [(f.source, f.name) for f in report.fields] == [("decision", "decision")]


def test_the_psi_of_a_field_is_the_one_computed_by_hand(claims: Agent) -> None:
    amounts = build(claims, Shape(amount_mean=1100.0, amount_sd=260.0))
    report = drift.drift_report(claims, CURRENT, BASELINE)
    # Bins from the baseline: sorted, the values of rank ⌊k·n/10⌋ are the edges; a value
    # falls in the bin numbered by the edges at or below it; shares floored at 1e-4.
    before, now = amounts["before"], amounts["now"]
    ordered = sorted(before)
    edges = sorted({ordered[k * len(ordered) // 10] for k in range(1, 10)})
    counts_b, counts_c = [0] * (len(edges) + 1), [0] * (len(edges) + 1)
    for v in before:
        counts_b[bisect.bisect_right(edges, v)] += 1
    for v in now:
        counts_c[bisect.bisect_right(edges, v)] += 1
    psi = 0.0
    for b, c in zip(counts_b, counts_c, strict=True):
        pb, pc = max(b / len(before), 1e-4), max(c / len(now), 1e-4)
        psi += (pc - pb) * math.log(pc / pb)
    got = field(report, "input", "amount")
    assert got.psi == pytest.approx(psi, rel=1e-12) and psi > 0
    assert [round(b.current * len(now)) for b in got.bins] == counts_c


def test_categories_with_an_empty_bin_stay_finite() -> None:
    from collections import Counter

    f = drift.categorical("input", "c", Counter({"a": 100, "b": 100}), Counter({"a": 200}))
    assert f.psi is not None and math.isfinite(f.psi) and f.psi > 1
    expected = (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert f.psi == pytest.approx(expected)


def test_the_report_costs_five_queries_however_many_runs_and_three_again(
    make_agent: Any,
) -> None:
    """Per window: the sampled runs' inputs, then their steps (decisions and outputs); and
    what the baseline holds (its runs' number and newest creation), by which it is kept:
    asked again, the current window's two queries and that one."""
    counts = []
    for i, n in enumerate((60, 240)):
        agent = make_agent(f"drift-q{i}", "tests.support.agents.counter", ALLOW_ALL_TESTS)
        build(agent, SAME, seed=i, n=n)
        for _ in range(2):
            with CaptureQueriesContext(connection) as queries:
                drift.drift_report(agent, CURRENT, BASELINE)
            counts.append(len(queries))
    assert counts == [5, 3, 5, 3], counts


def test_a_kept_baseline_sample_gives_the_report_read_anew_and_sees_runs_added(
    claims: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline's sample, kept, gives the report it gave read; runs written into the
    baseline afterwards (an import) are seen at once."""
    build(claims, SAME)
    kept = drift.drift_report(claims, CURRENT, BASELINE)
    assert drift.drift_report(claims, CURRENT, BASELINE) == kept
    read = drift._baseline_sample
    monkeypatch.setattr(drift, "_baseline_sample", drift._sample)
    assert drift.drift_report(claims, CURRENT, BASELINE) == kept
    monkeypatch.setattr(drift, "_baseline_sample", read)
    # Runs of another shape written into the baseline: it moves.
    history(claims, random.Random(9), BASELINE, 600, Shape(amount_mean=3000.0))
    moved = drift.drift_report(claims, CURRENT, BASELINE)
    assert moved.baseline_runs == 1200 and kept.baseline_runs == 600
    assert field(moved, "input", "amount").psi != field(kept, "input", "amount").psi


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_kpi_page_shows_the_drift_panel_to_those_who_may_see_the_agent(
    claims: Agent, world: Any, make_agent: Any
) -> None:
    # The page's windows end now: the history is built around the present.
    now = datetime.now(UTC)
    current = kpis.window_named("7d", now)
    rng = random.Random(3)
    history(claims, rng, drift.baseline_before(current), 400, SAME)
    history(claims, rng, current, 200, Shape(amount_mean=1500.0))
    page = _client(world.supervisor).get(f"/agents/{claims.slug}/kpis/")
    assert page.status_code == 200
    text = page.content.decode()
    panel = text.split('data-testid="drift"')[1]
    assert 'data-testid="drift-level">shifted<' in panel
    first = panel.split('data-testid="drift-field"')[1]
    assert 'data-field="input:amount"' in first and "<svg" in first
    assert " style=" not in text
    other = make_agent(
        "drift-under",
        "tests.support.agents.counter",
        ALLOW_ALL_TESTS,
        team=team_create(slug="underwriting", name="Underwriting"),
    )
    assert _client(world.supervisor).get(f"/agents/{other.slug}/kpis/").status_code == 404
    assert _client(world.outsider).get(f"/agents/{claims.slug}/kpis/").status_code == 404
    empty = _client(world.compliance).get(f"/agents/{other.slug}/kpis/").content.decode()
    assert 'data-testid="drift-level">insufficient data<' in empty


@pytest.mark.skipif(ON_SQLITE, reason="this is the child run")
def test_drift_reads_the_same_on_sqlite(tmp_path: Path) -> None:
    """This module's tests again on the embedded default's SQLite, in a child `pytest`
    (as tests/agents/test_kpis.py does): the same queries and the same verdicts there."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTEST_ADDOPTS")}
    env.update(BATON_TEST_CONTRACT_ON="sqlite", BATON_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(  # noqa: S603 (this interpreter, this module)
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).relative_to(ROOT)),
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not on_sqlite",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    # Every test of the module ran there (no count to keep in step with it).
    passed = re.search(r"\b(\d+) passed\b", done.stdout)
    assert passed and int(passed[1]) >= 16 and "failed" not in done.stdout, done.stdout
    assert "skipped" not in done.stdout, done.stdout


def test_a_field_that_appears_in_the_current_window_is_found(claims: Agent) -> None:
    build(claims, SAME, n=200)
    runs = list(Run.objects.filter(agent=claims, created_at__gte=CURRENT.start))
    for i, run in enumerate(runs):
        run.input = {**run.input, "region": ["north", "south"][i % 2]}
    Run.objects.bulk_update(runs, ["input"])
    report = drift.drift_report(claims, CURRENT, BASELINE)
    first = report.top[0]
    assert (first.source, first.name, first.level) == ("input", "region", drift.SHIFTED)
    shares = {b.label: (b.baseline, b.current) for b in first.bins}
    assert shares["(missing)"] == (1.0, 0.0)


def test_each_window_reads_at_most_its_newest_cap_runs(
    claims: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(claims, SAME, n=120)
    monkeypatch.setattr(drift, "CAP", 100)
    report = drift.drift_report(claims, CURRENT, BASELINE)
    assert (report.baseline_runs, report.current_runs) == (100, 100)

    def newest(window: kpis.Window) -> list[float]:
        runs = Run.objects.filter(
            agent=claims, created_at__gte=window.start, created_at__lt=window.end
        ).order_by("-created_at")[:100]
        return [r.input["amount"] for r in runs]

    # The bins are the newest baseline hundred's, and the shares the newest current hundred's.
    ordered = sorted(newest(BASELINE))
    edges = sorted({ordered[k * 100 // 10] for k in range(1, 10)})
    counts = [0] * (len(edges) + 1)
    for v in newest(CURRENT):
        counts[bisect.bisect_right(edges, v)] += 1
    got = field(report, "input", "amount")
    assert (got.baseline_n, got.current_n) == (100, 100)
    assert [round(b.current * 100) for b in got.bins] == counts


def test_an_alert_rule_on_drift_fires_for_a_shift_and_not_for_the_same(
    make_agent: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The alert rules read the same indicator (agents.alerts' "drift" metric): a rule
    over a week fires for the agent whose inputs moved, not for the one left alone."""
    from django.utils import timezone

    from agents import alerts
    from agents.models import AlertRule

    current = kpis.window_named("7d", timezone.now())
    rules = {}
    for slug, shape in (("drift-same", SAME), ("drift-moved", Shape(amount_mean=1400.0))):
        agent = make_agent(slug, "tests.support.agents.counter", ALLOW_ALL_TESTS)
        rng = random.Random(11)
        history(agent, rng, drift.baseline_before(current), 600, SAME)
        history(agent, rng, current, 300, shape)
        rules[slug] = alerts.alert_rule_create(
            user=None,
            agent=agent,
            name=f"{slug} drifts",
            metric="drift",
            threshold=0.25,
            clear_threshold=0.1,
            window_minutes=7 * 24 * 60,
            notify_emails="",
            notify_supervisors=False,
        )
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 1
    same, moved = (AlertRule.objects.get(pk=rules[s].pk) for s in ("drift-same", "drift-moved"))
    assert moved.state == "firing" and moved.last_value is not None and moved.last_value >= 0.25
    assert same.state == "resolved" and (same.last_value or 0.0) < 0.1
