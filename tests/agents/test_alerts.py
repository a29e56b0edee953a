"""Alert rules and circuit breakers (issue 14): a rule fires once when its threshold is
crossed and resolves only back past its clear threshold; a breaker pauses its agent in the
evaluation that fires, audited with the measured value; two evaluators at once transition
once and notify once; the webhook reaches a real receiver signed; the forms refuse bad
input and change nothing."""

from __future__ import annotations

import html
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from agents import alerts
from agents.alert_views import (
    BAD_EMAIL,
    CHANGE_NEEDS_FACTOR,
    CLEAR_WRONG_SIDE,
    INWARD_WEBHOOK,
    NO_TARGET,
    STILL_PAUSED,
)
from agents.models import Action, AlertEvent, AlertRule, KillSwitch, Run
from agents.runtime import execute_run
from agents.selectors import agent_state, engaged_switches
from agents.services import killswitch_engage, killswitch_release, run_start
from audit.models import AuditEvent
from console import frames
from tests.approvals.test_notifications import make_receiver, queued_tasks  # noqa: F401
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db
INWARD = INWARD_WEBHOOK

DENY_COUNT = {"rules": [{"tool": "test.count", "effect": "deny"}]}
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
WHSEC = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret, 24 bytes


@pytest.fixture
def mailbox(settings: Any) -> list[Any]:
    settings.EMAIL_BACKEND = LOCMEM
    mail.outbox = []
    return mail.outbox


@pytest.fixture
def denier(make_agent: Any) -> Any:
    """A Claims agent whose every step is denied by policy: each run is one denial."""
    return make_agent("denier", "tests.support.agents.counter", DENY_COUNT)


def denials(agent: Any, n: int) -> list[Run]:
    runs = []
    for i in range(n):
        run = run_start(agent=agent, input={"label": f"d{i}", "steps": 1})
        execute_run(run.pk)
        runs.append(run)
    assert Action.objects.filter(run__agent=agent, status=Action.Status.DENIED).count() >= n
    return runs


def age(runs: list[Run], minutes: int) -> None:
    """Time passes for these runs' steps: they happened `minutes` ago."""
    Action.objects.filter(run__in=runs).update(
        created_at=timezone.now() - timedelta(minutes=minutes)
    )


def rule_on(agent: Any, **config: Any) -> AlertRule:
    settings = {
        "name": "too many denials",
        "metric": "denials",
        "threshold": 3.0,
        "clear_threshold": 1.0,
        "window_minutes": 5,
        "notify_emails": "oncall@example.com",
        "notify_supervisors": False,
        **config,
    }
    return alerts.alert_rule_create(user=None, agent=agent, **settings)


def alert_events(verb: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=verb).order_by("seq"))


# --- firing and resolving ----------------------------------------------------------------


