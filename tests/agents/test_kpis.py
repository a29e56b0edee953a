"""KPIs (agents.kpis) on a constructed history: runs with set timestamps, steps with their
decisions, requests decided by people at set times, model calls, payments and orders.
Each figure is computed again here, in plain Python over the history as it was built
(never read back through the module), and the two must agree: by agent, by team and by
version, over the window and the window before, on Postgres' SQL path and on the
Python path the embedded default's SQLite takes."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.db.models import F, Q
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents import kpis, rollup
from agents.kpis import statements
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
    ShadowDecision,
)
from agents.services import team_create
from approvals.models import ApprovalRequest
from tests.conftest import ALLOW_ALL_TESTS, ON_SQLITE, ROOT

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
S, AS = Action.Status, ApprovalRequest.Status


@dataclass
class Step:
    kind: str
    name: str
    status: str
    meta: dict[str, Any] = field(default_factory=dict)
    request: tuple[str, float | None] | None = None  # (status, seconds to decide)
    paid: tuple[Decimal, str] | None = None
    ordered: Decimal | None = None
    decision: str = "allow"
    shadow: str | None = None  # what the shadow version's policy decided, if recorded


@dataclass
class BuiltRun:
    agent: Agent
    version: AgentVersion
    created: datetime
    status: str
    finished: datetime | None
    error: str
    steps: list[Step]


def _wait(rng: random.Random) -> float:
    """Seconds to decide: anywhere in two hours, or right on (or just past) one of the
    agents' targets of 5, 30 and 60 minutes, where within and past the SLA meet."""
    if rng.random() < 0.4:
        return rng.choice([300, 1800, 3600]) + rng.choice([0.0, 0.001, 1.0])
    return rng.uniform(5, 7200)


def _tool_step(rng: random.Random) -> Step:
    status = rng.choice([S.SUCCEEDED, S.SUCCEEDED, S.DENIED, S.HELD, S.REJECTED, S.FAILED])
    name = rng.choice(["payments.pay", "purchasing.create_po", "claims.flag"])
    decision = {S.DENIED: "deny", S.HELD: "approve", S.REJECTED: "approve"}.get(status, "allow")
    step = Step(Action.Kind.TOOL, name, status, decision=decision)
    if rng.random() < 0.5:
        step.shadow = rng.choice(["allow", "deny", "approve", "shadow"])
    if status == S.SUCCEEDED and name == "payments.pay":
        cents = rng.randint(100, 500_000)
        step.paid = (Decimal(cents) / 100, rng.choice(["EUR", "USD"]))
    if status == S.SUCCEEDED and name == "purchasing.create_po":
        step.ordered = Decimal(rng.randint(100, 900_000)) / 100
    # A held step (by policy, or after an unknown outcome) carries a request for people.
    if status == S.HELD:
        step.request = (AS.PENDING, None)
    elif status == S.REJECTED:
        step.request = rng.choice([(AS.REJECTED, _wait(rng)), (AS.EXPIRED, 9000.0)])
    elif status == S.SUCCEEDED and rng.random() < 0.4:
        step.request = (AS.APPROVED, _wait(rng))
    elif status == S.FAILED and rng.random() < 0.3:
        step.request = (AS.CANCELLED, rng.uniform(5, 100))
    return step


def _model_step(rng: random.Random) -> Step:
    cost = None if rng.random() < 0.2 else round(rng.uniform(0.0001, 0.05), 6)
    meta = {"tokens_in": rng.randint(10, 4000), "tokens_out": rng.randint(5, 900)}
    return Step(Action.Kind.MODEL, "scripted", S.SUCCEEDED, {**meta, "cost_eur": cost})


def build(rng: random.Random, agent: Agent, versions: list[AgentVersion], n: int) -> list[Any]:
    built = []
    for _ in range(n):
        # Over both windows of 7 days and some before them (which no figure counts).
        created = NOW - timedelta(seconds=rng.uniform(0, 16 * 86400))
        status = rng.choice(
            [Run.Status.SUCCEEDED] * 4
            + [Run.Status.FAILED, Run.Status.CANCELLED, Run.Status.WAITING, Run.Status.RUNNING]
        )
        final = status in Run.FINAL
        finished = created + timedelta(seconds=rng.uniform(0.5, 4000)) if final else None
        error = ""
        if status == Run.Status.FAILED:
            error = rng.choice(
                [f"run 1 diverged at step {rng.randint(1, 4)}: the journal holds …", "boom"]
            )
        steps = [
            _model_step(rng) if rng.random() < 0.35 else _tool_step(rng)
            for _ in range(rng.randint(0, 5))
        ]
        built.append(BuiltRun(agent, rng.choice(versions), created, status, finished, error, steps))
    return built


def store(history: list[BuiltRun]) -> None:
    """Write the history as the journal holds it: timestamps set after the rows exist
    (created_at is set on insert)."""
    for b in history:
        run = Run.objects.create(agent=b.agent, version=b.version, input={}, status=b.status)
        Run.objects.filter(pk=run.pk).update(
            created_at=b.created, finished_at=b.finished, error=b.error
        )
        for seq, step in enumerate(b.steps, 1):
            key = f"baton-run{run.pk}-step{seq}"
            action = Action.objects.create(
                run=run,
                seq=seq,
                kind=step.kind,
                name=step.name,
                status=step.status,
                decision=step.decision,
                args_hash="x",
                idempotency_key=key,
                meta=step.meta,
            )
            if step.shadow:
                ShadowDecision.objects.create(
                    action=action, agent=b.agent, version=b.version, effect=step.shadow
                )
            if step.paid:
                Payment.objects.create(
                    idempotency_key=key,
                    claim_id="CLM",
                    payee="P",
                    amount=step.paid[0],
                    currency=step.paid[1],
                )
            if step.ordered is not None:
                PurchaseOrder.objects.create(
                    idempotency_key=key,
                    sku="ABC-123",
                    supplier="S",
                    quantity=1,
                    unit_price=step.ordered,
                    total=step.ordered,
                )
            if step.request:
                status, wait = step.request
                held_at = b.created + timedelta(seconds=seq)
                request = ApprovalRequest.objects.create(
                    action=action,
                    run=run,
                    agent=b.agent,
                    version=b.version,
                    tool=step.name,
                    args={},
                    args_hash="x",
                    risk="high",
                    status=status,
                )
                ApprovalRequest.objects.filter(pk=request.pk).update(
                    created_at=held_at,
                    decided_at=None if wait is None else held_at + timedelta(seconds=wait),
                )


