"""The gateway's decision core: one decision for hosted and remote runs, returned as a
value (agents.gateway.core); the adapters differ only in how a waiting step parks a run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agents.gateway.core import (
    Adapter,
    Allow,
    Delay,
    Deny,
    Gate,
    Hold,
    Recorded,
    Shadow,
    Stop,
    decide_step,
)
from agents.gateway.hosted import Hosted
from agents.models import Action, KillSwitch, Run
from agents.remote import REMOTE
from agents.services import killswitch_engage, run_start
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

POLICY = {
    "rules": [
        {"tool": "test.held", "effect": "approve"},
        {"tool": "test.count_once", "effect": "shadow"},
        {"tool": "test.count", "effect": "allow"},
    ],
    "rate_limits": [{"tool": "test.count", "limit": 1, "per": 3600}],
}


def running(agent: Any) -> tuple[Run, uuid.UUID]:
    """A run as a worker (or the remote API) holds it: running, under its own token."""
    run = run_start(agent=agent, input={})
    token = uuid.uuid4()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, lease_token=token)
    run = Run.objects.select_related("agent__team", "version").get(pk=run.pk)
    return run, token


def adapter_for(kind: str, run: Run, token: uuid.UUID) -> Adapter:
    return Hosted(run.pk, token) if kind == "hosted" else REMOTE


@pytest.mark.parametrize("kind", ["hosted", "remote"])
def test_every_effect_is_decided_as_a_value_the_same_for_hosted_and_remote(
    make_agent: Any, kind: str
) -> None:
    agent = make_agent(f"core-{kind}", "tests.support.agents.counter", POLICY)
    run, token = running(agent)
    gate = Gate(run, token, {}, adapter_for(kind, run, token))

    allowed = decide_step(gate, 1, "test.count", {"label": "a"})
    assert isinstance(allowed, Allow)
    assert allowed.tool.name == "test.count"
    # Committed as started before anything executes, with the key the executor uses.
    stored = Action.objects.get(run=run, seq=1)
    assert (stored.status, stored.idempotency_key) == ("started", f"baton-run{run.pk}-step1")

    delayed = decide_step(gate, 2, "test.count", {"label": "b"})
    assert isinstance(delayed, Delay)
    assert delayed.retry_after > 0
    assert delayed.reason == "rate limit 1/3600s for test.count"
    assert not Action.objects.filter(run=run, seq=2).exists(), "a delay journals nothing"

    denied = decide_step(gate, 2, "test.pay", {"claim_id": "c", "amount": 5})
    assert isinstance(denied, Deny)
    assert denied.action.status == "denied"

    invalid = decide_step(gate, 3, "test.count", {"label": 7})
    assert isinstance(invalid, Deny)
    assert invalid.action.status == "invalid"

    shadowed = decide_step(gate, 4, "test.count_once", {"label": "s"})
    assert isinstance(shadowed, Shadow)
    assert shadowed.action.status == "shadowed"

    replayed = decide_step(gate, 2, "test.pay", {"claim_id": "c", "amount": 5})
    assert replayed == Recorded(denied.action)

    held = decide_step(gate, 5, "test.held", {"label": "h"})
    assert isinstance(held, Hold)
    assert held.action.status == "held"
    assert list(run.actions.order_by("seq").values_list("status", flat=True)) == [
        "started",
        "denied",
        "invalid",
        "shadowed",
        "held",
    ]


def test_a_hosted_hold_gives_up_the_lease_and_a_remote_one_keeps_the_run_running(
    make_agent: Any,
) -> None:
    agent = make_agent("core-park", "tests.support.agents.counter", POLICY)
    hosted, hosted_token = running(agent)
    remote, remote_token = running(agent)

    decide_step(
        Gate(hosted, hosted_token, {}, Hosted(hosted.pk, hosted_token)),
        1,
        "test.held",
        {"label": "x"},
    )
    decide_step(Gate(remote, remote_token, {}, REMOTE), 1, "test.held", {"label": "y"})

    hosted.refresh_from_db()
    remote.refresh_from_db()
    assert (hosted.status, hosted.wait_reason, hosted.lease_token) == ("waiting", "approval", None)
    assert (remote.status, remote.wait_reason, remote.lease_token) == (
        "running",
        "approval",
        remote_token,
    )
    waiting = AuditEvent.objects.filter(verb="run.waiting")
    assert list(waiting.values_list("run_id", flat=True)) == [hosted.pk]


@pytest.mark.parametrize("kind", ["hosted", "remote"])
def test_a_switch_stops_the_step_as_a_value_and_journals_nothing(
    make_agent: Any, world: Any, kind: str
) -> None:
    agent = make_agent(f"core-stop-{kind}", "tests.support.agents.counter", POLICY)
    run, token = running(agent)
    killswitch_engage(
        scope=KillSwitch.Scope.AGENT,
        mode=KillSwitch.Mode.PAUSE,
        reason="looking into it",
        user=world.admin,
        agent=agent,
    )
    gate = Gate(run, token, {}, adapter_for(kind, run, token))
    stopped = decide_step(gate, 1, "test.count", {"label": "a"})
    assert isinstance(stopped, Stop)
    assert stopped.mode == "pause"
    assert "looking into it" in stopped.reason
    assert not run.actions.exists()
