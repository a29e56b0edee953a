"""Probes for orchestrators: /healthz (the process answers) and /readyz (it can serve:
Postgres, Redis, the Celery broker, the audit sequencer and beat are all there).

They and /metrics are answered by ProbeMiddleware, first in the stack: a probe carries no
session, may name the pod's address as its Host and comes over plain HTTP from inside
the cluster, so host checks, the HTTPS redirect, sessions, CSRF and sign-in throttling
would only turn it away. None of the three uses the Host header or sets a cookie.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from console import telemetry
from console.celery import app as celery_app

log = logging.getLogger(__name__)

# Seconds any one dependency may take to answer before it counts as down.
TIMEOUT = 2.0


def _response(status: int, body: dict[str, Any]) -> HttpResponse:
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: the process answers. Touches nothing else, so a database outage does not
    get every web process restarted."""
    return _response(200, {"status": "ok"})


# --- readiness ---------------------------------------------------------------------------


class NotReady(Exception):
    """A check's own verdict, with what it found (shown in the answer)."""


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def check_redis() -> str:
    if not settings.REDIS_URL:
        return "not used"  # the embedded console: no Redis to wait for
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
    )
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


def check_broker() -> str:
    with celery_app.connection_for_write(connect_timeout=TIMEOUT) as conn:
        # Once, no retries: kombu would otherwise try again for as long as it takes.
        conn.ensure_connection(max_retries=0)
    return "ok"


def check_sequencer() -> str:
    from audit.sequencer import inline, sequencing_lag

    if inline():
        return "not used"  # each writer chains its own events: nothing waits
    lag = sequencing_lag().age()
    late = timedelta(seconds=settings.BATON_AUDIT_SEQUENCER_LATE_SECONDS)
    if lag > late:
        raise NotReady(f"oldest event waits {lag.total_seconds():.0f}s to be chained")
    return "ok"


def check_beat() -> str:
    """Beat's timers run: its verification of the chain, which records a row each time,
    is within the bound. Before the first one, the trail must be younger than the bound."""
    from audit.models import AuditEvent

    bound = settings.BATON_READY_BEAT_SECONDS
    if bound <= 0:
        return "not checked"
    age = telemetry.beat_age()
    if age is None:
        first = AuditEvent.objects.order_by("seq").values_list("occurred_at", flat=True).first()
        if first is None:
            return "no trail yet"
        age = timezone.now() - datetime.fromisoformat(first)
        if age.total_seconds() > bound:
            raise NotReady(f"no verification recorded in {age.total_seconds():.0f}s")
        return "no verification yet"
    if age.total_seconds() > bound:
        raise NotReady(f"last verification {age.total_seconds():.0f}s ago")
    return "ok"


# Each answers what it found ("ok", or why there was nothing to check), or raises.
CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "redis": check_redis,
    "broker": check_broker,
    "sequencer": check_sequencer,
    "beat": check_beat,
}


def readyz(request: HttpRequest) -> HttpResponse:
    """Ready: 200 when every check passes; 503 naming those that failed. What failed is
    told by kind only (the details, which name hosts, go to the log)."""
    results: dict[str, str] = {}
    failed: list[str] = []
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except NotReady as exc:
            results[name] = str(exc)
            failed.append(name)
        except Exception as exc:  # noqa: BLE001 - whatever the failure, the probe answers
            log.warning("readiness: %s failed: %r", name, exc)
            results[name] = f"unavailable ({type(exc).__name__})"
            failed.append(name)
            if name == "database":
                connection.close_if_unusable_or_obsolete()
    body = {"status": "failing" if failed else "ok", "failed": failed, "checks": results}
    return _response(503 if failed else 200, body)


# --- the middleware ------------------------------------------------------------------------

PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": telemetry.metrics,
}


class ProbeMiddleware:
    """Answers the probes and /metrics before any other middleware sees the request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        view = PROBES.get(request.path_info)
        return view(request) if view else self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path_info)
        if view is None:
            return await self.get_response(request)  # type: ignore[no-any-return]
        if view is healthz:
            return healthz(request)  # no database, no thread
        return await sync_to_async(view)(request)