# --- the independent computation ------------------------------------------------------------


def quantile(values: list[float], fraction: float) -> float | None:
    """statistics' inclusive quantiles are percentile_cont's definition."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


def expected(runs: list[BuiltRun]) -> dict[str, Any]:
    tool = [s for r in runs for s in r.steps if s.kind == Action.Kind.TOOL]
    model = [s for r in runs for s in r.steps if s.kind == Action.Kind.MODEL]
    requests = [(s.request, r.agent) for r in runs for s in r.steps if s.request]
    decided = [
        (w, agent)
        for (st, w), agent in requests
        if st in (AS.APPROVED, AS.REJECTED) and w is not None
    ]
    waits = [w for w, _ in decided]
    cycles = [(r.finished - r.created).total_seconds() for r in runs if r.finished]

    def exceptional(r: BuiltRun) -> bool:
        return (
            r.status == Run.Status.FAILED
            or any(s.kind == Action.Kind.TOOL and s.status == S.DENIED for s in r.steps)
            or any(s.request and s.request[0] == AS.REJECTED for s in r.steps)
        )

    paid: dict[str, Decimal] = defaultdict(Decimal)
    for s in tool:
        if s.paid:
            paid[s.paid[1]] += s.paid[0]
    return {
        "runs": len(runs),
        "finished": len(cycles),
        "succeeded": sum(r.status == Run.Status.SUCCEEDED for r in runs),
        "failed": sum(r.status == Run.Status.FAILED for r in runs),
        "diverged": sum("diverged at step" in r.error for r in runs),
        "exceptions": sum(exceptional(r) for r in runs),
        "cycle_p50": quantile(cycles, 0.5),
        "cycle_p95": quantile(cycles, 0.95),
        "steps": len(tool),
        "denied": sum(s.status == S.DENIED for s in tool),
        "shadow_differs": sum(s.shadow is not None and s.shadow != s.decision for s in tool),
        "held": len(requests),
        "rejected": sum(st == AS.REJECTED for (st, _), _a in requests),
        "decided": len(decided),
        "expired": sum(st == AS.EXPIRED for (st, _), _a in requests),
        "within_sla": sum(w <= a.decision_sla_minutes * 60 for w, a in decided),
        "decide_p50": quantile(waits, 0.5),
        "decide_p95": quantile(waits, 0.95),
        "model_calls": len(model),
        "tokens_in": sum(s.meta["tokens_in"] for s in model),
        "tokens_out": sum(s.meta["tokens_out"] for s in model),
        "cost_eur": sum(s.meta["cost_eur"] or 0 for s in model),
        "paid": dict(paid),
        "ordered": sum((s.ordered for s in tool if s.ordered is not None), Decimal(0)),
    }


def spark(runs: list[BuiltRun], window: kpis.Window) -> tuple[list[int], list[int]]:
    step = timedelta(hours=1) if window.length <= timedelta(days=1) else timedelta(days=1)
    first = window.start.replace(minute=0, second=0, microsecond=0)
    if step == timedelta(days=1):
        first = first.replace(hour=0)
    count = 0
    while first + count * step < window.end:
        count += 1
    per, bad = [0] * count, [0] * count
    for r in runs:
        i = int((r.created - first) / step)
        per[i] += 1
        bad[i] += int(expected([r])["exceptions"])
    return per, bad


def assert_same(got: kpis.Figures, want: dict[str, Any], where: str) -> None:
    for name, value in want.items():
        actual = getattr(got, name)
        if value is None:
            assert actual is None, (where, name, actual)
        elif isinstance(value, float):
            assert actual == pytest.approx(value, rel=1e-9, abs=1e-6), (where, name)
        else:
            assert actual == value, (where, name, actual, value)


# --- the history and the tests ---------------------------------------------------------------


@pytest.fixture
def history(make_agent: Any, world: Any) -> dict[str, Any]:
    rng = random.Random(14)
    underwriting = team_create(slug="underwriting", name="Underwriting")
    a = make_agent("kpi-claims-a", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    b = make_agent("kpi-claims-b", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    c = make_agent(
        "kpi-under-c", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=underwriting
    )
    Agent.objects.filter(pk=a.pk).update(decision_sla_minutes=30)
    Agent.objects.filter(pk=b.pk).update(decision_sla_minutes=5)
    for agent in (a, b, c):
        agent.refresh_from_db()
    a2 = AgentVersion.objects.create(agent=a, number=2, program=a.live_version.program)
    Agent.objects.filter(pk=a.pk).update(canary_version=a2, canary_percent=30)
    a.refresh_from_db()
    built = build(rng, a, [a.live_version, a2], 70)
    built += build(rng, b, [b.live_version], 40)
    built += build(rng, c, [c.live_version], 40)
    store(built)
    return {"agents": [a, b, c], "built": built, "canary": a2}


@pytest.mark.parametrize("source", ["journal", "rollup"])
@pytest.mark.parametrize("path", ["sql", "python"])
@pytest.mark.parametrize("name", ["24h", "7d"])
def test_every_figure_agrees_with_a_computation_over_the_history_as_built(
    history: dict[str, Any], name: str, path: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the journal alone (no scope: as the alert rules ask), and from the rollup
    filled (agents.rollup: every closed hour of the history rolled up, the hours with a
    run waiting or running left open) with the window's partial hours and the open ones
    from the journal (the pages): the same figures."""
    if path == "python":  # the embedded default's SQLite path, on the same rows
        monkeypatch.setattr(kpis.journal, "_in_sql", lambda: False)
    scope = None
    if source == "rollup":
        rollup.kpi_rollup()
        assert KpiHour.objects.exists() and KpiOpenHour.objects.exists()
        scope = Q()
    window = kpis.window_named(name, NOW)
    if scope is not None:
        # The window's edges cut through hours (12:30), and some hours are read whole
        # from the rollup.
        assert window.start.minute == 30 and kpis.plan_rollup(scope, window).hours > 0
    groups = {
        "agent": lambda r: r.agent.pk,
        "team": lambda r: r.agent.team_id,
        "version": lambda r: r.version.pk,
    }
    # The pages add a team's agents up, and an agent's versions (kpis.figures_summed):
    # the same figures again.
    team_of = dict(Agent.objects.values_list("pk", "team_id"))
    agent_of = dict(AgentVersion.objects.values_list("pk", "agent_id"))
    parts = {"team": ("agent", team_of.__getitem__), "agent": ("version", agent_of.__getitem__)}
    checked = 0
    for by, group_of in groups.items():
        results = [kpis.figures(Run.objects.all(), by, window, scope=scope)]
        if by in parts:
            part, parent = parts[by]
            results.append(
                kpis.figures_summed(Run.objects.all(), part, by, parent, window, scope=scope)[1]
            )
            # The fleet page asks the teams' percentiles alone: the same teams' figures.
            alone = kpis.figures_summed(
                Run.objects.all(), part, by, parent, window, scope=scope, part_percentiles=False
            )
            results.append(alone[1])
            assert all(p.current.cycle_p50 is None for p in alone[0].values()), by
            # As the pages ask, by the agents' ids: the journal's part read by the pages'
            # kept statements (agents.kpis.statements).
            every = sorted(team_of)
            results.append(
                kpis.figures_summed(
                    Run.objects.filter(agent_id__in=every),
                    part,
                    by,
                    parent,
                    window,
                    scope=None if scope is None else Q(agent_id__in=every),
                    agent_ids=every,
                )[1]
            )
        ids = {group_of(r) for r in history["built"]}
        for got, gid in ((got, gid) for got in results for gid in ids):
            mine = [r for r in history["built"] if group_of(r) == gid]
            now = [r for r in mine if window.start <= r.created < window.end]
            before = [r for r in mine if window.previous_start <= r.created < window.start]
            pair = got.get(gid, kpis.Pair())
            assert_same(pair.current, expected(now), f"{by} {gid} now")
            assert_same(pair.previous, expected(before), f"{by} {gid} before")
            if now:
                per, bad = spark(now, window)
                assert pair.current.runs_per_bucket == per, (by, gid)
                assert pair.current.exceptions_per_bucket == bad, (by, gid)
            checked += len(now) + len(before)
    # The history is rich enough to test something: over a week and the week before,
    # every kind of figure is non-zero (two days hold fewer).
    totals = expected(
        [r for r in history["built"] if window.previous_start <= r.created < window.end]
    )
    # Each run checked nine times: by agent, team and version; the teams and the agents
    # as their parts added up, with and without the parts' percentiles, and as the pages
    # read them.
    assert checked == 9 * totals["runs"] and totals["runs"] > 0
    if name == "24h":
        return
    rare = ("diverged", "denied", "shadow_differs", "rejected", "expired", "within_sla")
    assert all(totals[k] for k in rare)
    assert totals["decided"] > totals["within_sla"] and totals["paid"] and totals["ordered"]


