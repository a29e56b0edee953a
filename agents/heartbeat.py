"""Worker heartbeats: each Celery worker process keeps a row fresh while it lives, so the
console can show which workers are alive (and, from the runs they claimed, what they run).
A worker that dies stops beating; it is shown as gone after a few missed beats."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from agents.models import WorkerBeat

log = logging.getLogger(__name__)
_stop = threading.Event()


def beat(hostname: str, concurrency: int) -> None:
    now = timezone.now()
    updated = WorkerBeat.objects.filter(hostname=hostname).update(
        last_seen=now, pid=os.getpid(), stopped_at=None, concurrency=concurrency
    )
    if not updated:
        WorkerBeat.objects.update_or_create(
            hostname=hostname,
            defaults={
                "pid": os.getpid(),
                "concurrency": concurrency,
                "started_at": now,
                "last_seen": now,
                "stopped_at": None,
            },
        )


def _beat_forever(hostname: str, concurrency: int) -> None:
    WorkerBeat.objects.filter(hostname=hostname).update(started_at=timezone.now())
    while not _stop.is_set():
        try:
            close_old_connections()
            beat(hostname, concurrency)
        except Exception:  # a missed beat must not end the thread
            log.exception("worker heartbeat failed")
        _stop.wait(settings.BATON_HEARTBEAT_SECONDS)
    connection.close()


def start(sender: Any, **_: Any) -> None:
    """worker_ready: begin beating for this worker."""
    hostname = getattr(sender, "hostname", "") or "worker"
    # The sender is the worker's consumer; its controller knows the pool size.
    controller = getattr(sender, "controller", sender)
    concurrency = int(getattr(controller, "concurrency", 1) or 1)
    beat(hostname, concurrency)
    _stop.clear()
    threading.Thread(
        target=_beat_forever, args=(hostname, concurrency), name="heartbeat", daemon=True
    ).start()


def stop(sender: Any, **_: Any) -> None:
    """worker_shutdown: say goodbye, so a clean stop is not mistaken for a death."""
    _stop.set()
    hostname = getattr(sender, "hostname", "")
    if hostname:
        WorkerBeat.objects.filter(hostname=hostname).update(stopped_at=timezone.now())


def alive_since() -> Any:
    return timezone.now() - timedelta(seconds=settings.BATON_HEARTBEAT_SECONDS * 3)
