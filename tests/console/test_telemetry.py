"""Standard telemetry in process: /metrics read by Prometheus's own parser, with the names
the README documents and figures counted independently from a constructed history; who
may scrape it; probes that need no session, host or HTTPS; JSON log lines with ids."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from agents.models import Run, WorkerBeat
from agents.runtime import execute_run
from agents.services import run_start
from audit.models import AuditEvent
from console.logs import json_formatter
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db

README = Path(__file__).resolve().parents[2] / "README.md"
HOLD_HELD = {
    "rules": [{"tool": "test.held", "effect": "approve"}, {"tool": "test.*", "effect": "allow"}]
}
# One query for each figure Baton reads; the same however long the history.
SCRAPE_QUERIES = 9


def documented_metrics() -> set[str]:
    """The `baton_*` names in the README's metrics table."""
    return set(re.findall(r"^\| `(baton_\w+)`", README.read_text(), flags=re.MULTILINE))


def scrape(client: Client, **extra: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    figures: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            figures.setdefault(sample.name, {})[labels] = sample.value
    return figures


def one(figures: dict[str, Any], name: str, **labels: str) -> float:
    return float(figures[name][tuple(sorted(labels.items()))])


def test_metrics_are_parsed_with_the_documented_names_and_counted_figures(
    make_agent: Any, django_assert_num_queries: Any
) -> None:
    counter = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    held = make_agent("held", "tests.support.agents.divergent", HOLD_HELD)
    done = run_start(agent=counter, input={"label": "m", "steps": 2})
    execute_run(done.pk)  # two steps allowed and succeeded; the run succeeds
    waiting = run_start(agent=held, input={"label": "w"})
    execute_run(waiting.pk)  # one step allowed, one held: waits for an approval
    run_start(agent=counter, input={"label": "q"})  # queued, never picked up
    now = timezone.now()
    WorkerBeat.objects.create(hostname="w1", pid=1, concurrency=4, started_at=now, last_seen=now)
    WorkerBeat.objects.create(  # stopped: neither a worker nor slots
        hostname="w2", pid=2, concurrency=8, started_at=now, last_seen=now, stopped_at=now
    )
    WorkerBeat.objects.create(  # silent for a minute: gone
        hostname="w3", pid=3, concurrency=2, started_at=now, last_seen=now - timedelta(minutes=1)
    )

    with django_assert_num_queries(SCRAPE_QUERIES):
        figures = scrape(Client())

    scraped = {name for name in figures if name.startswith("baton_")}
    assert scraped == documented_metrics()
    assert "django_http_requests_before_middlewares_total" in figures  # django-prometheus
    assert one(figures, "baton_collector_up") == 1
    assert one(figures, "baton_actions_recent", decision="allow", status="succeeded") == 3
    assert one(figures, "baton_actions_recent", decision="approve", status="held") == 1
    assert one(figures, "baton_runs", state="queued", wait_reason="none") == 1
    assert one(figures, "baton_runs", state="running", wait_reason="none") == 0
    assert one(figures, "baton_runs", state="waiting", wait_reason="approval") == 1
    assert one(figures, "baton_run_queue_depth") == 1
    assert one(figures, "baton_run_queue_oldest_age_seconds") >= 0
    assert one(figures, "baton_approvals_pending") == 1
    assert one(figures, "baton_approvals_overdue") == 0
    assert one(figures, "baton_workers") == 1
    assert one(figures, "baton_worker_slots") == 4
    assert one(figures, "baton_worker_slots_busy") == 0
    assert one(figures, "baton_audit_chain_head_seq") == AuditEvent.objects.latest("seq").seq
    assert one(figures, "baton_audit_sequencing_waiting") == 0  # inline: chained at once
    assert one(figures, "baton_audit_verification_age_seconds") == -1  # never verified
    assert one(figures, "baton_live_sockets") == 0


def test_old_steps_leave_the_window_and_the_scrape_reads_no_more(
    make_agent: Any, django_assert_num_queries: Any, settings: Any
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "old", "steps": 5})
    execute_run(run.pk)
    Run.objects.get(pk=run.pk).actions.update(created_at=timezone.now() - timedelta(hours=1))
    settings.BATON_METRICS_WINDOW_SECONDS = 60
    with django_assert_num_queries(SCRAPE_QUERIES):
        figures = scrape(Client())
    assert "baton_actions_recent" not in figures  # an hour old: outside the window


