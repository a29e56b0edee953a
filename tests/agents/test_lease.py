"""The lease outlives the step: a worker busy in a long tool or model call keeps its run,
with the sweep running every half second and a lease of two seconds (DESIGN section 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.models import Action, Run
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS, wait_for
from tests.support.agents import executions

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

POLICY = {"rules": [*ALLOW_ALL_TESTS["rules"]]}
RENEWALS = 8  # a renewal every third of the 2 s lease: about three leases long


def held_through_renewals(run: Run, redis_client: Any, gate: str) -> None:
    """Wait at the step's gate until the run's lease has moved RENEWALS times, then open it."""
    wait_for(lambda: redis_client.llen(f"test:reached:{gate}"), message=f"the {gate} step")
    seen: set[Any] = set()

    def renewed() -> bool:
        seen.add(Run.objects.values_list("lease_until", flat=True).get(pk=run.pk))
        return len(seen) > RENEWALS

    wait_for(renewed, timeout=60, message=f"the lease to be renewed during {gate}")
    redis_client.rpush(f"test:open:{gate}", 1)


def test_a_step_longer_than_the_lease_runs_once_and_is_journaled_once(
    make_agent: Any, start_worker: Any, redis_client: Any, tmp_path: Path
) -> None:
    from agents.services import run_start

    agent = make_agent(
        "ponderer", "tests.support.runtime_agents.slow_steps", POLICY, config={"model": "gated"}
    )
    # With the sweep every half second, a lease that lapsed would be handed on at once.
    start_worker(beat=True, BATON_SWEEP_EVERY_SECONDS="0.5", BATON_DATA_DIR=str(tmp_path))
    run = run_start(agent=agent, input={"label": "long"})

    held_through_renewals(run, redis_client, "model:long")
    held_through_renewals(run, redis_client, "tool:long")

    def finished() -> bool:
        run.refresh_from_db()
        return run.status in Run.FINAL

    wait_for(finished, timeout=30, message="the run to finish")
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert run.attempts == 1, "no other worker took the run over"
    assert executions("model:long") == 1, "the model was called (and billed) once"
    assert executions("long") == 1, "the tool ran once"
    model, step = run.actions.order_by("seq")
    assert model.kind == Action.Kind.MODEL and model.status == Action.Status.SUCCEEDED
    assert step.status == Action.Status.SUCCEEDED and step.attempts == 1, "not marked unknown"
    verbs = list(AuditEvent.objects.filter(run_id=run.pk).values_list("verb", flat=True))
    assert verbs.count("model.called") == 1
    assert "run.requeued" not in verbs and "action.unknown" not in verbs
    assert run.output == {
        "answer": {"answer": "considered long", "billed": 1},
        "executions": 1,
    }
