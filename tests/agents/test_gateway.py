"""The gateway, in process against real Postgres and Redis: decisions, journal, replay."""

from __future__ import annotations

from typing import Any

import pytest

from agents.models import Action, Payment, Run, SentEmail
from agents.runtime import execute_run
from agents.services import killswitch_engage, killswitch_release, run_start
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS
from tests.support.agents import executions

pytestmark = pytest.mark.django_db

HOLD_HELD = {
    "rules": [{"tool": "test.held", "effect": "approve"}, {"tool": "test.*", "effect": "allow"}]
}


def verbs_of(run: Run) -> list[str]:
    return list(
        AuditEvent.objects.filter(run_id=run.pk).order_by("seq").values_list("verb", flat=True)
    )


def run_once(agent: Any, input: dict[str, Any], user: Any = None) -> Run:
    run = run_start(agent=agent, input=input, user=user)
    execute_run(run.pk)
    run.refresh_from_db()
    return run


def test_allowed_steps_execute_and_each_is_journaled_and_audited(make_agent: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_once(agent, {"label": "a", "steps": 3})
    assert run.status == Run.Status.SUCCEEDED
    assert run.output == {"results": [1, 2, 3]}
    steps = list(run.actions.values_list("seq", "name", "status", "decision"))
    assert steps == [(i, "test.count", "succeeded", "allow") for i in (1, 2, 3)]
    assert verbs_of(run) == (
        ["run.queued", "run.started"]
        + ["action.allowed", "action.succeeded"] * 3
        + ["run.succeeded"]
    )


def test_replay_returns_journaled_results_without_executing_again(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("diverge", "tests.support.agents.divergent", HOLD_HELD)
    run = run_once(agent, {"label": "r"})
    assert run.status == Run.Status.WAITING
    assert executions("r") == 1
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert executions("r") == 1, "the replayed step must not execute again"
    assert executions("held:r") == 1
    assert run.attempts == 2


def test_divergent_replay_fails_the_run_loudly(
    make_agent: Any, world: Any, redis_client: Any
) -> None:
    agent = make_agent("diverge", "tests.support.agents.divergent", HOLD_HELD)
    run = run_once(agent, {"label": "d"})
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    redis_client.set("test:flip:d", 1)
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "diverged at step 1" in run.error
    assert "'test.count'" in run.error and "'test.pay'" in run.error
    assert executions("held:d") == 0
    assert not Payment.objects.exists()
    assert "run.failed" in verbs_of(run)


def test_no_matching_rule_means_deny(make_agent: Any) -> None:
    agent = make_agent(
        "counter",
        "tests.support.agents.counter",
        {"rules": [{"tool": "payments.*", "effect": "allow"}]},
    )
    run = run_once(agent, {"label": "x", "steps": 1})
    assert run.status == Run.Status.FAILED
    assert "PolicyDenied" in run.error and "denied by default" in run.error
    action = run.actions.get()
    assert (action.status, action.decision) == (Action.Status.DENIED, "deny")
    assert executions("x") == 0
    assert "action.denied" in verbs_of(run)


def test_first_matching_rule_wins(make_agent: Any) -> None:
    agent = make_agent(
        "counter",
        "tests.support.agents.counter",
        {
            "rules": [
                {"tool": "test.count", "when": "n >= 1", "effect": "deny", "reason": "only one"},
                {"tool": "test.*", "effect": "allow"},
            ]
        },
    )
    run = run_once(agent, {"label": "f", "steps": 2})
    assert [a.status for a in run.actions.order_by("seq")] == ["succeeded", "denied"]
    assert run.actions.get(seq=2).reason == "only one"
    assert executions("f") == 1


def test_arguments_breaking_the_schema_are_refused_audited_and_not_executed(
    make_agent: Any,
) -> None:
    agent = make_agent("rogue", "tests.support.agents.rogue", ALLOW_ALL_TESTS)
    run = run_once(
        agent,
        {
            "calls": [
                ["test.count", {"label": 7}],
                ["test.pay", {"claim_id": "c1", "amount": -5, "extra": True}],
                ["test.nonexistent", {"x": 1}],
            ]
        },
    )
    assert run.status == Run.Status.SUCCEEDED
    count, pay, unknown = run.actions.order_by("seq")
    assert count.status == pay.status == Action.Status.INVALID
    assert "label: 7 is not of type 'string'" in count.reason
    assert "amount:" in pay.reason and "Additional properties" in pay.reason
    assert unknown.status == Action.Status.DENIED
    assert "no tool named 'test.nonexistent'" in unknown.reason
    assert run.output is not None
    assert run.output["test.count"].startswith("ArgumentsInvalid")
    assert executions("7") == 0 and not Payment.objects.exists()
    assert verbs_of(run).count("action.invalid") == 2


def test_shadow_returns_the_simulation_and_sends_nothing(make_agent: Any) -> None:
    agent = make_agent(
        "mailer",
        "agents.demo.programs.customer_email",
        {"rules": [{"tool": "email.send", "effect": "shadow"}]},
    )
    run = run_once(
        agent,
        {
            "ticket_id": "T-1",
            "customer": "Mei",
            "email": "mei@example.com",
            "topic": "a late delivery",
        },
    )
    assert run.status == Run.Status.SUCCEEDED
    assert run.output == {"sent": False, "message_id": None}
    send = run.actions.get(kind=Action.Kind.TOOL)
    assert send.result is not None
    assert send.status == Action.Status.SHADOWED and send.result["simulated"] is True
    assert SentEmail.objects.count() == 0
    assert "action.shadowed" in verbs_of(run)


def test_model_calls_are_journaled_with_tokens_and_cost(make_agent: Any) -> None:
    agent = make_agent(
        "mailer",
        "agents.demo.programs.customer_email",
        {"rules": [{"tool": "email.send", "effect": "allow"}]},
    )
    run = run_once(
        agent,
        {
            "ticket_id": "T-2",
            "customer": "Tom",
            "email": "tom@example.com",
            "topic": "a double charge",
        },
    )
    model = run.actions.get(kind=Action.Kind.MODEL)
    assert model.name == "scripted" and model.requested_args["purpose"] == "draft email"
    assert model.meta["tokens_in"] > 0 and model.meta["cost_eur"] > 0
    assert model.meta["rationale"]
    assert "model.called" in verbs_of(run)
    assert SentEmail.objects.get().subject == "Re: a double charge"


def test_rate_limit_delays_the_run_instead_of_failing_it(make_agent: Any) -> None:
    policy = {**ALLOW_ALL_TESTS, "rate_limits": [{"tool": "test.*", "limit": 2, "per": 60}]}
    agent = make_agent("counter", "tests.support.agents.counter", policy)
    run = run_once(agent, {"label": "rl", "steps": 4})
    assert run.status == Run.Status.QUEUED
    assert run.wait_reason == Run.WaitReason.RATE_LIMIT
    assert run.wake_at is not None
    assert executions("rl") == 2
    assert "run.delayed" in verbs_of(run)
    execute_run(run.pk)  # too early: the run is not due yet, nothing happens
    assert executions("rl") == 2


def test_reject_reason_reaches_the_agent_as_the_steps_error(make_agent: Any, world: Any) -> None:
    agent = make_agent(
        "payer",
        "tests.support.agents.payout_with_fallback",
        {
            "rules": [
                {"tool": "test.pay", "effect": "approve"},
                {"tool": "test.*", "effect": "allow"},
            ]
        },
    )
    run = run_once(agent, {"claim_id": "c9", "amount": 5000})
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="reject",
        comment="amount not documented",
        seen_args_hash=request.args_hash,
    )
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert run.output == {"paid": False, "reason": "rejected by sam: amount not documented"}
    assert executions("rejected:c9") == 1
    assert not Payment.objects.exists()


def test_approved_edit_executes_with_the_edited_arguments(make_agent: Any, world: Any) -> None:
    agent = make_agent(
        "payer",
        "tests.support.agents.payout_with_fallback",
        {
            "rules": [
                {"tool": "test.pay", "effect": "approve"},
                {"tool": "test.*", "effect": "allow"},
            ]
        },
    )
    run = run_once(agent, {"claim_id": "c10", "amount": 5000})
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        edited_args={"claim_id": "c10", "amount": 4200},
        seen_args_hash=request.args_hash,
    )
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.output == {"paid": True, "amount": "4200"}
    assert Payment.objects.get().amount == 4200
    action = run.actions.get(name="test.pay")
    assert action.requested_args["amount"] == 5000 and action.args["amount"] == 4200


