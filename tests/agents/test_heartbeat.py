"""The workers page shows which real worker processes are alive and what they run."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agents.models import Run, WorkerBeat
from agents.services import run_start
from tests.conftest import ALLOW_ALL_TESTS, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_a_worker_is_shown_alive_with_its_runs_then_gone_after_it_dies(
    start_worker: Any,
    make_agent: Any,
    world: Any,
    settings: Any,
) -> None:
    settings.BATON_HEARTBEAT_SECONDS = 0.3
    worker = start_worker(BATON_HEARTBEAT_SECONDS="0.3")
    beat = wait_for(lambda: WorkerBeat.objects.first(), message="the first heartbeat")
    assert beat.pid == worker.proc.pid and beat.concurrency == 4

    mine = make_agent("steady", "tests.support.agents.slow_counter", ALLOW_ALL_TESTS)
    theirs = make_agent(
        "other", "tests.support.agents.slow_counter", ALLOW_ALL_TESTS, team=world.support
    )
    run = run_start(agent=mine, input={"label": "hb", "steps": 400, "pause": 0.01})
    other = run_start(agent=theirs, input={"label": "hb2", "steps": 400, "pause": 0.01})
    wait_for(lambda: Run.objects.filter(status="running").count() == 2, message="both running")

    client = Client()
    client.force_login(world.supervisor)
    page = client.get("/workers/").content.decode()
    assert beat.hostname in page and 'data-testid="worker-state">alive' in page
    assert f"Steady #{run.pk}" in page
    assert f"#{other.pk}" not in page, "another team's run is not shown"

    worker.kill()
    wait_for(
        lambda: 'data-testid="worker-state">gone' in client.get("/workers/").content.decode(),
        timeout=10,
        message="the dead worker to be shown gone",
    )


def test_a_worker_that_stops_cleanly_is_shown_stopped(
    start_worker: Any, world: Any, settings: Any
) -> None:
    worker = start_worker(BATON_HEARTBEAT_SECONDS="0.3")
    wait_for(lambda: WorkerBeat.objects.exists(), message="the first heartbeat")
    worker.stop()
    beat = WorkerBeat.objects.get()
    assert beat.stopped_at is not None
    client = Client()
    client.force_login(world.compliance)
    assert 'data-testid="worker-state">stopped' in client.get("/workers/").content.decode()
