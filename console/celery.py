from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("baton")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _heartbeat_start(sender: object, **kwargs: object) -> None:
    from agents import heartbeat

    heartbeat.start(sender, **kwargs)


@worker_shutdown.connect
def _heartbeat_stop(sender: object, **kwargs: object) -> None:
    from agents import heartbeat

    heartbeat.stop(sender, **kwargs)


@app.on_after_finalize.connect
def _schedule(sender: Celery, **_: object) -> None:
    from django.conf import settings

    sender.add_periodic_task(
        settings.BATON_SWEEP_EVERY_SECONDS, sender.signature("agents.sweep"), name="sweep runs"
    )
    sender.add_periodic_task(
        settings.BATON_AUDIT_CHECKPOINT_EVERY_SECONDS,
        sender.signature("audit.checkpoint"),
        name="sign audit checkpoint",
    )
    sender.add_periodic_task(
        settings.BATON_AUDIT_VERIFY_EVERY_SECONDS,
        sender.signature("audit.verify"),
        name="verify audit chain",
    )
    if settings.BATON_DEMO_WORKLOAD:
        sender.add_periodic_task(
            settings.BATON_DEMO_EVERY_SECONDS,
            sender.signature("agents.demo_workload"),
            name="demo workload",
        )