@pytest.mark.parametrize(
    ("address", "headers", "allowed"),
    [
        ("127.0.0.1", {}, True),
        ("::1", {}, True),
        ("10.0.0.5", {}, False),
        # Through a proxy on this machine every visitor would be 127.0.0.1.
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, False),
        ("10.0.0.5", {"HTTP_AUTHORIZATION": "Bearer wrong"}, False),
    ],
)
def test_metrics_are_served_only_to_allowed_addresses(
    address: str, headers: dict[str, Any], allowed: bool
) -> None:
    response = Client().get("/metrics", REMOTE_ADDR=address, **headers)
    assert response.status_code == (200 if allowed else 404)
    if not allowed:
        assert b"baton_" not in response.content


def test_the_bearer_token_opens_metrics_from_anywhere_and_a_network_can_be_allowed(
    settings: Any,
) -> None:
    settings.BATON_METRICS_TOKEN = "scrape-secret-x9"
    client = Client()
    outside: dict[str, Any] = {"REMOTE_ADDR": "198.51.100.7"}
    assert client.get("/metrics", **outside).status_code == 404
    bad = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-x", **outside)
    assert bad.status_code == 404
    good = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-x9", **outside)
    assert good.status_code == 200 and b"baton_collector_up 1.0" in good.content
    settings.BATON_METRICS_NETWORKS = [ipaddress.ip_network("198.51.100.0/24")]
    assert client.get("/metrics", **outside).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404


def test_probes_answer_without_session_allowed_host_or_https(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["baton.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    pod: dict[str, Any] = {
        "HTTP_HOST": "10.0.0.7:8000"
    }  # an orchestrator names the pod, not the site
    assert client.get("/login/", **pod).status_code == 400  # the control: host checked
    assert client.get("/login/", HTTP_HOST="baton.example.com").status_code == 301  # to HTTPS
    alive = client.get("/healthz", **pod)
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    assert "Set-Cookie" not in alive.headers
    ready = client.get("/readyz", **pod)
    assert ready.status_code == 200, ready.content
    assert ready.json()["failed"] == []
    checks = ready.json()["checks"]
    assert set(checks) == {"database", "redis", "broker", "sequencer", "beat"}
    assert (checks["database"], checks["redis"], checks["broker"]) == ("ok", "ok", "ok")
    assert checks["sequencer"] == "not used"  # the suite's writers chain their own events
    assert client.get("/metrics", **pod).status_code == 200


def test_readyz_fails_when_beat_has_not_verified_the_chain_within_its_bound(
    settings: Any, make_agent: Any
) -> None:
    from audit.verify import chain_verify_and_record

    make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)  # a trail begins
    settings.BATON_READY_BEAT_SECONDS = 60
    client = Client()
    young = client.get("/readyz")  # the trail is younger than the bound
    assert young.status_code == 200
    assert young.json()["checks"]["beat"] == "no verification yet"
    settings.BATON_READY_BEAT_SECONDS = 0.001
    late = client.get("/readyz")
    assert late.status_code == 503
    assert late.json()["failed"] == ["beat"]
    assert late.json()["checks"]["beat"].startswith("no verification recorded")
    chain_verify_and_record()
    settings.BATON_READY_BEAT_SECONDS = 60
    verified = client.get("/readyz")
    assert verified.status_code == 200 and verified.json()["checks"]["beat"] == "ok"