def test_a_rule_fires_once_when_its_threshold_is_crossed(
    denier: Any, mailbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    rule = rule_on(denier)
    denials(denier, 3)
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 0, "3 is not more than 3"
    rule.refresh_from_db()
    assert (rule.state, rule.last_value) == ("resolved", 3.0)

    denials(denier, 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 0, "still above: no second transition"

    rule.refresh_from_db()
    assert (rule.state, rule.last_value) == ("firing", 4.0)
    [event] = AlertEvent.objects.filter(rule=rule)
    assert (event.state, event.value, event.threshold) == ("firing", 4.0, 3.0)
    [fired] = alert_events("alert.fired")
    assert (fired.actor_type, fired.agent_id, fired.subject_id) == (
        "system",
        denier.pk,
        str(rule.pk),
    )
    assert fired.payload["value"] == 4.0 and fired.payload["rule"] == rule.pk
    [message] = mailbox
    assert message.to == ["oncall@example.com"]
    assert "Alert firing: too many denials" in message.subject
    assert "Measured: 4" in message.body


def test_it_resolves_only_back_past_the_clear_threshold(
    denier: Any, mailbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    rule = rule_on(denier)
    runs = denials(denier, 4)
    with django_capture_on_commit_callbacks(execute=True):
        alerts.alerts_evaluate()
    age(runs[:2], 10)  # two left in the window: under the threshold, above the clear one
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 0
    rule.refresh_from_db()
    assert (rule.state, rule.last_value) == ("firing", 2.0), "hysteresis: still firing at 2"

    age(runs[2:3], 10)  # one left: back at the clear threshold
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 1
    rule.refresh_from_db()
    assert rule.state == "resolved"
    assert [e.state for e in AlertEvent.objects.filter(rule=rule).order_by("pk")] == [
        "firing",
        "resolved",
    ]
    [resolved] = alert_events("alert.resolved")
    assert resolved.payload["value"] == 1.0
    assert [m.subject.split(":")[0] for m in mailbox] == [
        "[Baton] Alert firing",
        "[Baton] Alert resolved",
    ]


def test_a_below_rule_on_a_kpi_and_a_change_rule_use_the_window_before(
    denier: Any, mailbox: list[Any]
) -> None:
    # Exception rate: every run of the denier fails, so it is 100 % — below 50 % is false.
    below = rule_on(
        denier, name="few exceptions", metric="exception_rate", comparison="below",
        threshold=0.5, clear_threshold=0.6,
    )  # fmt: skip
    doubled = rule_on(
        denier, name="denials doubled", basis="change", threshold=2.0, clear_threshold=1.0
    )
    runs = denials(denier, 3)
    age(runs[:1], 7)  # one in the window before (5–10 min ago), two in this one
    values = alerts.measure_rules([below, doubled])
    assert values[below.pk] == 1.0
    assert values[doubled.pk] == 2.0, "2 now over 1 before"
    assert alerts.alerts_evaluate() == 0, "neither crossed: 1.0 is not below 0.5, 2 not above 2"
    denials(denier, 1)
    assert alerts.alerts_evaluate() == 1
    doubled.refresh_from_db()
    assert doubled.state == "firing" and doubled.last_value == 3.0


def test_no_data_changes_nothing(denier: Any) -> None:
    rule = rule_on(denier, metric="cost_per_run", threshold=0.5, clear_threshold=0.4)
    assert alerts.measure_rules([rule]) == {rule.pk: None}
    assert alerts.alerts_evaluate() == 0
    rule.refresh_from_db()
    assert rule.state == "resolved" and rule.last_value is None


def test_a_pass_writes_the_quiet_rules_values_in_one_statement(denier: Any) -> None:
    quiet = [rule_on(denier, name=f"quiet {i}", threshold=50 + i) for i in range(3)]
    firing = rule_on(denier, name="loud", threshold=1, clear_threshold=0)
    denials(denier, 2)
    with CaptureQueriesContext(connection) as queries:
        assert alerts.alerts_evaluate() == 1
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    rules_updated = [q for q in updates if '"agents_alertrule"' in q]
    assert len(rules_updated) == 2, "one for the three quiet rules, one for the transition"
    for rule in [*quiet, firing]:
        rule.refresh_from_db()
        assert rule.last_value == 2.0 and rule.last_evaluated_at is not None
    assert [r.state for r in quiet] == ["resolved"] * 3 and firing.state == "firing"


def test_the_registry_is_one_place_to_add_a_metric(denier: Any) -> None:
    # Another module adds its metric (a drift score, say) by registering it.
    def measure(m: Any, by: str, ids: frozenset[int], span: Any) -> dict[int, Any]:
        return {pk: (0.9, None) for pk in ids}

    alerts.metric_register(alerts.Metric("test_drift", "test drift", "number", measure))
    try:
        assert ("test_drift", "test drift") in alerts.metric_choices()
        rule = rule_on(denier, metric="test_drift", threshold=0.8, clear_threshold=0.5)
        assert alerts.alerts_evaluate() == 1
        rule.refresh_from_db()
        assert rule.state == "firing" and rule.last_value == 0.9
    finally:
        del alerts.METRICS["test_drift"]


def test_each_metric_measures_only_its_own_rules_agents(
    denier: Any, make_agent: Any, world: Any
) -> None:
    # A drift score is a few queries an agent: a pass must not compute it for the agents
    # that only other metrics' rules watch (bench/alerts.py: 1,130 queries → far fewer).
    others = [make_agent(f"other-{i}", "tests.support.agents.counter", DENY_COUNT) for i in (1, 2)]
    asked: list[frozenset[int]] = []

    def measure(m: Any, by: str, ids: frozenset[int], span: Any) -> dict[int, Any]:
        asked.append(ids)
        return {pk: (0.1, None) for pk in ids}

    def kpi_reader(m: Any, by: str, ids: frozenset[int], span: Any) -> dict[int, Any]:
        # A metric registered without shares_figures reads the shared figures all the same.
        pairs = m.figures(by, ids, span)
        return {pk: (float(pairs[pk].current.runs), None) for pk in ids if pk in pairs}

    alerts.metric_register(alerts.Metric("test_costly", "costly", "number", measure))
    alerts.metric_register(alerts.Metric("test_runs", "runs read", "count", kpi_reader))
    try:
        costly = rule_on(denier, name="costly", metric="test_costly", threshold=9)
        counted = [rule_on(a, name="count", metric="denials") for a in others]
        kpi = rule_on(others[0], name="kpi", metric="runs", threshold=9, clear_threshold=1)
        late = rule_on(others[1], name="late", metric="test_runs", threshold=9, clear_threshold=1)
        denials(others[0], 1)
        denials(others[1], 2)
        values = alerts.measure_rules([costly, *counted, kpi, late])
        assert asked == [frozenset({denier.pk})]
        assert values[costly.pk] == 0.1
        assert values[counted[1].pk] == 2.0
        assert values[kpi.pk] == 1.0
        assert values[late.pk] == 2.0, "figures asked for an agent outside the shared set"
    finally:
        del alerts.METRICS["test_costly"], alerts.METRICS["test_runs"]


# --- circuit breakers ---------------------------------------------------------------------


def test_a_breaker_pauses_the_agent_in_the_evaluation_that_fires(
    denier: Any, world: Any, mailbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    rule = rule_on(denier, engage_breaker=True)
    denials(denier, 4)
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 1

    switch = KillSwitch.objects.get(agent=denier, released_at__isnull=True)
    assert (switch.mode, switch.engaged_by) == ("pause", None)
    assert switch.reason == (
        "circuit breaker: rule 'too many denials': tool steps denied by policy = 4 (threshold 3)"
    )
    assert agent_state(denier, engaged_switches()) == "paused"
    [engaged] = alert_events("killswitch.engaged")
    assert engaged.actor_type == "system" and engaged.payload["reason"] == switch.reason
    [fired] = alert_events("alert.fired")
    assert fired.seq > engaged.seq, "one transaction: the switch, then the alert"
    assert fired.payload["value"] == 4.0 and fired.payload["switch"] == switch.pk
    assert AlertEvent.objects.get(rule=rule).switch == switch
    assert "circuit breaker paused" in mailbox[0].body

    # Nothing of the agent runs while paused; a person releases it as any switch.
    run = run_start(agent=denier, input={"label": "after", "steps": 1})
    execute_run(run.pk)
    run.refresh_from_db()
    assert (run.status, run.wait_reason) == ("waiting", "paused")
    killswitch_release(switch=switch, user=world.supervisor, reason="looked into it")
    assert agent_state(denier, engaged_switches()) == "active"


def test_a_breaker_on_a_stopped_agent_fires_without_a_second_switch(
    denier: Any, world: Any, mailbox: list[Any]
) -> None:
    rule = rule_on(denier, engage_breaker=True)
    denials(denier, 4)
    killswitch_engage(
        scope="agent", mode="halt", reason="by hand", user=world.supervisor, agent=denier
    )
    assert alerts.alerts_evaluate() == 1
    assert KillSwitch.objects.filter(agent=denier).count() == 1
    event = AlertEvent.objects.get(rule=rule)
    assert (event.switch, event.note) == (None, "already stopped")


def test_an_agent_rule_tells_its_addresses_and_the_agents_supervisors(
    denier: Any, world: Any
) -> None:
    for person in (world.supervisor, world.support_supervisor, world.admin):
        person.email = f"{person.username}@example.com"
        person.save()
    rule = rule_on(denier, notify_supervisors=True, notify_emails="oncall@example.com")
    assert alerts.recipients(rule) == ["oncall@example.com", "sam@example.com"]


def test_a_team_rule_pauses_the_team_and_mails_its_supervisors(
    make_agent: Any, world: Any, mailbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    denier = make_agent("denier", "tests.support.agents.counter", DENY_COUNT)
    alerts.alert_rule_create(
        user=world.admin,
        team=world.claims,
        name="claims failing",
        metric="failures",
        threshold=1.0,
        clear_threshold=0.0,
        window_minutes=60,
        engage_breaker=True,
        notify_supervisors=True,
    )
    for person in (world.supervisor, world.support_supervisor, world.admin):
        person.email = f"{person.username}@example.com"
        person.save()
    denials(denier, 2)
    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alerts_evaluate() == 1
    # Claims' supervisors with an address (sol has none); not Support's, not its admin.
    assert [m.to for m in mailbox] == [["sam@example.com"]]
    switch = KillSwitch.objects.get(team=world.claims, released_at__isnull=True)
    assert "failures" not in switch.reason and "runs failed = 2" in switch.reason
    fired = alert_events("alert.fired")[0]
    assert (fired.agent_id, fired.team_id) == (None, world.claims.pk)


# --- two evaluators at once ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_evaluators_at_once_transition_once_and_notify_once(
    denier: Any,
    mailbox: list[Any],
    settings: Any,
    redis_client: Any,
    task_queue: str,
) -> None:
    settings.BATON_WEBHOOK_SECRET = WHSEC
    rule = rule_on(denier, engage_breaker=True, webhook_url="http://127.0.0.1:9/hook")
    denials(denier, 4)
    barrier = threading.Barrier(2)
    won: list[bool] = []
    errors: list[BaseException] = []

    def evaluator() -> None:
        try:
            # Both read the rule resolved and measure 4 before either writes.
            mine = AlertRule.objects.select_related("agent__team", "team").get(pk=rule.pk)
            value = alerts.measure_rules([mine])[mine.pk]
            barrier.wait(timeout=30)
            won.append(alerts.alert_apply(rule=mine, value=value))
            # And a whole evaluation each, after: nothing left to do.
            won.append(bool(alerts.alerts_evaluate()))
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(won) == [False, False, False, True]
    assert AlertEvent.objects.filter(rule=rule).count() == 1
    assert len(alert_events("alert.fired")) == 1
    assert KillSwitch.objects.filter(agent=denier).count() == 1
    assert len(mailbox) == 1
    hooks = [
        t for t in queued_tasks(redis_client, task_queue) if t[0] == "approvals.webhook_deliver"
    ]
    assert len(hooks) == 1


# --- the webhook, signed, through a real worker ----------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_beat_fires_the_rule_and_the_worker_delivers_it_signed(
    denier: Any,
    settings: Any,
    start_worker: Any,
    make_receiver: Any,  # noqa: F811
    tmp_path: Any,
) -> None:
    receiver = make_receiver(200)
    rule = rule_on(denier, engage_breaker=True, webhook_url=receiver.url, notify_emails="")
    denials(denier, 4)
    worker = start_worker(
        beat=True,
        BATON_ALERT_EVALUATE_SECONDS="1",
        BATON_WEBHOOK_SECRET=WHSEC,
        BATON_DATA_DIR=str(tmp_path),
    )
    wait_for(
        lambda: receiver.requests,
        timeout=60,
        message=f"the alert's webhook; worker log:\n{worker.log}",
    )
    [received] = receiver.requests
    payload = Webhook(WHSEC).verify(received.body, received.headers)
    assert payload["event"] == "alert.firing"
    assert payload["rule"]["id"] == rule.pk and payload["value"] == 4.0
    assert payload["breaker"]["mode"] == "pause"
    assert received.headers["X-Baton-Event"] == "alert.firing"
    assert KillSwitch.objects.get(agent=denier).reason.startswith("circuit breaker")


# --- the pages ----------------------------------------------------------------------------


def client(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


GOOD = {
    "target": "agent:denier",
    "name": "denials",
    "metric": "denials",
    "basis": "value",
    "comparison": "above",
    "threshold": "3",
    "clear_threshold": "1",
    "window_minutes": "5",
    "notify_emails": "oncall@example.com, lead@example.com",
    "notify_supervisors": "on",
    "webhook_url": "",
    "engage_breaker": "on",
    "enabled": "on",
}


def test_an_admin_creates_a_rule_and_it_is_audited(denier: Any, world: Any) -> None:
    response = client(world.admin).post("/alerts/new", GOOD)
    assert response.status_code == 302
    rule = AlertRule.objects.get()
    assert (rule.agent, rule.threshold, rule.clear_threshold, rule.engage_breaker) == (
        denier,
        3.0,
        1.0,
        True,
    )
    assert rule.notify_emails == "oncall@example.com lead@example.com"
    [created] = alert_events("alert_rule.created")
    assert created.actor_label == "ada" and created.payload["threshold"] == 3.0
    page = client(world.supervisor).get("/alerts/").content.decode()
    assert "denials" in page and "above 3 over 5 min" in page


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"clear_threshold": "5"}, "clear_threshold", CLEAR_WRONG_SIDE),
        ({"comparison": "below"}, "clear_threshold", CLEAR_WRONG_SIDE),
        ({"basis": "change", "threshold": "0", "clear_threshold": "0"}, "threshold", None),
        ({"notify_emails": "oncall@example.com not-an-address"}, "notify_emails", None),
        ({"target": "team:support"}, "target", NO_TARGET),
        ({"metric": "no_such_metric"}, "metric", None),
        ({"threshold": "lots"}, "threshold", None),
        ({"window_minutes": "0"}, "window_minutes", None),
        # One of a fixed set of lengths: each distinct one costs every evaluation more.
        ({"window_minutes": "43199"}, "window_minutes", None),
        ({"window_minutes": "-5"}, "window_minutes", None),
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url", None),
        # The workers post it: not to their own machine or a cloud's metadata service.
        ({"webhook_url": "http://169.254.169.254/latest/meta-data/"}, "webhook_url", INWARD),
        ({"webhook_url": "http://127.0.0.1:6379/"}, "webhook_url", INWARD),
        ({"webhook_url": "http://[::ffff:127.0.0.1]/x"}, "webhook_url", INWARD),
        ({"webhook_url": "https://LOCALHOST/hook"}, "webhook_url", INWARD),
        ({"webhook_url": "http://0.0.0.0/x"}, "webhook_url", INWARD),
        ({"threshold": "nan"}, "threshold", None),
        ({"threshold": "1e309"}, "threshold", None),
        ({"name": "x" * 101}, "name", None),
        ({"name": "a\x00b"}, "name", None),
    ],
)
def test_bad_input_is_a_form_error_and_changes_nothing(
    denier: Any, world: Any, change: dict[str, str], field: str, message: str | None
) -> None:
    before = AuditEvent.objects.count()
    response = client(world.admin).post("/alerts/new", {**GOOD, **change})
    assert response.status_code == 400
    text = response.content.decode()
    assert f'data-error="{field}"' in text
    if message:
        assert message.replace("'", "&#x27;") in text
    if field == "notify_emails":
        assert BAD_EMAIL.format(address="not-an-address") in text
    if change.get("basis") == "change":
        assert CHANGE_NEEDS_FACTOR in text
    assert not AlertRule.objects.exists()
    assert AuditEvent.objects.count() == before


