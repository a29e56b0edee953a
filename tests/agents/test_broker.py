"""Workers survive a broker restart, and the sweep re-sends only the messages that are gone
(DESIGN section 4: Redis may lose a message; nothing is lost, nothing is multiplied)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.models import Run
from agents.services import run_start, runs_sweep
from tests.conftest import ALLOW_ALL_TESTS, free_port, wait_for
from tests.support.agents import executions
from tests.support.private_redis import PrivateRedis

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_the_sweep_resends_only_runs_whose_message_is_gone(
    make_agent: Any, settings: Any, redis_client: Any, task_queue: str
) -> None:
    settings.BATON_REQUEUE_AFTER_SECONDS = 0  # every queued run has waited "too long"
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    runs = [run_start(agent=agent, input={"label": f"s{i}", "steps": 1}) for i in range(5)]
    assert redis_client.llen(task_queue) == 5  # no worker: a backlog

    assert runs_sweep() == 0, "a backlog is not a loss"
    assert redis_client.llen(task_queue) == 5

    redis_client.delete(task_queue)  # what a broker restart without persistence does
    assert runs_sweep() == 5
    assert redis_client.llen(task_queue) == 5
    assert runs_sweep() == 0
    assert {r.status for r in Run.objects.filter(pk__in=[r.pk for r in runs])} == {"queued"}


def test_a_busy_worker_survives_broker_restarts_and_every_run_finishes_once(
    make_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    broker = PrivateRedis(free_port(), tmp_path).start()
    agent = make_agent("steady", "tests.support.agents.slow_counter", ALLOW_ALL_TESTS)
    worker = start_worker(
        beat=True,
        BATON_BROKER_URL=broker.url,
        BATON_SWEEP_EVERY_SECONDS="0.5",
        BATON_REQUEUE_AFTER_SECONDS="1",
        BATON_DATA_DIR=str(tmp_path),
    )
    steps = 40
    # Sent to the shared broker, which this worker does not read: its sweep finds the runs'
    # messages gone from its own broker and sends them there.
    runs = [
        run_start(agent=agent, input={"label": f"r{i}", "steps": steps, "pause": 0.03})
        for i in range(6)
    ]
    try:
        for restart in range(3):
            done = sum(executions(f"r{i}") for i in range(6))
            wait_for(
                lambda done=done: sum(executions(f"r{i}") for i in range(6)) >= done + 10,
                timeout=60,
                message=f"the runs to make progress before restart {restart + 1}",
            )
            broker.restart()
            assert worker.proc is not None and worker.proc.poll() is None, "the worker lives"

        def all_finished() -> bool:
            return (
                Run.objects.filter(pk__in=[r.pk for r in runs], status__in=Run.FINAL).count() == 6
            )

        wait_for(all_finished, timeout=120, message="every run to finish")
        assert worker.proc.poll() is None, "the worker survived every restart"
    finally:
        worker.stop()
        broker.stop()
    assert set(
        Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)
    ) == {Run.Status.SUCCEEDED}
    assert [executions(f"r{i}") for i in range(6)] == [steps] * 6, "no step ran twice"
    assert "hostname" not in worker.log.read_text()
