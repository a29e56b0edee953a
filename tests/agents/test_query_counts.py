"""What a governed tool step costs in queries on Postgres (STYLE.md: the hot paths assert
their query counts, so a regression fails here instead of slowing bench/gateway.py): a
hosted agent's step, a halt, and a step a remote agent submits over the API.

A new query in the step fails this test with the captured SQL: add it on purpose, then
update the count and the list of what the queries are."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Action, Agent, ApiKey, Run
from agents.remote import apikey_create
from agents.services import agent_create, version_create, version_publish
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


# --- a step submitted over the remote API (agents.api, agents.remote) ----------------------

REMOTE_POLICY = {
    "rules": [
        {"tool": "test.pay", "when": "amount <= 100", "effect": "allow"},
        {"tool": "test.pay", "effect": "approve", "reason": "big payouts need a person"},
    ]
}


class RemoteFleet:
    """A remote agent's key and a run of its own, among `runs` other runs of the agent in
    flight, each with a step the agent is executing."""

    def __init__(self, world: Any, runs: int) -> None:
        agent = agent_create(
            slug="ledger-bot", name="Ledger bot", team=world.claims, kind=Agent.Kind.REMOTE
        )
        version_publish(
            version=version_create(agent=agent, program="", policy=REMOTE_POLICY),
            user=None,
            reason="set-up",
        )
        agent.refresh_from_db()
        self.key, secret = apikey_create(agent=agent, name="prod", user=world.admin)
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"}
        version_id = agent.live_version_id
        assert version_id is not None
        others = Run.objects.bulk_create(
            Run(agent=agent, version_id=version_id, input={}, status=Run.Status.RUNNING)
            for _ in range(runs)
        )
        Action.objects.bulk_create(
            Action(
                run=run,
                seq=1,
                kind=Action.Kind.TOOL,
                name="test.pay",
                status=Action.Status.STARTED,
                idempotency_key=f"baton-run{run.pk}-step1",
            )
            for run in others
        )
        started = self.post("/runs", {"input": {}})
        assert started.status_code == 201, started.content
        self.run_id = int(started.json()["run"])

    def post(self, path: str, body: Any) -> Any:
        return self.client.post(
            f"/api/v1{path}",
            data=json.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )

    def submit(self, seq: int, amount: int) -> tuple[Any, list[str]]:
        """Step `seq` of the run, and the statements it cost (the test's transaction turns
        a service's BEGIN and COMMIT into a savepoint: those are left out)."""
        # The key's last use is written at most once a minute (LAST_USE_RESOLUTION): just
        # used, so that write does not fall inside the measured request.
        ApiKey.objects.filter(pk=self.key.pk).update(last_used_at=timezone.now())
        step = {"seq": seq, "tool": "test.pay", "args": {"claim_id": "C-1", "amount": amount}}
        with CaptureQueriesContext(connection) as queries:
            answer = self.post(f"/runs/{self.run_id}/steps", step)
        done = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
        return answer, done


def assert_statements(done: list[str], what: list[str]) -> None:
    assert len(done) == len(what) and all(
        sql.startswith(start) for sql, start in zip(done, what, strict=True)
    ), "\n".join(sql[:100] for sql in done)


@pytest.mark.parametrize("runs", [10, 500])
def test_an_allowed_remote_step_costs_four_queries_for_10_runs_in_flight_as_for_500(
    runs: int, world: Any
) -> None:
    fleet = RemoteFleet(world, runs)
    answer, done = fleet.submit(1, amount=80)
    assert answer.status_code == 200 and answer.json()["decision"] == "allow"
    assert_statements(
        done,
        [
            'SELECT "agents_apikey"',  # the key, with its agent, team and live version
            'SELECT "agents_run"',  # the run, the key's agent's, with its version
            'SELECT "agents_action"',  # the run's journal (only this run's steps)
            # admit (the run's lease and the kill switches), journal the step `started`,
            # append `action.allowed`: one round trip, as for a hosted agent's step
            "SELECT * FROM baton_step_start(",
        ],
    )
    assert Action.objects.get(run_id=fleet.run_id, seq=1).status == Action.Status.STARTED


@pytest.mark.parametrize("runs", [10, 500])
def test_a_held_remote_step_costs_nine_queries_for_10_runs_in_flight_as_for_500(
    runs: int, world: Any
) -> None:
    fleet = RemoteFleet(world, runs)
    answer, done = fleet.submit(1, amount=900)
    assert answer.status_code == 200 and answer.json()["decision"] == "pending"
    assert_statements(
        done,
        [
            'SELECT "agents_apikey"',
            'SELECT "agents_run"',
            'SELECT "agents_action"',
            "SELECT baton_admit(",  # the run's lease and the kill switches
            'UPDATE "agents_run" SET "wait_reason"',  # the run waits for people
            'INSERT INTO "agents_action"',  # the step, `held`
            "SELECT * FROM baton_audit_append(",  # `action.held`
            'INSERT INTO "approvals_approvalrequest"',
            "SELECT * FROM baton_audit_append(",  # `approval.requested`
        ],
    )
    assert fleet.run_id in Run.objects.filter(wait_reason=Run.WaitReason.APPROVAL).values_list(
        "id", flat=True
    )
    assert Action.objects.get(run_id=fleet.run_id, seq=1).status == Action.Status.HELD