def test_who_sees_and_who_changes_a_rule(denier: Any, world: Any) -> None:
    rule = rule_on(denier)
    url = f"/alerts/{rule.pk}/"
    assert client(world.supervisor).get(url).status_code == 200
    assert client(world.compliance).get(url).status_code == 200
    assert client(world.support_supervisor).get(url).status_code == 404
    assert (
        "too many denials" not in client(world.support_supervisor).get("/alerts/").content.decode()
    )
    # Supervisors and compliance read; only an admin of the agent changes it.
    for person in (world.supervisor, world.compliance):
        assert client(person).get("/alerts/new").status_code == 403
        assert client(person).post(f"{url}edit", {**GOOD, "threshold": "9"}).status_code == 403
        assert client(person).post(f"{url}disable").status_code == 403
    rule.refresh_from_db()
    assert (rule.threshold, rule.enabled) == (3.0, True)
    assert client(world.admin).post(f"{url}edit", {**GOOD, "threshold": "9"}).status_code == 302
    rule.refresh_from_db()
    assert rule.threshold == 9.0
    [updated] = alert_events("alert_rule.updated")
    assert updated.payload["changed"]["threshold"] == 9.0


def test_csrf_is_required(denier: Any, world: Any) -> None:
    c = Client(enforce_csrf_checks=True)
    c.force_login(world.admin)
    assert c.post("/alerts/new", GOOD).status_code == 403
    assert not AlertRule.objects.exists()
    rule = rule_on(denier)
    before = AuditEvent.objects.count()
    for action in ("edit", "disable", "enable"):
        assert c.post(f"/alerts/{rule.pk}/{action}", {**GOOD, "threshold": "9"}).status_code == 403
    rule.refresh_from_db()
    assert (rule.threshold, rule.enabled) == (3.0, True)
    assert AuditEvent.objects.count() == before
    # And a GET changes nothing either: the three are POST only.
    for action in ("edit", "disable", "enable"):
        assert c.get(f"/alerts/{rule.pk}/{action}").status_code == 405


