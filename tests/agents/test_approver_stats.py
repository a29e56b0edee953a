"""Approver analytics (agents.approver_stats) on a constructed history: held actions with
amounts, decided by named people at set times, some edited, some escalated, some
overridden. Every figure is computed again here from the history as it was built (the
waits and amounts chosen, never read back through the module) and the two must agree;
the boundaries of a rubber stamp (exactly 3 s, exactly the amount threshold) are
checked one by one. Only the team's supervisors and compliance see the page."""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents import approver_stats, kpis, roles
from agents.models import Action, Agent, Run
from approvals.models import ApprovalDecision, ApprovalRequest
from audit.services import SYSTEM, audit_append, event_content
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db

APPROVE, REJECT = "approve", "reject"


def _hash(args: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()


class History:
    """Held actions and decisions written as the approvals app stores them, with their
    times set after the rows exist (created_at is set on insert)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def held(
        self, at: datetime, args: dict[str, Any], tool: str = "payments.pay"
    ) -> ApprovalRequest:
        agent, version = self.agent, self.agent.live_version
        assert version is not None
        run = Run.objects.create(agent=agent, version=version, input={}, status=Run.Status.WAITING)
        action = Action.objects.create(
            run=run,
            seq=1,
            kind=Action.Kind.TOOL,
            name=tool,
            status=Action.Status.HELD,
            decision="approve",
            requested_args=args,
            args=args,
            args_hash=_hash(args),
            idempotency_key=f"k-{run.pk}",
        )
        request = ApprovalRequest.objects.create(
            action=action,
            run=run,
            agent=agent,
            version=version,
            tool=tool,
            args=args,
            args_hash=_hash(args),
            risk="high",
            required_approvals=3,
        )
        ApprovalRequest.objects.filter(pk=request.pk).update(created_at=at)
        request.created_at = at
        return request

    def decide(
        self,
        request: ApprovalRequest,
        user: Any,
        verdict: str,
        at: datetime,
        edited: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
    ) -> ApprovalDecision:
        decided = edited or args or request.args
        d = ApprovalDecision.objects.create(
            request=request,
            user=user,
            verdict=verdict,
            comment="" if verdict == APPROVE else "not like this",
            edited_args=edited,
            args_hash=_hash(decided),
        )
        ApprovalDecision.objects.filter(pk=d.pk).update(created_at=at)
        return d

    def escalated(self, request: ApprovalRequest, at: datetime) -> None:
        with transaction.atomic():
            audit_append(
                event_content(
                    verb=Verb.APPROVAL_ESCALATED,
                    actor=SYSTEM,
                    subject_type="approval",
                    subject_id=request.pk,
                    agent_id=self.agent.pk,
                    team_id=self.agent.team_id,
                    run_id=request.run_id,
                    payload={"to": "leads", "level": 1},
                    occurred_at=at,
                )
            )


@dataclass
class Expected:
    """One decision as the test built it, and what it is by the page's definitions."""

    person: str
    verdict: str
    wait: float
    stamp: bool = False
    edit: bool = False
    override: bool = False
    overridden: bool = False


def quantile(values: list[float], fraction: float) -> float | None:
    """statistics' inclusive quantiles are percentile_cont's definition."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


@pytest.fixture
def people(world: Any) -> dict[str, Any]:
    user_model = get_user_model()
    out = {"sam": world.supervisor, "sol": world.second_supervisor}
    for name in ("pia", "raj"):
        out[name] = user_model.objects.create_user(name)
        roles.role_grant(user=out[name], role=roles.SUPERVISOR, target=world.claims)
    return out


@pytest.fixture
def built(world: Any, make_agent: Any, people: dict[str, Any]) -> dict[str, Any]:
    """The boundary cases, one by one, then a random history over the window."""
    now = timezone.now().replace(microsecond=0)
    agent = make_agent("approvals-a", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    h = History(agent)
    sam, sol, pia, raj = (people[n] for n in ("sam", "sol", "pia", "raj"))
    expected: list[Expected] = []
    t0 = now - timedelta(days=3)

    def case(
        amount: Any,
        seconds: float,
        stamp: bool,
        who: Any = sam,
        field: str = "amount",
        tool: str = "payments.pay",
    ) -> None:
        args = {field: amount, "payee": "P"} if amount is not None else {"to": "x@example.com"}
        request = h.held(t0, args, tool)
        h.decide(request, who, APPROVE, t0 + timedelta(seconds=seconds))
        expected.append(Expected(who.username, APPROVE, seconds, stamp=stamp))

    case(1000, 2.999, True)  # exactly the amount: counted
    case(5000, 3.0, False)  # exactly 3 s: not counted
    case(5000, 2.999999, True)
    case(999.99, 1.0, False)  # below the amount
    case("1000.00", 0.5, True)  # a numeric string
    case(None, 0.5, False, tool="email.send")  # no amount
    case(1500.5, 1.0, True, who=pia, field="total", tool="purchasing.create_po")
    case(True, 1.0, False, who=pia)  # a yes/no is no amount

    # An edited approval is an edit, never a stamp; the approval after it is timed from it.
    r = h.held(t0, {"amount": 5000, "payee": "P"})
    edit = {"amount": 4000, "payee": "P"}
    h.decide(r, sam, APPROVE, t0 + timedelta(seconds=20))
    h.decide(r, sol, APPROVE, t0 + timedelta(seconds=60), edited=edit)
    h.decide(r, pia, APPROVE, t0 + timedelta(seconds=61), args=edit)  # 1 s after the edit
    expected += [
        Expected("sam", APPROVE, 20, overridden=True),
        Expected("sol", APPROVE, 60, edit=True, override=True),
        Expected("pia", APPROVE, 1, stamp=True),
    ]
    # "Edited" arguments equal to those in force are no edit (and can be a stamp).
    r = h.held(t0, {"amount": 2000})
    h.decide(r, raj, APPROVE, t0 + timedelta(seconds=1), edited={"amount": 2000})
    expected.append(Expected("raj", APPROVE, 1, stamp=True))
    # A rejection after another's approval overrides it; one after one's own does not
    # exist (one decision per person), and a first rejection overrides nothing.
    r = h.held(t0, {"amount": 50})
    h.decide(r, sam, APPROVE, t0 + timedelta(seconds=30))
    h.decide(r, raj, REJECT, t0 + timedelta(seconds=90))
    expected += [
        Expected("sam", APPROVE, 30, overridden=True),
        Expected("raj", REJECT, 90, override=True),
    ]
    r = h.held(t0, {"amount": 50})
    h.decide(r, sol, REJECT, t0 + timedelta(seconds=45))
    expected.append(Expected("sol", REJECT, 45))
    # Escalated after 10 minutes: the approver is timed from the escalation.
    r = h.held(t0, {"amount": 9000})
    h.escalated(r, t0 + timedelta(minutes=10))
    h.decide(r, pia, APPROVE, t0 + timedelta(minutes=10, seconds=2))
    expected.append(Expected("pia", APPROVE, 2, stamp=True))

    # Outside the window (8 days ago) and in another team: not counted.
    old = h.held(now - timedelta(days=8), {"amount": 5000})
    h.decide(old, sam, APPROVE, now - timedelta(days=8) + timedelta(seconds=1))
    other = History(
        make_agent(
            "approvals-support", "tests.support.agents.counter", ALLOW_ALL_TESTS, team=world.support
        )
    )
    r = other.held(t0, {"amount": 5000})
    other.decide(r, sam, APPROVE, t0 + timedelta(seconds=1))

    rng = random.Random(5)
    users = [sam, sol, pia, raj]
    for _ in range(60):
        held_at = now - timedelta(seconds=rng.uniform(3600, 6 * 86400))
        amount = rng.choice([999.99, 1000, 1000.01, 20, rng.uniform(0, 20000)])
        request = h.held(held_at, {"amount": amount})
        first, second = rng.sample(users, 2)
        # Whole microseconds, as the database keeps them.
        wait = round(rng.choice([0.5, 2.999, 3.0, 3.001, rng.uniform(3, 900)]), 6)
        verdict = rng.choice([APPROVE, APPROVE, REJECT])
        h.decide(request, first, verdict, held_at + timedelta(seconds=wait))
        stamp = verdict == APPROVE and wait < 3 and amount >= 1000
        one = Expected(first.username, verdict, wait, stamp=stamp)
        expected.append(one)
        if verdict == APPROVE and rng.random() < 0.6:
            wait2 = round(wait + rng.choice([0.001, 1, rng.uniform(3, 900)]), 6)
            verdict2 = rng.choice([APPROVE, REJECT])
            h.decide(request, second, verdict2, held_at + timedelta(seconds=wait2))
            stamp2 = verdict2 == APPROVE and wait2 < 3 and amount >= 1000
            override = verdict2 == REJECT
            one.overridden = override
            expected.append(Expected(second.username, verdict2, wait2, stamp2, override=override))
    return {"now": now, "expected": expected, "agent": agent, "team": world.claims}


def by_person(expected: list[Expected]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({e.person for e in expected}):
        mine = [e for e in expected if e.person == name]
        waits = [e.wait for e in mine]
        approvals = sum(e.verdict == APPROVE for e in mine)
        out[name] = {
            "decisions": len(mine),
            "approvals": approvals,
            "rejections": len(mine) - approvals,
            "approval_rate": approvals / len(mine),
            "decide_p50": quantile(waits, 0.5),
            "decide_p95": quantile(waits, 0.95),
            "rubber_stamps": sum(e.stamp for e in mine),
            "edits": sum(e.edit for e in mine),
            "overrides": sum(e.override for e in mine),
            "overridden": sum(e.overridden for e in mine),
        }
    return out


def test_every_figure_per_person_agrees_with_the_history_as_built(built: dict[str, Any]) -> None:
    window = kpis.window_named("7d", built["now"] + timedelta(minutes=1))
    stats = approver_stats.approver_stats(built["team"], window)
    want = by_person(built["expected"])
    got = {a.person: a for a in stats.approvers}
    assert set(got) == set(want)
    for name, figures in want.items():
        for figure, value in figures.items():
            assert getattr(got[name], figure) == pytest.approx(value, abs=1e-5), (name, figure)
    total = stats.total
    assert total.decisions == len(built["expected"])
    assert total.rubber_stamps == sum(e.stamp for e in built["expected"])
    assert total.decide_p50 == pytest.approx(quantile([e.wait for e in built["expected"]], 0.5))
    # The history is rich enough to test something.
    assert all(total.__dict__[k] for k in ("rubber_stamps", "edits", "overrides", "overridden"))
    assert len(stats.rubber_stamps) == total.rubber_stamps
    assert len(stats.overrides) == total.overrides


def test_the_rubber_stamp_boundaries_one_by_one(built: dict[str, Any]) -> None:
    window = kpis.window_named("7d", built["now"] + timedelta(minutes=1))
    decided = approver_stats.decisions(built["team"], window)
    stamped = {(d.amount, round(d.wait, 6)) for d in decided if d.rubber_stamp}
    assert (Decimal("1000"), 2.999) in stamped  # the amount threshold is counted
    assert not any(d.rubber_stamp for d in decided if d.wait == 3.0)  # 3 s is not
    assert not any(d.rubber_stamp for d in decided if d.amount == Decimal("999.99"))
    assert (Decimal("1000.00"), 0.5) in stamped  # a numeric string is an amount
    assert (Decimal("1500.5"), 1.0) in stamped  # purchasing's `total`
    assert not any(d.rubber_stamp for d in decided if d.edited)


def test_the_thresholds_are_settings(built: dict[str, Any], settings: Any) -> None:
    settings.BATON_RUBBER_STAMP_SECONDS = 3.0005
    settings.BATON_RUBBER_STAMP_AMOUNT = 1000.01
    window = kpis.window_named("7d", built["now"] + timedelta(minutes=1))
    decided = approver_stats.decisions(built["team"], window)
    want = sum(
        d.verdict == APPROVE and not d.edited and d.amount is not None
        for d in decided
        if d.wait < 3.0005 and d.amount is not None and d.amount >= Decimal("1000.01")
    )
    assert sum(d.rubber_stamp for d in decided) == want
    assert any(d.rubber_stamp and d.wait == 3.0 for d in decided)  # 3 s now counts


def test_amount_of_reads_the_first_numeric_field(settings: Any) -> None:
    assert approver_stats.amount_of({"amount": 12, "total": 99}) == 12
    assert approver_stats.amount_of({"total": "7.5"}) == Decimal("7.5")
    assert approver_stats.amount_of({"amount": "lots", "total": 3}) == 3
    assert approver_stats.amount_of({"amount": None}) is None
    assert approver_stats.amount_of({"amount": float("nan")}) is None
    assert approver_stats.amount_of(["amount", 5]) is None
    settings.BATON_AMOUNT_FIELDS = ["budget"]
    assert approver_stats.amount_of({"amount": 12, "budget": 40}) == 40


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _cells(text: str, testid: str) -> dict[str, str]:
    row = text.split(f'data-testid="approver-{testid}"')[1].split("</tr>")[0]
    return dict(re.findall(r'data-figure="(\w+)">([^<]*)</td>', row))


def test_the_page_shows_each_persons_figures(built: dict[str, Any], world: Any) -> None:
    response = _client(world.compliance).get("/teams/claims/approvers/?window=7d")
    assert response.status_code == 200
    text = response.content.decode()
    want = by_person(built["expected"])
    for name, figures in want.items():
        user = get_user_model().objects.get(username=name)
        cells = _cells(text, str(user.pk))
        for figure in ("decisions", "approvals", "rejections", "rubber_stamps", "edits"):
            assert cells[figure] == str(figures[figure]), (name, figure)
        assert cells["overrides"] == str(figures["overrides"])
        assert cells["rate"] == kpis.show(figures["approval_rate"], "share")
        assert cells["p50"] == kpis.show(figures["decide_p50"], "seconds")
    assert _cells(text, "total")["decisions"] == str(len(built["expected"]))
    # The definitions, with the thresholds in force, and every listed decision's chain.
    assert "less than 3 s (exactly 3 s is not counted)" in text
    assert "at least 1000 (exactly 1000 is counted)" in text
    chains = re.findall(r'href="/audit/runs/(\d+)/actions/(\d+)/"', text)
    assert chains
    runs = set(Run.objects.filter(agent__team=built["team"]).values_list("pk", flat=True))
    assert {int(run) for run, _ in chains} <= runs
    assert " style=" not in text


def test_only_the_teams_supervisors_and_compliance_see_it(
    built: dict[str, Any], world: Any, people: dict[str, Any]
) -> None:
    url = "/teams/claims/approvers/"
    assert _client(world.supervisor).get(url).status_code == 200
    assert _client(world.compliance).get(url).status_code == 200
    # The team's agent admin sees the team but leads nobody in it.
    assert _client(world.admin).get(url).status_code == 403
    # A supervisor of one of its agents only (not of the team): 403.
    agent_lead = get_user_model().objects.create_user("agent-lead")
    roles.role_grant(user=agent_lead, role=roles.SUPERVISOR, target=built["agent"])
    assert _client(agent_lead).get(url).status_code == 403
    # A supervisor of another team, and someone with no role: the team does not exist.
    assert _client(world.support_supervisor).get(url).status_code == 404
    assert _client(world.outsider).get(url).status_code == 404
    assert Client().get(url).status_code == 302
    # The links: on the team page and the fleet KPI page, for those who may open them.
    for user, shown in ((world.supervisor, True), (world.admin, False)):
        team_page = _client(user).get("/teams/claims/").content.decode()
        assert ('href="/teams/claims/approvers/"' in team_page) is shown
        kpi_page = _client(user).get("/kpis/").content.decode()
        assert ('href="/teams/claims/approvers/?window=7d"' in kpi_page) is shown


def test_an_unknown_window_answers_400(built: dict[str, Any], world: Any) -> None:
    response = _client(world.supervisor).get("/teams/claims/approvers/?window=1y")
    assert response.status_code == 400
    assert kpis.UNKNOWN_WINDOW in response.content.decode()


def test_the_page_costs_the_same_queries_for_few_decisions_as_for_many(
    world: Any, make_agent: Any, people: dict[str, Any]
) -> None:
    agent = make_agent("approvals-q", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    h = History(agent)
    now = timezone.now()
    client = _client(world.supervisor)
    counts = []
    for n in (3, 30):
        while ApprovalRequest.objects.count() < n:
            at = now - timedelta(hours=ApprovalRequest.objects.count() + 1)
            r = h.held(at, {"amount": 2000})
            h.decide(r, people["sam"], APPROVE, at + timedelta(seconds=1))
            h.decide(r, people["pia"], APPROVE, at + timedelta(seconds=2), edited={"amount": 1})
            h.escalated(r, at + timedelta(seconds=1))
        assert client.get("/teams/claims/approvers/").status_code == 200
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/teams/claims/approvers/")
        assert response.status_code == 200
        assert f'<td class="num" data-figure="decisions">{2 * n}</td>' in response.content.decode()
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
