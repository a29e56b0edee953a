"""Thin Celery tasks: take ids, call the runtime or a service."""

from __future__ import annotations

from celery import Task, shared_task

from agents.delivery import TASK as RUN_EXECUTE


@shared_task(
    name=RUN_EXECUTE,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # a passing fault is retried until it passes; the run never fails of it
)
def run_execute(self: Task, run_id: int) -> None:
    from agents.errors import TRANSIENT_FAULTS, transient_backoff
    from agents.runtime import execute_run

    try:
        execute_run(run_id, worker=self.request.hostname or "")
    except TRANSIENT_FAULTS as fault:
        # Not even the retry could be written (the database is away): Celery retries with
        # back-off; should the broker be away too, the run's lease runs out for the sweep.
        countdown = transient_backoff(self.request.retries + 1)
        raise self.retry(countdown=countdown, exc=fault) from fault


@shared_task(name="agents.sweep")
def sweep() -> int:
    from agents.services import runs_sweep

    return runs_sweep()