def test_disabling_a_firing_rule_resolves_it(
    denier: Any, world: Any, mailbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    rule = rule_on(denier)
    denials(denier, 4)
    alerts.alerts_evaluate()
    with django_capture_on_commit_callbacks(execute=True):
        assert client(world.admin).post(f"/alerts/{rule.pk}/disable").status_code == 302
    rule.refresh_from_db()
    assert (rule.enabled, rule.state) == (False, "resolved")
    resolved = alert_events("alert.resolved")[0]
    assert resolved.actor_label == "ada" and resolved.payload["note"] == "rule disabled"
    assert alerts.alerts_evaluate() == 0, "a disabled rule is not evaluated"


def test_the_overview_lists_firing_alerts_and_a_frame_asks_for_them(
    denier: Any, world: Any
) -> None:
    rule = rule_on(denier)
    sam = client(world.supervisor)
    assert 'data-testid="firing-alert"' not in sam.get("/").content.decode()
    denials(denier, 4)
    alerts.alerts_evaluate()
    page = sam.get("/").content.decode()
    assert 'data-testid="firing-alert"' in page and "too many denials" in page
    assert f"/agents/{denier.slug}/kpis/" in page
    sue = client(world.support_supervisor).get("/").content.decode()
    assert "too many denials" not in sue
    fired = AuditEvent.objects.get(verb="alert.fired")
    assert frames.changes([fired])[0] == ["alerts"]
    parts = sam.get("/live/parts?alerts=1").content.decode()
    assert 'id="firing-alerts"' in parts and 'hx-swap-oob="outerHTML"' in parts
    assert "too many denials" in parts
    kpis = sam.get(f"/agents/{denier.slug}/kpis/").content.decode()
    assert 'data-testid="kpi-alerts"' in kpis and "firing" in kpis
    assert rule.name in kpis


def test_a_bad_edit_is_a_form_error_and_changes_nothing(denier: Any, world: Any) -> None:
    rule = rule_on(denier)
    before = AuditEvent.objects.count()
    response = client(world.admin).post(
        f"/alerts/{rule.pk}/edit", {**GOOD, "threshold": "2", "clear_threshold": "5"}
    )
    assert response.status_code == 400
    assert 'data-error="clear_threshold"' in response.content.decode()
    rule.refresh_from_db()
    assert (rule.threshold, rule.clear_threshold) == (3.0, 1.0)
    assert AuditEvent.objects.count() == before


def test_the_form_sent_twice_adds_one_rule(denier: Any, world: Any) -> None:
    ada = client(world.admin)
    assert ada.post("/alerts/new", GOOD).status_code == 302
    again = ada.post("/alerts/new", {**GOOD, "name": "DENIALS"})  # a name is one whatever its case
    assert again.status_code == 400
    text = again.content.decode()
    assert 'data-error="name"' in text and "There is already a rule named" in text
    assert AlertRule.objects.count() == 1
    assert len(alert_events("alert_rule.created")) == 1
    # The same name on another target is another rule.
    assert ada.post("/alerts/new", {**GOOD, "target": "team:claims"}).status_code == 302
    assert AlertRule.objects.count() == 2


def test_two_forms_at_once_add_one_rule_and_the_other_is_told(
    denier: Any, world: Any, monkeypatch: Any
) -> None:
    # Two forms at once both pass the check before the insert (here: the second's check
    # answered before the first committed); the database's constraint settles it.
    rule_on(denier, name="Burst")
    taken, asked = alerts._taken, []

    def late_check(rule: AlertRule) -> bool:
        asked.append(rule.name)
        return len(asked) > 1 and taken(rule)

    monkeypatch.setattr(alerts, "_taken", late_check)
    before = AuditEvent.objects.count()
    with pytest.raises(alerts.RuleNameTaken):
        rule_on(denier, name="burst")
    assert asked == ["burst", "burst"], "the insert was tried and refused by the constraint"
    assert AlertRule.objects.filter(agent=denier).count() == 1
    assert AuditEvent.objects.count() == before


def test_renaming_a_rule_to_a_name_taken_is_a_form_error(denier: Any, world: Any) -> None:
    rule_on(denier, name="first")
    second = rule_on(denier, name="second")
    before = AuditEvent.objects.count()
    response = client(world.admin).post(f"/alerts/{second.pk}/edit", {**GOOD, "name": "First"})
    assert response.status_code == 400
    assert 'data-error="name"' in response.content.decode()
    second.refresh_from_db()
    assert second.name == "second"
    assert AuditEvent.objects.count() == before


def test_disable_or_save_sent_twice_records_one_change(denier: Any, world: Any) -> None:
    rule = rule_on(denier)
    ada = client(world.admin)
    for _ in range(2):
        assert ada.post(f"/alerts/{rule.pk}/disable").status_code == 302
    edit = {**GOOD, "name": rule.name, "threshold": "9", "enabled": ""}
    for _ in range(2):
        assert ada.post(f"/alerts/{rule.pk}/edit", edit).status_code == 302
    changes = [e.payload["changed"] for e in alert_events("alert_rule.updated")]
    assert [sorted(c) for c in changes] == [["enabled"], sorted(changes[1])]
    assert len(changes) == 2 and changes[1]["threshold"] == 9.0


def test_an_edit_committed_while_a_pass_judges_the_rule_wins(denier: Any, world: Any) -> None:
    # A pass read the rule (threshold 3, breaker on) and measured 4; before it writes the
    # transition, an admin raises the threshold and turns the breaker off. The stale
    # decision must not fire the rule nor pause the agent.
    rule = rule_on(denier, engage_breaker=True)
    denials(denier, 4)
    stale = AlertRule.objects.select_related("agent__team", "team").get(pk=rule.pk)
    alerts.alert_rule_update(
        rule=rule, user=world.admin, threshold=100.0, clear_threshold=50.0, engage_breaker=False
    )
    assert alerts.alert_apply(rule=stale, value=4.0) is False
    rule.refresh_from_db()
    assert rule.state == "resolved"
    assert not KillSwitch.objects.filter(agent=denier).exists()
    assert not alert_events("alert.fired")
    assert alerts.alerts_evaluate() == 0, "judged by the new threshold: 4 is not above 100"


def test_a_disabled_breaker_leaves_its_pause_for_a_person_to_release_audited(
    denier: Any, world: Any, django_capture_on_commit_callbacks: Any
) -> None:
    rule = rule_on(denier, engage_breaker=True)
    denials(denier, 4)
    alerts.alerts_evaluate()
    switch = KillSwitch.objects.get(agent=denier, released_at__isnull=True)
    paused = run_start(agent=denier, input={"label": "held back", "steps": 1})
    execute_run(paused.pk)

    # Editing the firing rule and then disabling it resolves the rule, not the pause:
    # what the breaker stopped stays stopped until a person has looked.
    ada = client(world.admin)
    edit = {**GOOD, "name": rule.name, "threshold": "100", "clear_threshold": "50"}
    assert ada.post(f"/alerts/{rule.pk}/edit", edit).status_code == 302
    rule.refresh_from_db()
    assert (rule.state, rule.threshold) == ("firing", 100.0)
    response = ada.post(f"/alerts/{rule.pk}/disable", follow=True)
    assert html.escape(STILL_PAUSED) in response.content.decode()
    rule.refresh_from_db()
    assert (rule.enabled, rule.state) == (False, "resolved")
    switch.refresh_from_db()
    assert switch.released_at is None
    assert agent_state(denier, engaged_switches()) == "paused"
    page = client(world.supervisor).get(f"/alerts/{rule.pk}/").content.decode()
    assert 'data-testid="breaker-holding"' in page and "although the rule is disabled" in page
    assert f"/switches/{switch.pk}/release" in page  # the banner's form, for a supervisor

    # The admin who disabled the rule may not release the pause; the supervisor does, as
    # any switch, and the release is the person's audited act.
    assert ada.post(f"/switches/{switch.pk}/release", {"reason": "mine"}).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        released = client(world.supervisor).post(
            f"/switches/{switch.pk}/release", {"reason": "checked the denials"}
        )
    assert released.status_code == 302
    switch.refresh_from_db()
    assert switch.released_by == world.supervisor
    [event] = alert_events("killswitch.released")
    assert (event.actor_type, event.actor_label) == ("user", "sam")
    assert event.payload["reason"] == "checked the denials"
    assert event.payload["runs_requeued"] == 1
    assert agent_state(denier, engaged_switches()) == "active"
    assert (
        'data-testid="breaker-holding"'
        not in client(world.supervisor).get(f"/alerts/{rule.pk}/").content.decode()
    )
    assert alerts.alerts_evaluate() == 0, "disabled: it does not engage again"


def test_a_grant_taken_away_mid_session_closes_the_rule_at_once(denier: Any, world: Any) -> None:
    from agents import roles

    rule = rule_on(denier)
    ada, sam = client(world.admin), client(world.supervisor)
    assert ada.get(f"/alerts/{rule.pk}/").status_code == 200
    roles.role_revoke(user=world.admin, role=roles.AGENT_ADMIN, target=world.claims)
    # The same session, the next request: the rule is no longer theirs to see or change.
    assert ada.post(f"/alerts/{rule.pk}/edit", {**GOOD, "threshold": "9"}).status_code == 404
    assert ada.post(f"/alerts/{rule.pk}/disable").status_code == 404
    assert ada.get("/alerts/new").status_code == 403
    assert "too many denials" not in ada.get("/alerts/").content.decode()
    rule.refresh_from_db()
    assert (rule.threshold, rule.enabled) == (3.0, True)
    assert not alert_events("alert_rule.updated")
    # A supervisor who loses the team loses its review and approver figures as well.
    assert sam.get("/teams/claims/review/").status_code == 200
    roles.role_revoke(user=world.supervisor, role=roles.SUPERVISOR, target=world.claims)
    for url in ("/teams/claims/review/", "/teams/claims/approvers/", f"/alerts/{rule.pk}/"):
        assert sam.get(url).status_code == 404, url
    assert sam.post("/teams/claims/review/download").status_code == 404


def test_a_rule_made_with_a_window_outside_the_set_keeps_it_when_edited(
    denier: Any, world: Any
) -> None:
    rule = rule_on(denier, window_minutes=7)
    ada = client(world.admin)
    assert 'value="7" selected' in ada.get(f"/alerts/{rule.pk}/").content.decode()
    edit = {**GOOD, "name": rule.name, "window_minutes": "7", "threshold": "4"}
    assert ada.post(f"/alerts/{rule.pk}/edit", edit).status_code == 302
    rule.refresh_from_db()
    assert (rule.window_minutes, rule.threshold) == (7, 4.0)
    # A new rule may not take it.
    assert ada.post("/alerts/new", {**GOOD, "window_minutes": "7"}).status_code == 400


def test_the_trail_records_where_a_webhook_goes_not_its_secret_path(
    denier: Any, world: Any
) -> None:
    # Chat services' incoming webhooks carry their credential in the path: the trail,
    # which every supervisor of the agent reads and which is kept for ever, must not.
    secret = "https://hooks.chat.example/services/T0001/B0002/s3cr3tT0k3n?x=1"
    ada = client(world.admin)
    assert ada.post("/alerts/new", {**GOOD, "webhook_url": secret}).status_code == 302
    rule = AlertRule.objects.get()
    assert rule.webhook_url == secret  # the rule itself keeps it, to post there
    other = "https://user:pw@hooks.chat.example/services/T0001/B0002/an0th3r"
    edit = {**GOOD, "name": rule.name, "webhook_url": other}
    assert ada.post(f"/alerts/{rule.pk}/edit", edit).status_code == 302
    [created] = alert_events("alert_rule.created")
    [updated] = alert_events("alert_rule.updated")
    for event in (created, updated):
        text = json.dumps(event.payload)
        assert "s3cr3t" not in text and "an0th3r" not in text and "pw" not in text
    assert created.payload["webhook_url"].startswith("https://hooks.chat.example/… (sha256 ")
    recorded = updated.payload["changed"]["webhook_url"]
    assert recorded == alerts.webhook_recorded(other) != created.payload["webhook_url"]
