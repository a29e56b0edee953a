"""An edited action is decided under the rule its edited arguments match (issue 9, item 1):
more approvers, another approver group and timeout, deny refused, shadow never run for
real; on every path a decision takes (the request page, the batch, a remote agent's step)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.utils import timezone

from agents.models import Action, Agent, Payment, Run
from agents.remote import apikey_create
from agents.runtime import execute_run
from agents.services import ServiceError, agent_create, version_create, version_publish
from approvals.models import ApprovalRequest
from approvals.services import (
    ALREADY_APPROVED_BY_YOU,
    EDIT_NOT_YOURS,
    SELF_APPROVAL,
    STALE_DECISION,
    approval_decide,
)
from audit.models import AuditEvent
from tests.approvals.conftest import TIERS
from tests.support.agents import executions

pytestmark = pytest.mark.django_db


def decide(request: ApprovalRequest, user: Any, verdict: str = "approve", **kw: Any) -> Any:
    request.refresh_from_db()
    return approval_decide(
        request_id=request.pk,
        user=user,
        verdict=verdict,
        seen_args_hash=kw.pop("seen", request.args_hash),
        **kw,
    )


def pay(amount: float, claim: str = "c1") -> dict[str, Any]:
    return {"claim_id": claim, "amount": amount}


def snapshot(request: ApprovalRequest) -> tuple[Any, ...]:
    request.refresh_from_db()
    action = Action.objects.get(pk=request.action_id)
    return (
        request.status,
        request.args,
        request.args_hash,
        request.required_approvals,
        request.rule_index,
        request.approver_group,
        request.due_at,
        request.decisions.count(),
        action.status,
        action.args,
        AuditEvent.objects.count(),
    )


def paid(claim: str = "c1") -> list[Any]:
    return [p.amount for p in Payment.objects.filter(claim_id=claim)]


def test_an_edit_into_the_two_approver_range_waits_for_a_second_approver(
    hold: Any, world: Any
) -> None:
    request = hold(5000)
    assert request.required_approvals == 1
    before = timezone.now()
    result = decide(request, world.supervisor, edited_args=pay(50000))
    assert result.status == ApprovalRequest.Status.PENDING
    assert (result.required_approvals, result.rule_index, result.args) == (2, 2, pay(50000))
    assert before + timedelta(hours=2) <= result.due_at <= timezone.now() + timedelta(hours=2)
    execute_run(request.run_id)
    assert Run.objects.get(pk=request.run_id).status == Run.Status.WAITING
    assert paid() == [] and executions("pay:c1") == 0

    assert decide(result, world.second_supervisor).status == ApprovalRequest.Status.APPROVED
    execute_run(request.run_id)
    assert Run.objects.get(pk=request.run_id).output == {"paid": True, "amount": "50000"}
    assert paid() == [50000] and executions("pay:c1") == 1
    events = AuditEvent.objects.filter(subject_type="approval", subject_id=str(request.pk))
    assert list(events.order_by("seq").values_list("verb", flat=True)) == [
        "approval.requested",
        "approval.decision",
        "approval.approved",
    ]
    first_decision = events.get(verb="approval.decision").payload
    assert first_decision["required"] == 2 and first_decision["rule"]["index"] == 2


def test_approvals_of_other_arguments_no_longer_count_but_their_givers_may_approve_again(
    hold: Any, world: Any, treasurer: Any
) -> None:
    request = hold(20000)
    decide(request, world.supervisor)
    edited = decide(request, world.second_supervisor, edited_args=pay(30000))
    assert edited.status == "pending", "sam's approval was for 20,000"
    with pytest.raises(ServiceError, match=ALREADY_APPROVED_BY_YOU):
        decide(request, world.second_supervisor)
    assert decide(request, world.supervisor).status == "approved"
    assert Action.objects.get(pk=request.action_id).args == pay(30000)


def test_an_edit_into_the_deny_range_is_refused_and_changes_nothing(hold: Any, world: Any) -> None:
    request = hold(5000)
    before = snapshot(request)
    for amount in (100001, 999999):
        with pytest.raises(ServiceError, match="the policy would deny .*never above 100,000"):
            decide(request, world.supervisor, edited_args=pay(amount))
    assert snapshot(request) == before


def test_an_edit_into_a_shadow_rule_is_refused_and_never_runs_for_real(
    hold: Any, world: Any
) -> None:
    request = hold(5000)
    before = snapshot(request)
    with pytest.raises(ServiceError, match="only shadows the edited arguments"):
        decide(request, world.supervisor, edited_args=pay(5))
    assert snapshot(request) == before
    decide(request, world.supervisor, "reject", comment="wrong claim")
    execute_run(request.run_id)
    run = Run.objects.get(pk=request.run_id)
    assert run.output == {"paid": False, "reason": "rejected by sam: wrong claim"}
    assert paid() == [] and executions("pay:c1") == 0


def test_an_edit_into_an_allow_rule_needs_only_this_approval(hold: Any, world: Any) -> None:
    request = hold(20000)
    assert request.required_approvals == 2
    assert decide(request, world.supervisor, edited_args=pay(80)).status == "approved"
    execute_run(request.run_id)
    assert paid() == [80] and executions("pay:c1") == 1
    action = Action.objects.get(pk=request.action_id)
    assert action.rule is not None
    assert (action.rule_index, action.rule["effect"]) == (4, "allow")
    allowed = AuditEvent.objects.get(run_id=request.run_id, verb="action.allowed")
    assert allowed.payload is not None
    assert allowed.payload["rule"]["effect"] == "allow", "the trail names the rule it ran under"


def test_an_edit_into_another_approver_group_needs_a_member_of_it(
    hold: Any, world: Any, treasurer: Any
) -> None:
    request = hold(5000)
    before = snapshot(request)
    message = EDIT_NOT_YOURS.format(rule="rule 2 (test.pay, decided by Treasury)")
    with pytest.raises(ServiceError) as refused:
        decide(request, world.supervisor, edited_args=pay(60000))
    assert str(refused.value) == message
    assert snapshot(request) == before

    result = decide(request, treasurer, edited_args=pay(60000))
    assert (result.status, result.approver_group, result.required_approvals) == (
        "approved",
        "Treasury",
        1,
    )


def test_a_request_held_for_an_approver_group_is_decided_only_by_its_members(
    hold: Any, world: Any, treasurer: Any
) -> None:
    request = hold(70000)
    assert request.approver_group == "Treasury"
    with pytest.raises(PermissionDenied):
        decide(request, world.supervisor)
    assert decide(request, treasurer).status == "approved"


def test_the_launcher_may_not_decide_an_edit_of_their_run(
    hold: Any, world: Any, treasurer: Any
) -> None:
    request = hold(5000, user=treasurer)
    with pytest.raises(ServiceError, match=SELF_APPROVAL):
        decide(request, treasurer, edited_args=pay(60000))
    assert snapshot(request)[:3] == ("pending", pay(5000), request.args_hash)


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_batch_takes_the_same_path_as_the_request_page(hold: Any, world: Any) -> None:
    request = hold(5000)
    shown = request.args_hash  # what sol's queue showed before sam's edit
    response = login(world.supervisor).post(
        f"/approvals/{request.pk}/decide",
        {"verdict": "approve", "args_hash": shown, "edit": "1", "arg:claim_id": "c1"}
        | {"arg:amount": "50000"},
    )
    assert response.status_code == 302
    request.refresh_from_db()
    assert (request.status, request.required_approvals) == ("pending", 2)

    def batch(user: Any, seen: str) -> list[str]:
        response = login(user).post(
            "/approvals/batch", {"verdict": "approve", "selected": f"{request.pk}:{seen}"}
        )
        return [str(m) for m in response.wsgi_request._messages]  # type: ignore[attr-defined]

    assert batch(world.supervisor, request.args_hash) == [
        f"#{request.pk}: {ALREADY_APPROVED_BY_YOU}"
    ]
    assert batch(world.second_supervisor, shown) == [f"#{request.pk}: {STALE_DECISION}"]
    request.refresh_from_db()
    assert request.status == "pending"
    assert batch(world.second_supervisor, request.args_hash) == ["1 request(s): approve recorded."]
    request.refresh_from_db()
    assert request.status == "approved"


@pytest.fixture
def remote_api(world: Any) -> Any:
    agent = agent_create(
        slug="remote-payer", name="Remote payer", team=world.claims, kind=Agent.Kind.REMOTE
    )
    version = version_create(agent=agent, program="", policy=TIERS, user=world.admin)
    version_publish(version=version, user=None, reason="set-up")
    agent.refresh_from_db()
    key = apikey_create(agent=agent, name="prod", user=world.admin)[1]
    client = Client()
    headers = {"Authorization": f"Bearer {key}"}

    class Api:
        def post(self, path: str, body: Any) -> Any:
            return client.post(
                f"/api/v1{path}", json.dumps(body), content_type="application/json", headers=headers
            ).json()

        def get(self, path: str) -> Any:
            return client.get(f"/api/v1{path}", headers=headers).json()

    return Api()


def test_a_remote_agents_held_step_takes_the_same_path(remote_api: Any, world: Any) -> None:
    run_id = int(remote_api.post("/runs", {"input": {"claim": "R-1"}})["run"])
    step = {"seq": 1, "tool": "test.pay", "args": pay(5000, "R-1")}
    assert remote_api.post(f"/runs/{run_id}/steps", step)["decision"] == "pending"
    request = ApprovalRequest.objects.get(run_id=run_id)
    with pytest.raises(ServiceError, match="the policy would deny"):
        decide(request, world.supervisor, edited_args=pay(500000, "R-1"))
    with pytest.raises(ServiceError, match="only shadows"):
        decide(request, world.supervisor, edited_args=pay(1, "R-1"))
    decide(request, world.supervisor, edited_args=pay(50000, "R-1"))
    assert remote_api.get(f"/runs/{run_id}/steps/1")["decision"] == "pending"
    decide(request, world.second_supervisor)
    answer = remote_api.get(f"/runs/{run_id}/steps/1")
    assert (answer["decision"], answer["args"]) == ("allow", pay(50000, "R-1"))


def test_the_deciders_of_the_new_rule_are_told_and_the_editor_is_not(
    hold: Any, world: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.core import mail

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    for person in (world.supervisor, world.second_supervisor):
        person.email = f"{person.username}@baton.example"
        person.save(update_fields=["email"])
    request = hold(5000)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        decide(request, world.supervisor, edited_args=pay(50000))
    assert [m.to for m in mail.outbox] == [["sol@baton.example"]]
    assert "Approvals needed: 2" in mail.outbox[0].body and '"amount": 50000' in mail.outbox[0].body
