"""The runtime in real Celery worker processes over Redis, against Postgres."""

from __future__ import annotations

from typing import Any

import pytest

from agents.models import Action, Payment, Run
from agents.services import killswitch_engage, killswitch_release, run_start
from agents.tasks import run_execute
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS, wait_for
from tests.support.agents import executions

RUN_TASK = "agents.run_execute"

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def status(run: Run) -> str:
    run.refresh_from_db()
    return run.status


def finished(run: Run) -> bool:
    return status(run) in Run.FINAL


def test_a_run_completes_in_a_real_worker(make_agent: Any, worker: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "w", "steps": 3})
    wait_for(lambda: finished(run), message="the run to finish")
    assert run.status == Run.Status.SUCCEEDED and run.output == {"results": [1, 2, 3]}


def test_worker_killed_mid_step_then_restarted_completes_each_side_effect_once(
    make_agent: Any,
    start_worker: Any,
    redis_client: Any,
    tmp_path: Any,
) -> None:
    agent = make_agent("payer", "tests.support.agents.gated_payout", ALLOW_ALL_TESTS)
    first = start_worker()
    run = run_start(agent=agent, input={"claim_id": "k1", "amount": 120, "gate": "g1"})
    # The payment is written and the tool is still inside its step when the worker dies.
    wait_for(lambda: redis_client.llen("test:reached:g1"), message="the payment step")
    assert Payment.objects.filter(claim_id="k1").count() == 1
    assert run.actions.get(seq=2).status == Action.Status.STARTED
    first.kill()
    redis_client.rpush("test:open:g1", 1)

    # A fresh worker with its timers: the sweep finds the run whose lease expired.
    start_worker(BATON_SWEEP_EVERY_SECONDS="0.5", BATON_DATA_DIR=str(tmp_path), beat=True)
    wait_for(lambda: finished(run), timeout=30, message="the run to complete after the kill")

    assert run.status == Run.Status.SUCCEEDED
    assert Payment.objects.filter(claim_id="k1").count() == 1, "paid exactly once"
    assert executions("k1:before") == 1, "the finished step was replayed, not re-run"
    assert executions("k1:after") == 1
    assert executions("pay:k1") == 2, "the tool was retried with the same idempotency key"
    pay = run.actions.get(seq=2)
    assert pay.status == Action.Status.SUCCEEDED and pay.attempts == 2
    verbs = list(AuditEvent.objects.filter(run_id=run.pk).values_list("verb", flat=True))
    assert "run.requeued" in verbs and "action.retried" in verbs


def test_the_same_run_delivered_several_times_has_no_duplicate_side_effect(
    make_agent: Any,
    worker: Any,
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "dup", "steps": 5})
    for _ in range(3):
        run_execute.delay(run.pk)
    wait_for(lambda: finished(run), message="the run to finish")
    # Every delivery so far (the first enqueue and the three copies) has ended…
    wait_for(lambda: worker.finished(RUN_TASK) >= 4, message="the copies to be handled")
    for _ in range(2):
        run_execute.delay(run.pk)  # late duplicates of a finished run
    wait_for(lambda: worker.finished(RUN_TASK) >= 6, message="the late copies to be handled")
    assert run.status == Run.Status.SUCCEEDED
    assert executions("dup") == 5
    assert run.actions.count() == 5
    run.refresh_from_db()
    assert run.output == {"results": [1, 2, 3, 4, 5]}


def test_no_action_is_admitted_after_a_halt_commits(
    make_agent: Any, start_worker: Any, world: Any
) -> None:
    busy = start_worker(BATON_RUN_LEASE_SECONDS="30")
    runs = []
    for i in range(4):
        agent = make_agent(f"busy-{i}", "tests.support.agents.slow_counter", ALLOW_ALL_TESTS)
        runs.append(
            run_start(agent=agent, input={"label": f"busy{i}", "steps": 500, "pause": 0.005})
        )
    wait_for(lambda: all(r.actions.count() >= 5 for r in runs), message="agents to be busy")

    killswitch_engage(
        scope="team", team=world.claims, mode="halt", reason="runaway agents", user=world.supervisor
    )
    admitted = set(Action.objects.values_list("pk", flat=True))
    # Each run's task has seen the halt and ended: nothing can be admitted after this.
    wait_for(lambda: busy.finished(RUN_TASK) >= len(runs), message="the runs' tasks to end")

    assert set(Action.objects.values_list("pk", flat=True)) == admitted, (
        "an action was admitted after the halt committed"
    )
    for i, run in enumerate(runs):
        assert status(run) == Run.Status.CANCELLED
        rows = run.actions.count()
        assert executions(f"busy{i}") == rows, "every execution has its admitted action row"
        assert not run.actions.filter(status=Action.Status.STARTED).exists()


def test_pause_then_release_resumes_runs_where_they_stopped(
    make_agent: Any, worker: Any, world: Any
) -> None:
    agent = make_agent("steady", "tests.support.agents.slow_counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "pr", "steps": 40, "pause": 0.01})
    wait_for(lambda: run.actions.count() >= 5, message="the run to get going")
    switch = killswitch_engage(
        scope="agent", agent=agent, mode="pause", reason="look first", user=world.supervisor
    )
    wait_for(lambda: status(run) == Run.Status.WAITING, message="the run to park")
    frozen = executions("pr")
    wait_for(lambda: worker.finished(RUN_TASK) >= 1, message="the paused run's task to end")
    assert executions("pr") == frozen < 40
    killswitch_release(switch=switch, user=world.supervisor, reason="all clear")
    wait_for(lambda: finished(run), message="the resumed run to finish")
    assert run.status == Run.Status.SUCCEEDED
    assert executions("pr") == 40, "no step ran twice, none was skipped"


def test_an_approval_resumes_the_run_in_a_worker(make_agent: Any, worker: Any, world: Any) -> None:
    from agents.demo.seed import CLAIMS_POLICY

    agent = make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    run = run_start(
        agent=agent,
        input={
            "claim_id": "CLM-1",
            "policyholder": "Mei Chen",
            "description": "hail damage",
            "amount": 4200,
        },
    )
    wait_for(lambda: status(run) == Run.Status.WAITING, message="the payout to be held")
    request = ApprovalRequest.objects.get(run=run)
    assert request.args["amount"] == 4200 and request.required_approvals == 1
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    wait_for(lambda: finished(run), message="the approved run to finish")
    assert run.status == Run.Status.SUCCEEDED
    assert Payment.objects.get(claim_id="CLM-1").amount == 4200
