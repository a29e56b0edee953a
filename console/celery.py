from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("baton")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The alert evaluation's task lives with the rules (agents.alerts), above agents.tasks.
app.autodiscover_tasks(["agents"], related_name="alerts")
# So does the KPI rollup's (agents.rollup), beside the KPIs.
app.autodiscover_tasks(["agents"], related_name="rollup")
# The timers are in settings.CELERY_BEAT_SCHEDULE: one schedule for every layout.


@worker_ready.connect
def _heartbeat_start(sender: object, **kwargs: object) -> None:
    from agents import heartbeat

    heartbeat.start(sender, **kwargs)


@worker_ready.connect
def _audit_sequencer_start(sender: object, **kwargs: object) -> None:
    # Every worker process is a candidate; one at a time holds (audit.sequencer).
    from audit import sequencer

    sequencer.start_candidate()


@worker_shutdown.connect
def _heartbeat_stop(sender: object, **kwargs: object) -> None:
    from agents import heartbeat

    heartbeat.stop(sender, **kwargs)
