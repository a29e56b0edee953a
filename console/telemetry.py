"""Prometheus metrics: django-prometheus's request and process figures plus Baton's own,
read from the database when Prometheus scrapes (README "Operations" lists them).

Every read is bounded by an index or by what is open right now, never by the size of
the history: the journal is counted over a recent window on its `created_at` index, runs
and approvals only in their open states (on their status indexes), the audit lag from
the queue of events waiting to be chained. No figure is labelled by agent or team: a
scrape shows the fleet, not whose work it is.

Served only to a scraper on an allowed address (BATON_METRICS_ALLOW) or holding the
bearer token (BATON_METRICS_TOKEN); anyone else gets the console's plain 404.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import prometheus_client
from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.db import DatabaseError
from django.db.models import Count, Min, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# The live sockets of this process, set as they open and close (console.consumers). With
# PROMETHEUS_MULTIPROC_DIR (several uvicorn workers on one port) the scrape sums the
# processes still alive.
LIVE_SOCKETS = prometheus_client.Gauge(
    "baton_live_sockets",
    "Open live-view sockets (summed over this host's web processes in multiprocess mode).",
    multiprocess_mode="livesum",
)

# Headers a proxy adds: a request that passed one is not trusted by its address alone
# (a proxy on this machine would make every visitor look like 127.0.0.1).
FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def metrics_allowed(request: HttpRequest) -> bool:
    token = settings.BATON_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
    if any(header in request.META for header in FORWARDED):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in settings.BATON_METRICS_NETWORKS)


# A token an outsider could guess opens /metrics from anywhere: as long as a secret key.
METRICS_TOKEN_MIN = 32
WEAK_TOKEN = (
    f"BATON_METRICS_TOKEN is shorter than {METRICS_TOKEN_MIN} characters: anyone who guesses "
    "it reads /metrics from anywhere. Use a long random token (openssl rand -hex 32)."
)
PUBLIC_NETWORK = (
    "BATON_METRICS_ALLOW lets {network} read /metrics: addresses outside private and "
    "loopback networks. Allow only the scraper's (internal) network, or use the token."
)


def _shared(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    # RFC 6598's shared space (100.64.0.0/10): carrier NAT, and some clusters' pod networks.
    return isinstance(network, ipaddress.IPv4Network) and network.subnet_of(SHARED_SPACE)


SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


@register(Tags.security, deploy=True)
def metrics_protected(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """`check --deploy`: /metrics is for the scraper, not for the internet."""
    problems: list[CheckMessage] = []
    token = settings.BATON_METRICS_TOKEN
    if token and len(token) < METRICS_TOKEN_MIN:
        problems.append(Warning(WEAK_TOKEN, id="console.W101"))
    for network in settings.BATON_METRICS_NETWORKS:
        if not (network.is_private or network.is_loopback or _shared(network)):
            problems.append(Warning(PUBLIC_NETWORK.format(network=network), id="console.W102"))
    return problems


def metrics(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD") or not metrics_allowed(request):
        # As if there were nothing here: the address of a scrape target is not news.
        return HttpResponse("Not Found", status=404, content_type="text/plain")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(BATON)
        source: Any = registry
    else:
        source = _Both()
    body = prometheus_client.generate_latest(source)
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)


class _Both:
    """This process's registry (django-prometheus, the process, live sockets) and Baton's
    figures, in one exposition."""

    def collect(self) -> Iterator[Any]:
        yield from prometheus_client.REGISTRY.collect()
        yield from BATON.collect()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class BatonCollector(Collector):
    """Baton's figures, read at scrape time (the same figures from any process)."""

    def collect(self) -> Iterator[Any]:
        try:
            families = list(self._read())
        except DatabaseError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            yield _gauge("baton_collector_up", "1 when Baton's figures were read.", 0)
            return
        yield from families
        yield _gauge("baton_collector_up", "1 when Baton's figures were read.", 1)

    def _read(self) -> Iterator[GaugeMetricFamily]:
        yield from _actions()
        yield from _runs()
        yield from _approvals()
        yield from _audit()
        yield from _workers()


def _actions() -> Iterator[GaugeMetricFamily]:
    from agents.models import Action

    window = settings.BATON_METRICS_WINDOW_SECONDS
    since = timezone.now() - timedelta(seconds=window)
    family = GaugeMetricFamily(
        "baton_actions_recent",
        f"Journal steps created in the last {window:g} seconds, by decision and status.",
        labels=["decision", "status"],
    )
    rows = (
        Action.objects.filter(created_at__gte=since)
        .order_by()
        .values_list("decision", "status")
        .annotate(n=Count("*"))
    )
    for decision, status, n in rows:
        family.add_metric([decision or "none", status], n)
    yield family


