"""An agent's rollout (agents.rollout): shadow decisions recorded and never executed, a
canary chosen deterministically by run id, promote, and a rollback for new runs only."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agents.errors import PolicyDenied, Suspended
from agents.models import (
    Action,
    Agent,
    AgentVersion,
    KillSwitch,
    Run,
    ShadowDecision,
    canary_bucket,
)
from agents.remote import apikey_authenticate, apikey_create, remote_run_start
from agents.rollout import (
    ALREADY_LIVE,
    NO_CANARY,
    NO_PREVIOUS,
    NOT_PUBLISHED,
    NOT_THIS_AGENTS,
    PERCENT_RANGE,
    RETIRE_LIVE,
    ROLLOUT_CHANGED,
    rollout_canary,
    rollout_promote,
    rollout_retire,
    rollout_rollback,
    rollout_shadow,
)
from agents.selectors import canary_comparison, shadow_differences
from agents.services import (
    REASON_REQUIRED,
    ServiceError,
    agent_create,
    killswitch_engage,
    run_start,
    version_create,
    version_publish,
)
from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from audit.verbs import Verb
from tests.support.agents import executions
from tests.support.gateway import claimed

pytestmark = pytest.mark.django_db

PROGRAM = "tests.support.agents.counter"
DENY_ALL: dict[str, Any] = {"rules": []}
# Allows counting but would hold it, and would allow the tool the live policy denies.
SHADOW_POLICY = {
    "rules": [
        {"tool": "test.count", "when": "n > 5", "effect": "approve"},
        {"tool": "test.count", "effect": "allow"},
        {"tool": "test.count_once", "effect": "allow"},
    ]
}
LIVE_POLICY = {"rules": [{"tool": "test.count", "effect": "allow"}]}


def published(agent: Agent, world: Any, policy: dict[str, Any]) -> AgentVersion:
    version = version_create(agent=agent, program=PROGRAM, policy=policy, user=world.admin)
    version_publish(version=version, user=None, reason="ready", live=False)
    return version


def rollout_events(agent: Agent) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk, verb__startswith="rollout.").order_by("seq")
    )


# --- the stages ----------------------------------------------------------------------------


def test_a_version_goes_from_shadow_to_canary_to_live(make_agent: Any, world: Any) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    first = agent.live_version
    second = published(agent, world, SHADOW_POLICY)
    assert second.stage == AgentVersion.Stage.DRAFT and agent.live_version_id == first.pk

    rollout_shadow(agent=agent, version=second, user=world.admin, reason="watch it")
    second.refresh_from_db()
    assert agent.shadow_version_id == second.pk and second.stage == AgentVersion.Stage.SHADOW

    rollout_canary(agent=agent, version=second, percent=20, user=world.admin, reason="try it")
    second.refresh_from_db()
    assert (agent.shadow_version_id, agent.canary_version_id, agent.canary_percent) == (
        None,
        second.pk,
        20,
    )
    assert second.stage == AgentVersion.Stage.CANARY

    rollout_promote(agent=agent, user=world.admin, reason="it works")
    agent.refresh_from_db()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (agent.live_version_id, agent.previous_version_id, agent.canary_version_id) == (
        second.pk,
        first.pk,
        None,
    )
    assert (first.stage, second.stage, agent.canary_percent) == ("retired", "live", 0)

    events = rollout_events(agent)
    assert [e.verb for e in events] == [
        Verb.ROLLOUT_SHADOW,
        Verb.ROLLOUT_CANARY,
        Verb.ROLLOUT_PROMOTED,
    ]
    promoted = events[-1]
    assert promoted.payload["before"]["canary_version"] == second.pk
    assert promoted.payload["after"]["live_version"] == second.pk
    assert promoted.payload["after"]["previous_version"] == first.pk


def test_retiring_a_shadow_or_canary_version_takes_it_out_of_the_rollout(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    shadow, canary = published(agent, world, SHADOW_POLICY), published(agent, world, DENY_ALL)
    rollout_shadow(agent=agent, version=shadow, user=world.admin, reason="watch")
    rollout_canary(agent=agent, version=canary, percent=10, user=world.admin, reason="try")
    rollout_retire(agent=agent, version=shadow, user=world.admin, reason="seen enough")
    rollout_retire(agent=agent, version=canary, user=world.admin, reason="too strict")
    agent.refresh_from_db()
    assert (agent.shadow_version_id, agent.canary_version_id, agent.canary_percent) == (
        None,
        None,
        0,
    )
    assert set(
        AgentVersion.objects.filter(pk__in=[shadow.pk, canary.pk]).values_list("stage", flat=True)
    ) == {"retired"}
    assert rollout_events(agent)[-1].verb == Verb.ROLLOUT_RETIRED


# --- bad input changes nothing ---------------------------------------------------------------


def _refused(agent: Agent, message: str, call: Any) -> None:
    before = Agent.objects.filter(pk=agent.pk).values().get()
    stages = dict(AgentVersion.objects.filter(agent=agent).values_list("pk", "stage"))
    events = AuditEvent.objects.count()
    with pytest.raises(ServiceError) as refused:
        call()
    assert str(refused.value) == message
    assert Agent.objects.filter(pk=agent.pk).values().get() == before
    assert dict(AgentVersion.objects.filter(agent=agent).values_list("pk", "stage")) == stages
    assert AuditEvent.objects.count() == events


def test_bad_rollout_requests_are_refused_and_change_nothing(make_agent: Any, world: Any) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    other = make_agent("other", PROGRAM, LIVE_POLICY)
    live = agent.live_version
    draft = version_create(agent=agent, program=PROGRAM, policy=DENY_ALL, user=world.admin)
    ready = published(agent, world, DENY_ALL)
    foreign = published(other, world, DENY_ALL)
    admin = world.admin

    _refused(
        agent,
        REASON_REQUIRED,
        lambda: rollout_shadow(agent=agent, version=ready, user=admin, reason=" "),
    )
    _refused(
        agent,
        NOT_PUBLISHED.format(number=draft.number),
        lambda: rollout_shadow(agent=agent, version=draft, user=admin, reason="r"),
    )
    _refused(
        agent,
        NOT_THIS_AGENTS.format(version=foreign.pk, agent=agent.name),
        lambda: rollout_canary(agent=agent, version=foreign, percent=5, user=admin, reason="r"),
    )
    _refused(
        agent,
        ALREADY_LIVE.format(number=live.number),
        lambda: rollout_canary(agent=agent, version=live, percent=5, user=admin, reason="r"),
    )
    for percent in (-1, 101, 12.5, True):
        _refused(
            agent,
            PERCENT_RANGE,
            lambda p=percent: rollout_canary(
                agent=agent, version=ready, percent=p, user=admin, reason="r"
            ),
        )
    _refused(
        agent,
        NO_CANARY.format(agent=agent.name),
        lambda: rollout_promote(agent=agent, user=admin, reason="r"),
    )
    _refused(
        agent,
        NO_PREVIOUS.format(agent=agent.name),
        lambda: rollout_rollback(agent=agent, user=admin, reason="r"),
    )
    _refused(
        agent,
        RETIRE_LIVE.format(number=live.number),
        lambda: rollout_retire(agent=agent, version=live, user=admin, reason="r"),
    )


def test_a_rollout_change_made_on_a_stale_view_loses(make_agent: Any, world: Any) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    seen_by_other_admin = Agent.objects.get(pk=agent.pk)
    first, second = published(agent, world, DENY_ALL), published(agent, world, SHADOW_POLICY)
    rollout_canary(agent=agent, version=first, percent=10, user=world.admin, reason="try v2")
    _refused(
        agent,
        ROLLOUT_CHANGED.format(agent=agent.name),
        lambda: rollout_canary(
            agent=seen_by_other_admin, version=second, percent=50, user=world.admin, reason="try v3"
        ),
    )


# --- canary ----------------------------------------------------------------------------------


def _within_binomial_bound(hits: int, n: int, percent: int) -> bool:
    # Five standard deviations: the ids are fixed, the bucket a hash; a miss is a bug.
    p = percent / 100
    return abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_the_canary_bucket_spreads_run_ids_evenly(percent: int) -> None:
    ids = range(1, 10_001)
    hits = sum(canary_bucket(i) < percent for i in ids)
    assert _within_binomial_bound(hits, len(ids), percent)
    assert all(canary_bucket(i) == canary_bucket(i) for i in ids[:100])


def test_a_canary_takes_its_share_of_a_thousand_runs_each_chosen_by_its_id(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    live = agent.live_version
    canary = published(agent, world, SHADOW_POLICY)
    rollout_canary(agent=agent, version=canary, percent=30, user=world.admin, reason="try")
    runs = [run_start(agent=agent, input={"i": i}) for i in range(1000)]
    stored = dict(Run.objects.filter(agent=agent).values_list("pk", "version_id"))
    hits = sum(v == canary.pk for v in stored.values())
    assert _within_binomial_bound(hits, 1000, 30) and 0 < hits < 1000
    for run in runs:
        expected = canary.pk if canary_bucket(run.pk) < 30 else live.pk
        assert run.version_id == stored[run.pk] == expected
    queued = AuditEvent.objects.filter(verb=Verb.RUN_QUEUED, agent_id=agent.pk)
    assert sum(bool(e.payload.get("canary")) for e in queued) == hits


def test_remote_runs_take_the_canary_by_the_same_choice(world: Any) -> None:
    agent = agent_create(slug="remote", name="Remote", team=world.claims, kind=Agent.Kind.REMOTE)
    live = version_create(agent=agent, program="", policy=LIVE_POLICY)
    version_publish(version=live, user=None, reason="set-up")
    canary = version_create(agent=agent, program="", policy=DENY_ALL)
    version_publish(version=canary, user=None, reason="ready", live=False)
    agent.refresh_from_db()
    rollout_canary(agent=agent, version=canary, percent=50, user=world.admin, reason="try")
    _, secret = apikey_create(agent=agent, name="k", user=world.admin)
    runs = [remote_run_start(key=apikey_authenticate(secret), input={}) for _ in range(60)]
    for run in runs:
        assert run.version_id == (canary.pk if canary_bucket(run.pk) < 50 else live.pk)
    assert {run.version_id for run in runs} == {live.pk, canary.pk}


def test_a_run_keeps_its_version_when_the_canary_is_promoted(make_agent: Any, world: Any) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    old = agent.live_version
    new = published(agent, world, DENY_ALL)
    rollout_canary(agent=agent, version=new, percent=0, user=world.admin, reason="staged")
    ctx = claimed(agent, {"label": "keep"})
    assert ctx.run.version_id == old.pk  # 0 %: every run stays on live
    rollout_promote(agent=agent, user=world.admin, reason="go")
    try:
        assert ctx.tool("test.count", label="keep-old") == {"label": "keep-old", "executions": 1}
    finally:
        ctx.close()
    assert Run.objects.get(pk=ctx.run.pk).version_id == old.pk
    assert run_start(agent=agent, input={}).version_id == new.pk


# --- rollback --------------------------------------------------------------------------------


def test_rollback_restores_the_previous_version_for_new_runs_only(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    good = agent.live_version
    bad = published(agent, world, DENY_ALL)
    version_publish(version=bad, user=None, reason="stricter")
    agent.refresh_from_db()
    running = claimed(agent, {"label": "on-bad"})
    assert running.run.version_id == bad.pk

    rollout_rollback(agent=agent, user=world.admin, reason="v2 denies everything")
    agent.refresh_from_db()
    good.refresh_from_db()
    bad.refresh_from_db()
    assert (agent.live_version_id, agent.previous_version_id) == (good.pk, None)
    assert (good.stage, bad.stage) == ("live", "retired")
    event = rollout_events(agent)[-1]
    assert event.verb == Verb.ROLLOUT_ROLLED_BACK
    assert event.payload["before"]["live_version"] == bad.pk
    assert event.payload["after"]["live_version"] == good.pk

    # The running run finishes on the version it started with: still denied.
    try:
        with pytest.raises(PolicyDenied):
            running.tool("test.count", label="on-bad")
    finally:
        running.close()
    assert executions("on-bad") == 0 and Run.objects.get(pk=running.run.pk).version_id == bad.pk
    # A new run starts on the restored version, even from a stale agent object.
    stale = Agent.objects.get(pk=agent.pk)
    stale.live_version_id = bad.pk
    fresh = claimed(stale, {"label": "on-good"})
    try:
        assert fresh.run.version_id == good.pk
        assert fresh.tool("test.count", label="on-good") == {"label": "on-good", "executions": 1}
    finally:
        fresh.close()


def test_rollback_during_a_canary_withdraws_the_canary_for_new_runs_only(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    live = agent.live_version
    canary = published(agent, world, DENY_ALL)
    rollout_canary(agent=agent, version=canary, percent=100, user=world.admin, reason="try")
    running = claimed(agent, {"label": "on-canary"})
    assert running.run.version_id == canary.pk

    rollout_rollback(agent=agent, user=world.admin, reason="the canary denies everything")
    agent.refresh_from_db()
    canary.refresh_from_db()
    assert (agent.live_version_id, agent.canary_version_id, agent.canary_percent) == (
        live.pk,
        None,
        0,
    )
    assert agent.previous_version_id is None and canary.stage == "retired"
    event = rollout_events(agent)[-1]
    assert event.verb == Verb.ROLLOUT_ROLLED_BACK
    assert event.payload["withdrawn"] == canary.number
    assert event.payload["before"]["canary_version"] == canary.pk
    assert event.payload["after"]["canary_version"] is None
    try:  # the canary's running run finishes on its version
        with pytest.raises(PolicyDenied):
            running.tool("test.count", label="on-canary")
    finally:
        running.close()
    assert all(run_start(agent=agent, input={}).version_id == live.pk for _ in range(20))


# --- shadow ----------------------------------------------------------------------------------


def _shadowed_agent(make_agent: Any, world: Any) -> tuple[Agent, AgentVersion]:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    shadow = published(agent, world, SHADOW_POLICY)
    rollout_shadow(agent=agent, version=shadow, user=world.admin, reason="watch")
    return agent, shadow


def test_shadow_decisions_are_recorded_beside_each_step_and_never_executed(
    make_agent: Any, world: Any
) -> None:
    agent, shadow = _shadowed_agent(make_agent, world)
    ctx = claimed(agent, {"label": "s"})
    try:
        assert ctx.tool("test.count", label="s", n=1)["executions"] == 1  # live: allow
        assert ctx.tool("test.count", label="s", n=9)["executions"] == 2  # shadow: approve
        with pytest.raises(PolicyDenied):
            ctx.tool("test.count_once", label="never")  # live: deny; shadow: allow
    finally:
        ctx.close()
    # The shadow's allow ran nothing and its approve opened no request.
    assert executions("never") == 0 and executions("s") == 2
    assert not ApprovalRequest.objects.exists()
    decided = {
        d.action.seq: (d.action.decision, d.effect, d.rule_index, d.version_id)
        for d in ShadowDecision.objects.select_related("action").filter(agent=agent)
    }
    assert decided == {
        1: ("allow", "allow", 1, shadow.pk),
        2: ("allow", "approve", 0, shadow.pk),
        3: ("deny", "allow", 2, shadow.pk),
    }
    statuses = list(
        Action.objects.filter(run=ctx.run).order_by("seq").values_list("status", flat=True)
    )
    assert statuses == ["succeeded", "succeeded", "denied"]


def test_a_replayed_step_keeps_its_one_shadow_decision(make_agent: Any, world: Any) -> None:
    agent, _ = _shadowed_agent(make_agent, world)
    ctx = claimed(agent, {"label": "r"})
    try:
        ctx.tool("test.count", label="r", n=1)
    finally:
        ctx.close()
    from agents.gateway import Context

    again = Context(ctx.run, ctx._gate.token, {a.seq: a for a in ctx.run.actions.all()})
    try:
        again.tool("test.count", label="r", n=1)
    finally:
        again.close()
    assert ShadowDecision.objects.filter(action__run=ctx.run).count() == 1 and executions("r") == 1


def test_a_step_a_kill_switch_stops_records_no_shadow_decision(make_agent: Any, world: Any) -> None:
    agent, _ = _shadowed_agent(make_agent, world)
    ctx = claimed(agent, {"label": "k"})
    killswitch_engage(
        scope=KillSwitch.Scope.AGENT,
        mode=KillSwitch.Mode.PAUSE,
        reason="stop",
        user=world.admin,
        agent=agent,
    )
    from agents.errors import Stopped

    try:
        with pytest.raises(Stopped):
            ctx.tool("test.count", label="k", n=9)
    finally:
        ctx.close()
    assert not ShadowDecision.objects.exists() and executions("k") == 0


def test_canary_runs_are_not_shadowed(make_agent: Any, world: Any) -> None:
    agent, _ = _shadowed_agent(make_agent, world)
    canary = published(agent, world, LIVE_POLICY)
    rollout_canary(agent=agent, version=canary, percent=100, user=world.admin, reason="all in")
    ctx = claimed(agent, {"label": "c"})
    try:
        assert ctx.run.version_id == canary.pk
        ctx.tool("test.count", label="c", n=1)
    finally:
        ctx.close()
    assert not ShadowDecision.objects.exists()


def test_the_differences_between_live_and_shadow_are_listed_with_examples(
    make_agent: Any, world: Any
) -> None:
    agent, shadow = _shadowed_agent(make_agent, world)
    ctx = claimed(agent, {"label": "d"})
    try:
        for n in (1, 2, 7, 8, 9):
            ctx.tool("test.count", label="d", n=n)
    finally:
        ctx.close()
    comparison = shadow_differences(agent, examples=2)
    assert (comparison.version_id, comparison.compared, comparison.differing) == (shadow.pk, 5, 3)
    [difference] = comparison.differences
    assert (difference.live, difference.shadow, difference.count) == ("allow", "approve", 3)
    assert [e.action.requested_args["n"] for e in difference.examples] == [9, 8]


def test_a_step_without_a_shadow_version_still_costs_two_queries(
    make_agent: Any, world: Any, settings: Any, django_assert_num_queries: Any
) -> None:
    settings.BATON_RUN_LEASE_SECONDS = 3600
    agent, shadow = _shadowed_agent(make_agent, world)
    rollout_retire(agent=agent, version=shadow, user=world.admin, reason="done watching")
    ctx = claimed(agent, {"label": "q"})
    try:
        with django_assert_num_queries(2):
            ctx.tool("test.count", label="q", n=0)
    finally:
        ctx.close()
    assert not ShadowDecision.objects.exists()


# --- canary beside live ------------------------------------------------------------------------


def _step_on_each(agent: Agent, runs: int, n: int) -> list[Run]:
    started = []
    for i in range(runs):
        ctx = claimed(agent, {"label": f"cmp{i}"})
        try:
            ctx.tool("test.count", label=f"cmp{i}", n=n)
        except Suspended:
            pass
        finally:
            ctx.close()
        started.append(ctx.run)
    return started


def test_the_canary_page_compares_outcomes_and_says_when_they_differ(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    holds_big_counts = published(agent, world, SHADOW_POLICY)
    rollout_canary(agent=agent, version=holds_big_counts, percent=50, user=world.admin, reason="t")
    runs = _step_on_each(agent, 40, n=9)
    on_canary = sum(run.version_id == holds_big_counts.pk for run in runs)
    assert 0 < on_canary < 40

    first = next(i for i, run in enumerate(runs) if run.version_id == holds_big_counts.pk)
    on_live = 40 - first - on_canary  # live runs from the canary's first run on

    comparison = canary_comparison(agent)
    assert (comparison.live.runs, comparison.canary.runs) == (on_live, on_canary)
    assert comparison.live.counts["allowed"] == on_live == comparison.live.steps
    assert comparison.canary.counts["held"] == on_canary == comparison.canary.steps
    held = next(d for d in comparison.differences if d.outcome == "held")
    assert (held.live, held.canary) == (0.0, 1.0) and held.significant
    assert comparison.significant
    denied = next(d for d in comparison.differences if d.outcome == "denied")
    assert not denied.significant


def test_a_canary_that_decides_as_live_does_is_not_significantly_different(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", PROGRAM, LIVE_POLICY)
    same = published(agent, world, SHADOW_POLICY)
    rollout_canary(agent=agent, version=same, percent=50, user=world.admin, reason="t")
    runs = _step_on_each(agent, 20, n=1)  # both allow small counts
    comparison = canary_comparison(agent)
    # Both over the same window: from the canary's first run on.
    first = next(i for i, run in enumerate(runs) if run.version_id == same.pk)
    assert comparison.live.steps + comparison.canary.steps == 20 - first
    assert not comparison.significant and comparison.canary.cost_eur == 0.0