def test_the_pages_statements_are_compiled_once_and_run_with_each_requests_values(
    history: dict[str, Any],
) -> None:
    """The pages' journal queries are compiled once a shape (grouping, kind of window,
    number of journal ranges) and then run with each request's values: other agents and
    another window's bounds in the same statements give their own figures, the same as
    built anew; the values never go into the SQL text; a value missing is an error, not a
    query run without it."""
    a, b, c = history["agents"]
    rollup.kpi_rollup()
    statements._KEPT.clear()
    team_of = dict(Agent.objects.values_list("pk", "team_id"))
    asked = [
        ([a.pk, b.pk, c.pk], NOW),
        ([a.pk, b.pk, c.pk], NOW - timedelta(minutes=7)),
        ([c.pk], NOW - timedelta(hours=5)),
        ([b.pk], NOW),
    ]
    ranges = []
    for ids, now in asked:
        window = kpis.window_named("7d", now)
        scope = Q(agent_id__in=ids)
        ranges.append(len(kpis.plan_rollup(scope, window).journal_ranges))
        runs = Run.objects.filter(scope)
        kept = kpis.figures_summed(
            runs, "agent", "team", team_of.__getitem__, window, scope=scope, agent_ids=ids
        )
        anew = kpis.figures_summed(runs, "agent", "team", team_of.__getitem__, window, scope=scope)
        assert set(kept[0]) == set(anew[0]) and set(kept[0]) <= set(ids)
        for got, want in zip(kept, anew, strict=True):
            for gid, pair in want.items():
                same_figures(got[gid].current, pair.current, f"{gid} now")
                same_figures(got[gid].previous, pair.previous, f"{gid} before")
        # A page's two queries a shape, a new one only for a new number of ranges, and
        # the open hours' look-up (agents.kpis.rolled.plan_rollup).
        assert len(statements._KEPT) == 2 * len(set(ranges)) + 1, ranges
        for statement in statements._KEPT.values():
            assert str(window.start.date()) not in statement.sql
            # The request's values are slots: no bound, no agents' ids among the constants.
            assert not [p for p in statement.params if isinstance(p, datetime | list)]
            slots = {p.name for p in statement.params if isinstance(p, statements.Slot)}
            assert {"agents", "from0", "to0"} <= slots or slots == {"agents", "lo", "hi"}
    assert len(set(ranges)) < len(ranges)  # some asked again in a shape already kept
    kept_one = next(iter(statements._KEPT.values()))
    with pytest.raises(KeyError):
        list(statements.run_statement(kept_one, {}))
    with pytest.raises(KeyError):
        list(statements.run_statement(kept_one))


