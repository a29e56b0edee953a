"""A passing infrastructure fault never fails a run for good (DESIGN section 10, invariant 8):
real faults, injected into a real worker — its Postgres sessions terminated mid-step, its
rate-limit Redis unreachable for a while."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from agents.models import Action, Payment, Run
from agents.services import run_start
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS, free_port, wait_for
from tests.support.agents import executions
from tests.support.private_redis import PrivateRedis

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def finished(run: Run) -> bool:
    run.refresh_from_db()
    return run.status in Run.FINAL


def transient_delays(run: Run) -> list[str]:
    return [
        e.payload["reason"]
        for e in AuditEvent.objects.filter(run_id=run.pk, verb="run.delayed")
        if e.payload["reason"].startswith("transient fault")
    ]


def terminate_other_sessions() -> int:
    """What a failover or an administrator does: every other session of this database
    (the worker's) is cut off."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return int(cursor.fetchone()[0])


def test_a_dropped_database_connection_mid_step_is_retried_and_pays_once(
    make_agent: Any, worker: Any, redis_client: Any
) -> None:
    agent = make_agent("payer", "tests.support.agents.gated_payout", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"claim_id": "d1", "amount": 80, "gate": "d1"})
    # The payment is made; the tool waits at its gate, inside its step.
    wait_for(lambda: redis_client.llen("test:reached:d1"), message="the payment step")
    assert terminate_other_sessions() >= 1
    redis_client.rpush("test:open:d1", 1, 1)  # this attempt's gate, and the retry's

    wait_for(lambda: finished(run), timeout=60, message="the run to finish after the fault")
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert Payment.objects.filter(claim_id="d1").count() == 1, "paid exactly once"
    pay = run.actions.get(seq=2)
    assert pay.status == Action.Status.SUCCEEDED and pay.attempts == 2
    assert executions("d1:before") == 1 and executions("d1:after") == 1
    assert any("OperationalError" in reason for reason in transient_delays(run))


def test_an_unreachable_rate_limit_redis_delays_the_run_until_it_answers(
    make_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    port = free_port()
    policy = {**ALLOW_ALL_TESTS, "rate_limits": [{"tool": "test.count", "limit": 50, "per": 60}]}
    agent = make_agent("limited", "tests.support.agents.counter", policy)
    start_worker(BATON_CACHE_URL=f"redis://127.0.0.1:{port}/0")
    run = run_start(agent=agent, input={"label": "rl", "steps": 3})

    # Nothing listens on the rate limiter's port: the run waits, it does not fail.
    wait_for(lambda: transient_delays(run), timeout=30, message="the run to be delayed")
    assert "ConnectionError" in transient_delays(run)[0]
    assert Run.objects.get(pk=run.pk).status != Run.Status.FAILED
    private = PrivateRedis(port, tmp_path).start()
    try:
        wait_for(lambda: finished(run), timeout=60, message="the run to finish once Redis answers")
    finally:
        private.stop()
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert executions("rl") == 3, "every step ran once"
    assert run.output == {"results": [1, 2, 3]}
