"""Thin Celery tasks: take ids, call the runtime or a service."""

from __future__ import annotations

from celery import Task, shared_task


@shared_task(name="agents.run_execute", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_execute(self: Task, run_id: int) -> None:
    from agents.runtime import execute_run

    execute_run(run_id, worker=self.request.hostname or "")


@shared_task(name="agents.sweep")
def sweep() -> int:
    from agents.services import runs_sweep

    return runs_sweep()


@shared_task(name="agents.demo_workload")
def demo_workload() -> int:
    from agents.demo.seed import demo_workload_tick

    return demo_workload_tick()