# --- the rollup (agents.rollup) -------------------------------------------------------------


def same_figures(got: kpis.Figures, want: kpis.Figures, where: str) -> None:
    for name, value in vars(want).items():
        if isinstance(value, float):
            assert getattr(got, name) == pytest.approx(value, rel=1e-9, abs=1e-6), (where, name)
        else:
            assert getattr(got, name) == value, (where, name, getattr(got, name), value)


def rollup_rows() -> list[Any]:
    """Every row of the rollup's tables, without their ids."""
    out: list[Any] = []
    for model in (KpiHour, KpiHourPaid, KpiHourWait, KpiOpenHour):
        fields = [f.attname for f in model._meta.concrete_fields if f.attname != "id"]
        out += sorted((model.__name__, *row) for row in model.objects.values_list(*fields))
    return out


def test_the_rollup_gives_the_journal_figures_over_any_window(history: dict[str, Any]) -> None:
    """The pages' figures with the rollup filled equal those read from the journal alone,
    for windows whose edges cut through hours or fall on them, and after an agent's SLA
    target changed (the rollup keeps the decisions' minutes, not a count for one target)."""
    rolled = rollup.kpi_rollup()
    assert rolled.written and rolled.open
    # Every hour of the history was examined; the hours with a run waiting or running, or
    # a request pending, are open and hold no rows.
    through = KpiRollup.objects.get().through
    assert through is not None and through > NOW
    unfinished = {
        (b.agent.pk, kpis.floor_hour(b.created))
        for b in history["built"]
        if b.status not in Run.FINAL or any(s.request == (AS.PENDING, None) for s in b.steps)
    }
    assert set(KpiOpenHour.objects.values_list("agent_id", "hour")) == unfinished
    assert not any(
        (agent, hour) in unfinished
        for agent, hour in KpiHour.objects.filter(hours=1).values_list("agent", "hour")
    )
    # A whole day of an agent is one row a version (its hours' added), unless one of its
    # hours is open.
    days = KpiHour.objects.filter(hours=24).values_list("agent", "hour")
    assert days and not any(
        (a, d) in {(a, kpis.floor_day(h)) for a, h in unfinished} for a, d in days
    )
    a, b, _c = history["agents"]
    Agent.objects.filter(pk=a.pk).update(decision_sla_minutes=5)
    Agent.objects.filter(pk=b.pk).update(decision_sla_minutes=60)
    windows = [
        kpis.window_named("24h", NOW),
        kpis.window_named("7d", NOW),
        kpis.window_named("30d", NOW),
        kpis.Window("24h", NOW.replace(minute=0)),  # edges on the hour
        kpis.Window("7d", NOW.replace(minute=0)),  # on the hour, not at midnight
        kpis.Window("7d", NOW.replace(hour=0, minute=0)),  # at midnight
        kpis.Window("custom", NOW - timedelta(hours=5, minutes=13), span=timedelta(days=3)),
    ]

    def compare() -> None:
        for window in windows:
            for by in ("agent", "team", "version"):
                journal = kpis.figures(Run.objects.all(), by, window)
                both = kpis.figures(Run.objects.all(), by, window, scope=Q())
                assert set(journal) == set(both) and journal
                for gid, pair in journal.items():
                    same_figures(both[gid].current, pair.current, f"{window} {by} {gid} now")
                    same_figures(both[gid].previous, pair.previous, f"{window} {by} {gid} ago")
            assert kpis.plan_rollup(Q(), window).hours > 0

    compare()
    # Every run ends and every request with it: the next round closes every hour, and
    # whole days are read from their day rows (one straddling the windows' meeting).
    Run.objects.exclude(status__in=Run.FINAL).update(
        status=Run.Status.CANCELLED, finished_at=F("created_at") + timedelta(seconds=9)
    )
    ApprovalRequest.objects.filter(status=AS.PENDING).update(status=AS.CANCELLED)
    rollup.kpi_rollup()
    assert not KpiOpenHour.objects.exists()
    assert KpiHour.objects.filter(hours=24, hour=kpis.floor_day(NOW - timedelta(days=7))).exists()
    compare()
    # The pages' scopes: one agent, the agents a person sees.
    window = kpis.window_named("7d", NOW)
    one = kpis.figures(Run.objects.filter(agent=a), "version", window, scope=Q(agent=a))
    alone = kpis.figures(Run.objects.filter(agent=a), "version", window)
    for gid, pair in alone.items():
        same_figures(one[gid].current, pair.current, f"version {gid}")


def test_an_hour_open_for_one_agent_is_read_from_the_journal_for_every_agent(
    history: dict[str, Any],
) -> None:
    """The plan is hour ranges alone: an hour open for one agent (a run waiting in it) is
    read from the journal for all the agents of the scope, and none of its rolled-up rows
    is read beside (no run counted twice, none left out); no query carries a list of the
    agents each open hour is open for."""
    rollup.kpi_rollup()
    window = kpis.window_named("30d", NOW)
    opened = KpiOpenHour.objects.filter(hour__gte=kpis.ceil_hour(window.previous_start))
    open_agent, hour = opened.values_list("agent_id", "hour").earliest("hour")
    others = KpiHour.objects.filter(hours=1, hour=hour).exclude(agent_id=open_agent)
    assert others.exists(), "another agent's runs of the open hour are rolled up"
    ids = list(Agent.objects.values_list("pk", flat=True))
    for scope in (Q(), Q(agent_id__in=ids)):
        plan = kpis.plan_rollup(scope, window)
        assert (
            not KpiHour.objects.filter(scope, plan.rollup, hour__gte=hour)
            .filter(hour__lt=hour + kpis.HOUR)
            .exists()
        )
        in_hour = Run.objects.filter(scope, created_at__gte=hour, created_at__lt=hour + kpis.HOUR)
        assert in_hour.filter(plan.journal).count() == in_hour.count() > 1
        assert "agent" not in str(plan.journal) and "agent" not in str(plan.rollup)
        # Its day is read hour by hour: no day row of it.
        day = kpis.floor_day(hour)
        assert not KpiHour.objects.filter(plan.rollup, hours=24, hour=day).exists()