def _runs() -> Iterator[GaugeMetricFamily]:
    from agents.models import Run

    now = timezone.now()
    open_states = (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.WAITING)
    family = GaugeMetricFamily(
        "baton_runs",
        "Runs in an open state (queued, running, waiting), by state and wait reason.",
        labels=["state", "wait_reason"],
    )
    # Every series is there even at zero, so a graph shows 0 rather than a gap.
    counts = {
        (Run.Status.QUEUED.value, ""): 0,
        (Run.Status.RUNNING.value, ""): 0,
        **{(Run.Status.WAITING.value, r.value): 0 for r in Run.WaitReason if r.value},
    }
    rows = (
        Run.objects.filter(status__in=open_states)
        .order_by()
        .values_list("status", "wait_reason")
        .annotate(n=Count("*"))
    )
    for status, reason, n in rows:
        counts[(status, reason)] = n
    for (status, reason), n in sorted(counts.items()):
        family.add_metric([status, reason or "none"], n)
    yield family
    # Due now: queued and not held back by a delay (a rate limit's, a fault's back-off).
    due = Run.objects.filter(status=Run.Status.QUEUED).filter(
        Q(wake_at__isnull=True) | Q(wake_at__lte=now)
    )
    queue = due.aggregate(depth=Count("*"), created=Min("created_at"), woke=Min("wake_at"))
    yield _gauge("baton_run_queue_depth", "Queued runs due to run now.", queue["depth"])
    oldest = max(filter(None, (queue["created"], queue["woke"])), default=None)
    age = (now - oldest).total_seconds() if oldest else 0.0
    yield _gauge(
        "baton_run_queue_oldest_age_seconds",
        "How long the longest-waiting due run has been queued (since it was created, or "
        "since its delay ended).",
        max(0.0, age),
    )
    running = Run.objects.filter(status=Run.Status.RUNNING, lease_until__gt=now).count()
    yield _gauge(
        "baton_worker_slots_busy", "Runs executing on a live lease (a worker slot each).", running
    )


def _approvals() -> Iterator[GaugeMetricFamily]:
    from approvals.models import ApprovalRequest

    now = timezone.now()
    pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING).aggregate(
        n=Count("*"), overdue=Count("pk", filter=Q(due_at__lt=now)), oldest=Min("created_at")
    )
    yield _gauge("baton_approvals_pending", "Approval requests waiting for people.", pending["n"])
    yield _gauge(
        "baton_approvals_overdue",
        "Pending approval requests past their due time (the expiry timer has not run yet).",
        pending["overdue"],
    )
    oldest = pending["oldest"]
    yield _gauge(
        "baton_approvals_oldest_pending_age_seconds",
        "How long the oldest pending approval request has waited.",
        (now - oldest).total_seconds() if oldest else 0.0,
    )


def _audit() -> Iterator[GaugeMetricFamily]:
    from audit.models import ChainHead
    from audit.sequencer import sequencing_lag

    lag = sequencing_lag()
    yield _gauge(
        "baton_audit_sequencing_waiting",
        "Committed audit events waiting to be chained by the sequencer.",
        lag.waiting,
    )
    yield _gauge(
        "baton_audit_sequencing_lag_seconds",
        "How long the oldest audit event waiting to be chained has waited.",
        lag.age().total_seconds(),
    )
    head = ChainHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0
    yield _gauge("baton_audit_chain_head_seq", "Sequence number of the chain head.", head)
    age = beat_age()
    yield _gauge(
        "baton_audit_verification_age_seconds",
        "Seconds since beat last recorded a verification of the chain (-1: never).",
        -1.0 if age is None else age.total_seconds(),
    )


def beat_age() -> timedelta | None:
    """How long ago beat's verification timer last recorded an outcome (None: never).
    Verification is the timer that writes a row every time it runs, whatever it finds."""
    from audit.models import Verification

    # By id, not finished_at (no index there): rows are appended in the order they end.
    last = Verification.objects.order_by("-pk").values_list("finished_at", flat=True).first()
    return None if last is None else max(timedelta(0), timezone.now() - last)


def _workers() -> Iterator[GaugeMetricFamily]:
    from agents.heartbeat import alive_since
    from agents.models import WorkerBeat

    alive = WorkerBeat.objects.filter(stopped_at__isnull=True, last_seen__gte=alive_since())
    figures = alive.aggregate(n=Count("*"), slots=Sum("concurrency"))
    yield _gauge("baton_workers", "Worker processes whose heartbeat is fresh.", figures["n"])
    yield _gauge(
        "baton_worker_slots",
        "Run slots of the live workers (their pool sizes, summed).",
        figures["slots"] or 0,
    )


BATON = BatonCollector()
