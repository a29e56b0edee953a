"""The demo's periodic task: registered only where the demo is loaded (BATON_AGENT_MODULES
names agents.demo); `manage.py up` or BATON_DEMO_WORKLOAD puts it in the beat schedule."""

from __future__ import annotations

from celery import shared_task

from agents.demo.seed import demo_workload_tick


@shared_task(name="agents.demo_workload")
def demo_workload() -> int:
    return demo_workload_tick()
