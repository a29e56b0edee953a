"""The runtime's smaller promises: after-commit hooks that fail are logged and the next
ones still run; ctx.now() and ctx.random() are steps like any other (admitted, audited);
a hosted run's input is bounded."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import transaction

from agents.models import Action, Run
from agents.runtime import execute_run
from agents.services import (
    RUN_INPUT_TOO_LARGE,
    ServiceError,
    killswitch_release,
    run_start,
)
from approvals.models import ApprovalRequest
from approvals.notifications import notify_on_commit
from audit.models import AuditEvent
from tests.conftest import ALLOW_ALL_TESTS


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


HOLD_COUNTS = {
    "rules": [
        {"tool": "test.held", "effect": "approve"},
        {"tool": "test.*", "effect": "allow"},
    ]
}


@pytest.mark.django_db(transaction=True)
def test_a_failing_notification_is_logged_and_the_hooks_after_it_still_run(
    make_agent: Any, settings: Any, world: Any
) -> None:
    world.supervisor.email = "sam@example.com"
    world.supervisor.save(update_fields=["email"])
    agent = make_agent("decider", "tests.support.runtime_agents.decided", HOLD_COUNTS)
    run = run_start(agent=agent, input={"label": "n1"})
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    settings.EMAIL_BACKEND = "tests.support.runtime_agents.RefusingMailBackend"
    after: list[str] = []
    logged = Logged()
    logging.getLogger("django.db.backends.base").addHandler(logged)
    try:
        with transaction.atomic():
            notify_on_commit(event="approval.requested", request_id=request.pk)
            transaction.on_commit(lambda: after.append("ran"), robust=True)
    finally:
        logging.getLogger("django.db.backends.base").removeHandler(logged)

    assert after == ["ran"], "the hook after the failing notification ran"
    assert any("the mail relay refused" in line for line in logged.lines)


@pytest.mark.django_db(transaction=True)
def test_the_clock_and_random_are_admitted_steps_and_audited(make_agent: Any, world: Any) -> None:
    agent = make_agent("timer", "tests.support.runtime_agents.clock", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "c1", "first": "test.pause_me"})

    # The first step pauses the agent: the clock after it is not read, nothing journaled.
    execute_run(run.pk)
    run.refresh_from_db()
    assert (run.status, run.wait_reason) == (Run.Status.WAITING, Run.WaitReason.PAUSED)
    assert list(run.actions.values_list("seq", flat=True)) == [1]

    switch = agent.killswitch_set.get(released_at__isnull=True)
    killswitch_release(switch=switch, user=world.supervisor, reason="go on")
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    now, rand = run.actions.filter(kind=Action.Kind.VALUE).order_by("seq")
    assert (now.seq, now.name, rand.seq, rand.name) == (2, "now", 3, "random")
    recorded = [
        (e.payload["seq"], e.payload["tool"], e.payload["value"])
        for e in AuditEvent.objects.filter(run_id=run.pk, verb="value.recorded").order_by("seq")
    ]
    assert recorded == [(2, "now", now.result), (3, "random", rand.result)]
    assert run.output == {"now": now.result, "random": rand.result}


@pytest.mark.django_db(transaction=True)
def test_a_run_input_over_the_limit_is_refused_and_nothing_is_created(
    make_agent: Any, settings: Any
) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    settings.BATON_RUN_INPUT_MAX_BYTES = 1000
    events = AuditEvent.objects.count()
    big = {"label": "x", "note": "é" * 600}  # 1,200 bytes of UTF-8

    with pytest.raises(ServiceError) as refused:
        run_start(agent=agent, input=big)

    assert str(refused.value) == RUN_INPUT_TOO_LARGE.format(limit=1000, size=1226)
    assert not Run.objects.exists()
    assert AuditEvent.objects.count() == events
    assert run_start(agent=agent, input={"label": "x", "note": "é" * 400}).pk  # under it