def forget_kept() -> None:
    """What pages kept of the rollup no longer read: a new generation of it (as a rebuild
    makes). Not by emptying the cache: the suite's broker and channel layer share it."""
    KpiRollup.objects.update(generation=uuid.uuid4())


def test_the_kept_rolled_up_part_gives_the_figures_read_anew_whatever_changed(
    history: dict[str, Any],
) -> None:
    """A page keeps what it read of a window's rolled-up part (kpis.closed_part): kept, the
    figures are those read anew — after an SLA target changed, an agent moved to another
    team, the rollup was rebuilt, an open hour closed — and the kept part is really read
    in place of the rollup (its queries are not run)."""
    rollup.kpi_rollup()
    a, b, c = history["agents"]
    window = kpis.window_named("7d", NOW)

    def pages(kept: bool) -> tuple[dict[int, kpis.Pair], dict[int, kpis.Pair]]:
        return kpis.fleet_figures(list(Agent.objects.order_by("pk")), window, keep=kept)

    def same(got: Any, want: Any, where: str) -> None:
        for i in (0, 1):
            assert set(got[i]) == set(want[i]), where
            for gid, pair in want[i].items():
                same_figures(got[i][gid].current, pair.current, f"{where} {gid} now")
                same_figures(got[i][gid].previous, pair.previous, f"{where} {gid} ago")

    def queries(kept: bool) -> int:
        with CaptureQueriesContext(connection) as q:
            pages(kept)
        return len(q)

    forget_kept()
    first = pages(kept=True)
    same(first, pages(kept=False), "read")
    same(pages(kept=True), first, "kept")
    # Kept: none of the rolled-up part's six queries.
    assert queries(kept=True) == queries(kept=False) - 6
    # An SLA target changed (5 minutes to 60): the decisions within it are counted anew,
    # those of the rolled-up hours too.
    Agent.objects.filter(pk=b.pk).update(decision_sla_minutes=60)
    scope = Q(agent_id=b.pk)
    assert kpis.rolled._read_closed(
        scope, "agent_id", window, kpis.plan_rollup(scope, window), False
    ).within
    moved = pages(kept=True)
    same(moved, pages(kept=False), "sla")
    assert moved[0][b.pk].current.within_sla > first[0][b.pk].current.within_sla
    # An agent moved to another team: the teams' figures and bars follow it.
    Agent.objects.filter(pk=c.pk).update(team=a.team)
    moved = pages(kept=True)
    same(moved, pages(kept=False), "team")
    assert moved[1][a.team_id].current.runs > first[1][a.team_id].current.runs
    # Rows of examined hours written again (a rebuild): what was kept of the old ones is
    # not read again. (Rows made wrong by hand, and read and kept so, stand for a
    # rollup that a rebuild puts right.)
    KpiHour.objects.update(runs=F("runs") + 1000)
    forget_kept()
    wrong = pages(kept=True)
    assert wrong[1][a.team_id].current.runs > moved[1][a.team_id].current.runs + 1000
    rollup.kpi_rollup_rebuild()
    same(pages(kept=True), pages(kept=False), "rebuilt")
    same(pages(kept=True), moved, "rebuilt as before")
    # The open hours close: the plan reads them from the rollup now, and the kept part
    # of the old plan is not read for the new one.
    before = kpis.plan_rollup(Q(), window).hours
    Run.objects.exclude(status__in=Run.FINAL).update(
        status=Run.Status.CANCELLED, finished_at=F("created_at") + timedelta(seconds=9)
    )
    ApprovalRequest.objects.filter(status=AS.PENDING).update(status=AS.CANCELLED)
    rollup.kpi_rollup()
    assert kpis.plan_rollup(Q(), window).hours > before
    same(pages(kept=True), pages(kept=False), "closed")


