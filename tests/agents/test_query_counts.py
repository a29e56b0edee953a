"""What a governed tool step costs in queries on Postgres (STYLE.md: the hot paths assert
their query counts, so a regression fails here instead of slowing bench/gateway.py).

A new query in the step fails this test with the captured SQL: add it on purpose, then
update the count and the list of what the queries are."""

from __future__ import annotations

from typing import Any

import pytest

from agents.models import Action
from tests.conftest import ALLOW_ALL_TESTS
from tests.support.agents import executions
from tests.support.gateway import claimed

pytestmark = pytest.mark.django_db


def test_an_allowed_step_costs_two_queries(
    make_agent: Any, settings: Any, django_assert_num_queries: Any
) -> None:
    # A lease far longer than the test: no renewal falls inside the measured step.
    settings.BATON_RUN_LEASE_SECONDS = 3600
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    # The policy is parsed (and cached per version) when the context is made, and the tool
    # and its schema come from the in-process registry: no cache the step reads from the
    # database, so the count does not depend on what ran before.
    ctx = claimed(agent, {"label": "q", "steps": 1})
    try:
        with django_assert_num_queries(2):
            # 1. SELECT * FROM baton_step_start(...): admit the step (the run's cancel flag
            #    and lease, the kill switches under their shared advisory locks), journal
            #    the action as `started`, append `action.allowed` to the trail.
            # 2. SELECT baton_step_finish(...): the outcome, fenced by the attempt, and its
            #    `action.succeeded` event.
            result = ctx.tool("test.count", label="q", n=0)
    finally:
        ctx.close()
    assert result == {"label": "q", "executions": 1} and executions("q") == 1
    action = Action.objects.get(run=ctx.run)
    assert (action.status, action.decision) == (Action.Status.SUCCEEDED, Action.Decision.ALLOW)


@pytest.mark.parametrize("runs", [10, 500])
def test_a_halt_costs_the_same_queries_for_10_runs_as_for_500(
    runs: int, make_agent: Any, world: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from agents.models import Run
    from agents.services import killswitch_engage

    agents = [
        make_agent(f"busy-{i}", "tests.support.agents.counter", ALLOW_ALL_TESTS) for i in range(5)
    ]
    Run.objects.bulk_create(
        Run(
            agent=agents[i % 5],
            version_id=agents[i % 5].live_version_id,
            input={},
            status=Run.Status.RUNNING if i % 2 else Run.Status.QUEUED,
        )
        for i in range(runs)
    )
    with CaptureQueriesContext(connection) as queries:
        killswitch_engage(scope="global", mode="halt", reason="stop", user=world.supervisor)
    # The test's transaction turns the engage's BEGIN and COMMIT into a savepoint.
    done = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    what = [
        "SELECT pg_advisory_xact_lock(",  # the switch's lock, exclusive
        'SELECT 1 AS "a" FROM "agents_killswitch"',  # one engaged on the target already?
        'INSERT INTO "agents_killswitch"',
        'SELECT "agents_run"."id"',  # the covered remote runs, to ring their waiting polls
        "SELECT o_run, o_agent, o_team FROM baton_runs_cancel(",  # lock and cancel runs, steps
        'SELECT "approvals_approvalrequest"',  # their pending requests (none here)
        "SELECT baton_audit_append_many(",  # every run's `run.cancelled` event
        "SELECT * FROM baton_audit_append(",  # `killswitch.engaged`
    ]
    assert len(done) == len(what) and all(
        sql.startswith(start) for sql, start in zip(done, what, strict=True)
    ), "\n".join(sql[:80] for sql in done)
    assert Run.objects.filter(status=Run.Status.CANCELLED).count() == runs