def test_pause_parks_the_run_and_release_resumes_it_without_repeats(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    switch = killswitch_engage(
        scope="agent", agent=agent, mode="pause", reason="checking", user=world.supervisor
    )
    run = run_once(agent, {"label": "p", "steps": 2})
    assert (run.status, run.wait_reason) == (Run.Status.WAITING, Run.WaitReason.PAUSED)
    assert executions("p") == 0
    assert killswitch_release(switch=switch, user=world.supervisor, reason="fine") == 1
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and executions("p") == 2


def test_halt_cancels_waiting_runs_and_their_pending_approvals(make_agent: Any, world: Any) -> None:
    agent = make_agent(
        "payer",
        "tests.support.agents.payout_with_fallback",
        {"rules": [{"tool": "test.pay", "effect": "approve"}]},
    )
    run = run_once(agent, {"claim_id": "c11", "amount": 50})
    killswitch_engage(
        scope="team", team=world.claims, mode="halt", reason="incident 42", user=world.supervisor
    )
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and "incident 42" in run.error
    assert ApprovalRequest.objects.get(run=run).status == ApprovalRequest.Status.CANCELLED
    execute_run(run.pk)  # a stale delivery of the cancelled run does nothing
    assert not Payment.objects.exists()


def test_a_started_step_of_a_non_idempotent_tool_is_held_as_unknown(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent("fragile", "tests.support.agents.fragile", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "u"})
    # What a worker killed between claiming the step and recording its outcome leaves.
    Action.objects.create(
        run=run,
        seq=1,
        kind="tool",
        name="test.count_once",
        requested_args={"label": "u"},
        args={"label": "u"},
        args_hash="x",
        status=Action.Status.STARTED,
        decision="allow",
        attempts=1,
        idempotency_key=f"baton-run{run.pk}-step1",
    )
    execute_run(run.pk)
    run.refresh_from_db()
    assert (run.status, run.wait_reason) == (Run.Status.WAITING, Run.WaitReason.APPROVAL)
    assert run.actions.get().status == Action.Status.UNKNOWN
    request = ApprovalRequest.objects.get(run=run)
    assert request.kind == ApprovalRequest.Kind.UNKNOWN_OUTCOME
    assert executions("u") == 0


def test_every_transition_of_a_held_and_approved_run_is_audited_in_order(
    make_agent: Any, world: Any
) -> None:
    agent = make_agent(
        "payer",
        "tests.support.agents.payout_with_fallback",
        {"rules": [{"tool": "test.pay", "effect": "approve"}]},
    )
    run = run_once(agent, {"claim_id": "c12", "amount": 10})
    request = ApprovalRequest.objects.get(run=run)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    execute_run(run.pk)
    assert verbs_of(run) == [
        "run.queued",
        "run.started",
        "action.held",
        "approval.requested",
        "run.waiting",
        "approval.approved",
        "run.queued",
        "run.started",
        "action.allowed",
        "action.succeeded",
        "run.succeeded",
    ]