def test_with_the_cache_unreachable_the_pages_read_the_rollup_and_log_it(
    history: dict[str, Any], world: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The shared cache down (a Redis nobody listens for): the KPI pages read what they
    would have kept, answer 200, and the log says why they were slower."""
    rollup.kpi_rollup()
    a = history["agents"][0]
    down = RedisCache("redis://127.0.0.1:9/0", {"OPTIONS": {"socket_connect_timeout": 1}})
    monkeypatch.setattr(kpis.rolled, "caches", {"default": down})
    client = _client(world.compliance)
    for url in ("/kpis/?window=30d", f"/agents/{a.slug}/kpis/?window=30d"):
        assert client.get(url).status_code == 200, url
    assert "kpis.cache_unreachable" in caplog.text


def test_a_kept_part_is_kept_in_the_process_too_for_its_time_and_a_bounded_few(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a page kept (kpis.kept, in_process) is found again in the process without the
    shared cache — still answered with the cache down — until its time is up, then read
    anew; and a process keeps only the IN_PROCESS_KEPT entries read last."""
    rolled = kpis.rolled
    monkeypatch.setattr(rolled, "_IN_PROCESS", type(rolled._IN_PROCESS)())
    reads: list[int] = []

    def read(n: int) -> Any:
        reads.append(n)
        return ("part", n)

    said = ("test", uuid.uuid4().hex)
    assert rolled.kept("t", said, lambda: read(1), 60, in_process=True) == ("part", 1)
    down = RedisCache("redis://127.0.0.1:9/0", {"OPTIONS": {"socket_connect_timeout": 1}})
    monkeypatch.setattr(rolled, "caches", {"default": down})
    assert rolled.kept("t", said, lambda: read(2), 60, in_process=True) == ("part", 1)
    assert reads == [1]
    # Its time up (the clock moved past it): read anew.
    later = time.monotonic() + 61
    monkeypatch.setattr(rolled.time, "monotonic", lambda: later)
    assert rolled.kept("t", said, lambda: read(3), 60, in_process=True) == ("part", 3)
    # Bounded: the oldest entries go first.
    for i in range(rolled.IN_PROCESS_KEPT + 3):
        rolled.kept("t", (*said, i), lambda: read(9), 60, in_process=True)
    assert len(rolled._IN_PROCESS) == rolled.IN_PROCESS_KEPT
    assert rolled._in_process_get(rolled._IN_PROCESS.__iter__().__next__()) is not None
    # Without in_process, nothing is kept here.
    rolled._IN_PROCESS.clear()
    rolled.kept("t", (*said, "shared only"), lambda: read(4), 60)
    assert not rolled._IN_PROCESS


def test_the_rollup_twice_or_by_two_workers_at_once_leaves_the_same_rows(
    history: dict[str, Any],
) -> None:
    rollup.kpi_rollup()
    first = rollup_rows()
    again = rollup.kpi_rollup()
    # Nothing new but the open hours, examined again and still open.
    assert (again.written, again.open) == (0, KpiOpenHour.objects.count())
    assert rollup_rows() == first
    # Rebuilt from the journal, whole or a range: the same rows again.
    rollup.kpi_rollup_rebuild()
    assert rollup_rows() == first
    rollup.kpi_rollup_rebuild(NOW - timedelta(days=3, minutes=20), NOW)
    assert rollup_rows() == first


@pytest.mark.skipif(ON_SQLITE, reason="SQLite has one writer; make run's threads queue")
@pytest.mark.django_db(transaction=True)
def test_two_workers_rolling_up_at_once_leave_the_rows_of_one(
    make_agent: Any, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    agent = make_agent("kpi-two", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    store(build(rng, agent, [agent.live_version], 60))
    # Not this process's lock: the database's (the rollup's row, locked for update), as
    # between two worker processes.
    monkeypatch.setattr(rollup, "_one_at_a_time", contextlib.nullcontext())
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=30)
            rollup.kpi_rollup()
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    together = rollup_rows()
    assert together and any(row[0] == "KpiHour" for row in together)
    rollup.kpi_rollup_rebuild()
    assert rollup_rows() == together


def test_a_run_that_finishes_later_has_its_hour_rolled_up_then(make_agent: Any, world: Any) -> None:
    agent = make_agent("kpi-late", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    hour = kpis.floor_hour(NOW) - timedelta(hours=3)
    held = Step(Action.Kind.TOOL, "payments.pay", S.HELD, request=(AS.PENDING, None))
    done = Step(Action.Kind.MODEL, "scripted", S.SUCCEEDED, {"tokens_in": 5, "tokens_out": 2})
    v = agent.live_version
    store(
        [
            BuiltRun(agent, v, hour + timedelta(minutes=10), Run.Status.WAITING, None, "", [held]),
            BuiltRun(
                agent,
                v,
                hour + timedelta(minutes=20),
                Run.Status.SUCCEEDED,
                hour + timedelta(minutes=21),
                "",
                [done],
            ),
            BuiltRun(
                agent,
                v,
                hour + timedelta(hours=1, minutes=5),
                Run.Status.SUCCEEDED,
                hour + timedelta(hours=1, minutes=6),
                "",
                [done],
            ),
        ]
    )
    rollup.kpi_rollup()
    assert list(KpiOpenHour.objects.values_list("agent_id", "hour")) == [(agent.pk, hour)]
    # Nor a row for the day: one of its hours is open.
    assert list(KpiHour.objects.values_list("hour", "hours", "runs")) == [
        (hour + timedelta(hours=1), 1, 1)
    ]
    window = kpis.window_named("24h", NOW)
    scope = Q(agent=agent)
    page = kpis.figures(Run.objects.filter(scope), "agent", window, scope=scope)[agent.pk]
    assert (page.current.runs, page.current.held, page.current.decided) == (3, 1, 0)
    # The run is approved and succeeds; the next round rolls its hour up.
    waiting = Run.objects.get(agent=agent, status=Run.Status.WAITING)
    request = ApprovalRequest.objects.get(run=waiting)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        status=AS.APPROVED, decided_at=request.created_at + timedelta(minutes=4)
    )
    Action.objects.filter(run=waiting).update(status=S.SUCCEEDED)
    Run.objects.filter(pk=waiting.pk).update(
        status=Run.Status.SUCCEEDED, finished_at=hour + timedelta(minutes=30)
    )
    rollup.kpi_rollup()
    assert not KpiOpenHour.objects.exists()
    assert sorted(KpiHour.objects.values_list("hour", "hours", "runs", "held", "decided")) == [
        (kpis.floor_day(hour), 24, 3, 1, 1),  # the whole day, now every hour is closed
        (hour, 1, 2, 1, 1),
        (hour + timedelta(hours=1), 1, 1, 0, 0),
    ]
    assert sorted(KpiHourWait.objects.values_list("hours", "minutes", "decided")) == [
        (1, 4, 1),
        (24, 4, 1),
    ]
    page = kpis.figures(Run.objects.filter(scope), "agent", window, scope=scope)[agent.pk]
    journal = kpis.figures(Run.objects.filter(scope), "agent", window)[agent.pk]
    same_figures(page.current, journal.current, "after")
    assert (page.current.runs, page.current.decided, page.current.within_sla) == (3, 1, 1)


def test_the_rollup_command_catches_up_and_rebuilds(history: dict[str, Any]) -> None:
    from django.core.management import CommandError, call_command

    out = io.StringIO()
    call_command("kpi_rollup", stdout=out)
    assert "agent version hours rolled up" in out.getvalue()
    rows = rollup_rows()
    KpiHour.objects.filter(hour__gte=NOW - timedelta(days=2)).update(runs=999)
    call_command("kpi_rollup", "--rebuild", "--since", (NOW - timedelta(days=3)).isoformat())
    assert rollup_rows() == rows
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("kpi_rollup", "--rebuild", "--since", "last tuesday")
    assert rollup_rows() == rows


def test_the_rollup_is_a_beat_timer_of_every_layout() -> None:
    """In settings.CELERY_BEAT_SCHEDULE, which `make run`'s beat thread, `celery beat`
    and `celery worker -B` all read, and registered with the worker's app."""
    from django.conf import settings

    from console.celery import app

    timers = {t["task"]: t["schedule"] for t in settings.CELERY_BEAT_SCHEDULE.values()}
    assert timers["kpis.rollup"] == settings.BATON_KPI_ROLLUP_EVERY_SECONDS
    app.loader.import_default_modules()
    assert "kpis.rollup" in app.tasks


def test_the_ratios_divide_like_with_like() -> None:
    f = kpis.Figures(runs=8, succeeded=4, exceptions=2, steps=10, held=3, decided=3, expired=1)
    f.within_sla, f.cost_eur, f.tokens_in, f.tokens_out = 2, 0.8, 100, 60
    assert (f.exception_rate, f.held_share, f.sla_attainment) == (0.25, 0.3, 0.5)
    assert (f.cost_per_run, f.cost_per_transaction, f.tokens_per_run) == (0.1, 0.2, 20)
    assert kpis.Figures().exception_rate is None and kpis.Figures().cost_per_transaction is None


def test_percentile_cont_in_python_interpolates_between_the_closest_ranks() -> None:
    assert kpis.percentile_cont([], 0.5) is None
    assert kpis.percentile_cont([7.0], 0.95) == 7.0
    assert kpis.percentile_cont([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert kpis.percentile_cont([10.0, 20.0], 0.95) == pytest.approx(19.5)


@pytest.mark.parametrize("path", ["sql", "python"])
def test_the_money_moved_keeps_any_currency_a_tool_wrote(
    path: str, make_agent: Any, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment's currency is whatever the tool wrote — quotes, separators, a backslash,
    a non-ASCII sign — and the money moved keeps each apart, exact, as the journal's
    generic read and the pages' kept statements read it; a step whose sandbox row is
    gone moved nothing."""
    if path == "python":
        monkeypatch.setattr(kpis.journal, "_in_sql", lambda: False)
    agent = make_agent("kpi-money", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    pay, order = "payments.pay", "purchasing.create_po"
    odd = ['";\\', "€ ,", "EUR"]
    steps = [Step(Action.Kind.TOOL, pay, S.SUCCEEDED, paid=(Decimal("12.34"), c)) for c in odd]
    steps += [
        Step(Action.Kind.TOOL, pay, S.SUCCEEDED, paid=(Decimal("0.01"), odd[0])),
        Step(Action.Kind.TOOL, order, S.SUCCEEDED, ordered=Decimal("9999999999.99")),
        Step(Action.Kind.TOOL, pay, S.SUCCEEDED),  # its payment row is gone
        Step(Action.Kind.TOOL, order, S.SUCCEEDED),  # and this order's
    ]
    created = NOW - timedelta(hours=2)
    ran = BuiltRun(agent, agent.live_version, created, Run.Status.SUCCEEDED, created, "", steps)
    store([ran])
    window = kpis.window_named("24h", NOW)
    runs = Run.objects.filter(agent=agent)
    read = kpis.figures(runs, "agent", window)[agent.pk].current
    paged = kpis.figures_summed(
        runs, "version", "agent", lambda _: agent.pk, window, agent_ids=[agent.pk]
    )[1][agent.pk].current
    for f in (read, paged):
        assert f.paid == {
            odd[0]: Decimal("12.35"),
            odd[1]: Decimal("12.34"),
            "EUR": Decimal("12.34"),
        }
        assert f.ordered == Decimal("9999999999.99")


def test_the_pages_percentiles_are_percentile_cont_s() -> None:
    """The pages' p50 and p95 of a group (from the values at the ranks they lie between,
    and from a kept part's sorted values around the ranks with the journal's) are numpy's
    percentiles — Postgres' percentile_cont — for any number of values, ties and one value
    included, however the values are split between the parts (fixed seed)."""
    rng = random.Random(21)
    for n in (1, 2, 3, 4, 5, 19, 20, 21, 100, 1001, 20000):
        for _ in range(5):
            values = [rng.choice([1.0, 2.0, rng.expovariate(0.01)]) for _ in range(n)]
            want = [kpis.percentile_cont(values, 0.5), kpis.percentile_cont(values, 0.95)]
            got = kpis.journal._p50_p95(np.asarray(values))
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), n
            # Split into a kept part (sorted) and the journal's (any order, fewer or more,
            # none or all): the same percentiles from the kept values around the ranks.
            for cut in {0, n // 3, n - min(n, 7), n}:
                kept = np.sort(np.asarray(values[:cut]))
                other = np.asarray(values[cut:])
                both = kpis.journal._p50_p95_of_both(kept, other)
                assert both == pytest.approx(want, rel=1e-12, abs=1e-12), (n, cut)


def test_an_unknown_window_is_refused() -> None:
    with pytest.raises(ValueError, match="24h, 7d or 30d"):
        kpis.window_named("1y")


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_agent_page_shows_the_figures_and_the_canary_beside_live(
    history: dict[str, Any], world: Any
) -> None:
    a = history["agents"][0]
    page = _client(world.supervisor).get(f"/agents/{a.slug}/kpis/?window=30d")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'data-testid="sparkline"' in text and "<svg" in text
    assert 'data-testid="kpi-canary"' in text
    assert f"Canary: v{history['canary'].number} beside live v{a.live_version.number}" in text
    assert 'data-testid="kpi-version-2"' in text and 'data-testid="kpi-version-1"' in text
    window = kpis.window_named("30d")
    runs = [r for r in history["built"] if r.agent == a and r.created >= window.start]
    assert f'<td class="num">{len(runs):,}' in text.split('data-testid="kpi-runs"')[1]
    assert " style=" not in text


def test_an_unknown_window_answers_400_with_the_reason(history: dict[str, Any], world: Any) -> None:
    a = history["agents"][0]
    page = _client(world.supervisor).get(f"/agents/{a.slug}/kpis/?window=forever")
    assert page.status_code == 400
    assert kpis.UNKNOWN_WINDOW in page.content.decode()


def test_a_supervisor_sees_only_their_teams_and_compliance_sees_all(
    history: dict[str, Any], world: Any
) -> None:
    a, _b, c = history["agents"]
    fleet = _client(world.supervisor).get("/kpis/").content.decode()
    assert 'data-testid="kpi-team-claims"' in fleet and a.slug in fleet
    assert "underwriting" not in fleet.lower() and c.slug not in fleet
    assert _client(world.supervisor).get(f"/agents/{c.slug}/kpis/").status_code == 404
    everything = _client(world.compliance).get("/kpis/").content.decode()
    assert 'data-testid="kpi-team-underwriting"' in everything and c.slug in everything
    assert _client(world.compliance).get(f"/agents/{c.slug}/kpis/").status_code == 200
    nothing = _client(world.outsider).get("/kpis/").content.decode()
    assert "No agents you may see." in nothing and a.slug not in nothing
    assert Client().get("/kpis/").status_code == 302


def test_the_agent_page_links_to_its_kpis_and_the_nav_to_the_fleet(
    history: dict[str, Any], world: Any
) -> None:
    a = history["agents"][0]
    text = _client(world.supervisor).get(f"/agents/{a.slug}/").content.decode()
    assert f'href="/agents/{a.slug}/kpis/"' in text and 'href="/kpis/"' in text


# What each KPI page costs in queries, for compliance (model-wide permissions), with the
# rollup filled (agents.rollup), when it reads the window's rolled-up part and when it
# finds that part kept (agents.kpis.closed_part):
#  1-4. the session, the person, their permissions (the person's, then their groups')
#  the fleet page: 5. the agents the person sees; 6 and the last but three: the
#     transaction the figures' queries run in (a savepoint here, inside the test's
#     transaction), 7. SET LOCAL jit = off and work_mem; 8-9. how far the rollup has
#     looked (and its generation), and the hours it left open; when read: by agent, the
#     rollup's whole hours and days: figures, bars, money paid, decisions within the
#     SLA, and the cycle times and times to decide of their runs; then the rest from the
#     journal: runs (and their sparkline bars, and their cycle times packed), steps
#     (the payments and orders they made, the requests they were held by, and the
#     decided ones' times to decide packed); the teams' percentiles from those
#     durations and the rolled-up part's (the agents' are not shown there); the teams'
#     other figures the agents' added up (kpis.figures_summed)
#  the agent page: 5. the agent; by version, as the fleet page by agent, and the
#     versions' and the agent's percentiles from the same durations; the versions'
#     numbers; drift (agents.drift): what the baseline holds (its sample kept since the
#     first request), the current window's sampled runs' inputs, then their steps (the
#     tool steps' decisions, the model steps' outputs); the agent's alert rules
#     (agents.alerts.agent_rules)
#  then the console context: engaged kill switches, where the live stream starts, the
#  person's groups (base.html).
PAGE_QUERIES = {"/kpis/": (21, 15), "/agents/kpi-0/kpis/": (26, 20)}


@pytest.mark.parametrize("url", list(PAGE_QUERIES))
def test_the_kpi_pages_cost_the_same_queries_for_three_agents_as_for_eight(
    url: str, make_agent: Any, world: Any
) -> None:
    rng = random.Random(3)
    client = _client(world.compliance)
    for n in (3, 8):
        for i in range(len(Agent.objects.filter(slug__startswith="kpi-")), n):
            agent = make_agent(f"kpi-{i}", "tests.support.agents.counter", ALLOW_ALL_TESTS)
            store(build(rng, agent, [agent.live_version], 12))
        # The history rolled up (some hours open), so every query of the pages runs.
        rollup.kpi_rollup()
        assert KpiHour.objects.exists() and KpiOpenHour.objects.exists()
        assert client.get(url).status_code == 200  # fills the process-wide caches
        counted = []
        forget_kept()  # the rolled-up part read, then found kept
        for _ in range(2):
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200
            counted.append(len(queries))
        assert tuple(counted) == PAGE_QUERIES[url], [q["sql"][:80] for q in queries]


@pytest.mark.skipif(ON_SQLITE, reason="this is the child run")
def test_the_figures_and_pages_agree_on_sqlite(tmp_path: Path) -> None:
    """The figure and page tests of this module, run again on the embedded default's
    SQLite in a child `pytest` (as tests/agents/test_store_contract.py does): the same
    queries there, with the percentiles and the SLA taken in Python."""
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
            # Query counts are Postgres' (SQLite reads the durations: two more per set).
            "-k",
            "not cost_the_same and not on_sqlite",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    # Every test of the module ran there but the one that needs two writers (no count to
    # keep in step: a test added here is run there too).
    passed = re.search(r"\b(\d+) passed\b", done.stdout)
    skipped = re.findall(r"^SKIPPED \[\d+\] (.*)$", done.stdout, re.MULTILINE)
    assert passed and int(passed[1]) >= 21 and "failed" not in done.stdout, done.stdout
    assert all("SQLite has one writer" in reason for reason in skipped), skipped