def test_log_lines_of_a_run_carry_its_run_and_agent_ids_as_json(make_agent: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    runtime_log = logging.getLogger("agents.runtime")
    runtime_log.addHandler(handler)
    try:
        run = run_start(agent=agent, input={"steps": 1})  # no label: the program raises
        execute_run(run.pk)
        logging.getLogger("agents.runtime").warning("after the run")
    finally:
        runtime_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == f"run {run.pk} failed"]
    assert len(failed) == 1
    assert failed[0]["run_id"] == run.pk
    assert failed[0]["agent_id"] == agent.pk
    assert failed[0]["agent"] == "counter"
    assert failed[0]["level"] == "error" and "KeyError" in failed[0]["exception"]
    # Bound only while the run executes.
    assert "run_id" not in lines[-1] and lines[-1]["event"] == "after the run"


def test_a_run_and_its_steps_are_spans_of_one_trace(make_agent: Any, monkeypatch: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from agents import runtime
    from agents.gateway import hosted

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The deployment's provider, for these two modules only (no global state left behind).
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(runtime, "_tracer", tracer)
    monkeypatch.setattr(hosted, "_tracer", tracer)
    agent = make_agent("held", "tests.support.agents.divergent", HOLD_HELD)
    run = run_start(agent=agent, input={"label": "t"})
    execute_run(run.pk)  # one step allowed, then one held: the run waits

    spans = exporter.get_finished_spans()
    (run_span,) = [s for s in spans if s.name == "baton.run"]
    assert run_span.attributes is not None
    assert run_span.attributes["baton.run_id"] == run.pk
    assert run_span.attributes["baton.agent"] == "held"
    steps = [s for s in spans if s.name == "baton.step"]
    assert [
        (
            s.attributes["baton.step.seq"],
            s.attributes["baton.step.name"],
            s.attributes["baton.step.outcome"],
        )
        for s in steps
        if s.attributes is not None
    ] == [(1, "test.count", "allow"), (2, "test.held", "hold")]
    for step in steps:
        assert step.parent is not None and step.parent.span_id == run_span.context.span_id
        assert step.context.trace_id == run_span.context.trace_id
        assert step.status.status_code == StatusCode.UNSET  # held is an outcome, not an error


def test_readyz_and_metrics_show_events_waiting_for_the_sequencer(
    audit_queued: None, make_agent: Any, settings: Any
) -> None:
    from django.db import transaction

    from audit.models import PendingEvent
    from audit.sequencer import chain_queued

    make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)  # events queued
    waiting = PendingEvent.objects.count()
    assert waiting > 0
    settings.BATON_AUDIT_SEQUENCER_LATE_SECONDS = 0  # any wait is too long
    client = Client()
    late = client.get("/readyz")
    assert late.status_code == 503 and late.json()["failed"] == ["sequencer"]
    assert late.json()["checks"]["sequencer"].startswith("oldest event waits")
    figures = scrape(client)
    assert one(figures, "baton_audit_sequencing_waiting") == waiting
    assert one(figures, "baton_audit_sequencing_lag_seconds") > 0
    with transaction.atomic():
        chain_queued(None)  # as the holder would
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["sequencer"] == "ok"
    assert one(scrape(client), "baton_audit_sequencing_waiting") == 0


@pytest.mark.parametrize(
    ("token", "allow", "ids"),
    [
        ("", ["127.0.0.1/32", "::1/128"], []),
        ("a" * 32, ["10.0.0.0/8", "100.64.0.0/10", "fd00::/8"], []),
        ("scrape-secret-x9", ["127.0.0.1/32"], ["console.W101"]),
        ("", ["0.0.0.0/0"], ["console.W102"]),
        ("", ["::/0", "203.0.114.0/24"], ["console.W102", "console.W102"]),
    ],
)
def test_check_deploy_warns_of_metrics_open_to_the_internet(
    settings: Any, token: str, allow: list[str], ids: list[str]
) -> None:
    from django.core import checks

    settings.BATON_METRICS_TOKEN = token
    settings.BATON_METRICS_NETWORKS = [ipaddress.ip_network(n) for n in allow]
    found = checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
    assert [m.id for m in found if (m.id or "").startswith("console.W1")] == ids
