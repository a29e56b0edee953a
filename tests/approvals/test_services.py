"""The decision rules of DESIGN section 5, at the service, against real Postgres."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents import roles
from agents.models import Action, Payment, Run
from agents.runtime import execute_run
from agents.services import ServiceError, run_start
from approvals.models import ApprovalDecision, ApprovalRequest
from approvals.services import (
    AUTHOR_APPROVAL,
    REJECT_NEEDS_REASON,
    SELF_APPROVAL,
    STALE_DECISION,
    AlreadyDecided,
    approval_decide,
    approvals_expire,
)
from audit.models import AuditEvent

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


def audit_verbs(request: ApprovalRequest) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="approval", subject_id=str(request.pk))
        .order_by("seq")
        .values_list("verb", flat=True)
    )


def test_a_four_eyes_payout_needs_two_different_people(held: Any, world: Any) -> None:
    request = held(amount=20000)
    assert request.required_approvals == 2
    assert decide(request, world.supervisor).status == ApprovalRequest.Status.PENDING
    with pytest.raises(ServiceError, match="you already approved this request"):
        decide(request, world.supervisor)
    assert decide(request, world.second_supervisor).status == ApprovalRequest.Status.APPROVED
    assert audit_verbs(request) == ["approval.requested", "approval.decision", "approval.approved"]


def test_the_person_who_launched_the_run_may_not_approve_it(held: Any, world: Any) -> None:
    request = held(user=world.supervisor)
    with pytest.raises(ServiceError, match=SELF_APPROVAL):
        decide(request, world.supervisor)
    assert decide(request, world.second_supervisor).status == "approved"


def test_the_author_of_the_policy_in_force_may_not_approve(held: Any, world: Any) -> None:
    roles.role_grant(user=world.admin, role=roles.SUPERVISOR, target=world.claims)
    request = held()
    with pytest.raises(ServiceError, match=AUTHOR_APPROVAL):
        decide(request, world.admin)
    assert not request.decisions.exists()


def test_the_database_refuses_a_decision_by_the_launcher_or_author(held: Any, world: Any) -> None:
    request = held(user=world.supervisor)
    for user in (world.supervisor, world.admin):
        with pytest.raises(IntegrityError), transaction.atomic():
            ApprovalDecision.objects.create(
                request=request,
                user=user,
                verdict="approve",
                args_hash=request.args_hash,
                launched_by=request.launched_by,
                policy_author=request.policy_author,
            )


def test_one_rejection_ends_a_four_eyes_request(held: Any, world: Any) -> None:
    request = held(amount=20000)
    decide(request, world.supervisor)
    result = decide(request, world.second_supervisor, "reject", comment="duplicate claim")
    assert result.status == ApprovalRequest.Status.REJECTED
    assert Action.objects.get(pk=request.action_id).status == Action.Status.REJECTED


def test_a_rejection_needs_a_reason(held: Any, world: Any) -> None:
    request = held()
    with pytest.raises(ServiceError, match=REJECT_NEEDS_REASON):
        decide(request, world.supervisor, "reject", comment="   ")
    assert not request.decisions.exists()


def test_a_stale_or_forged_decision_is_refused_and_changes_nothing(held: Any, world: Any) -> None:
    request = held()
    with pytest.raises(ServiceError, match=STALE_DECISION):
        decide(request, world.supervisor, seen="0" * 64)
    request.refresh_from_db()
    assert request.status == "pending" and not request.decisions.exists()


def test_a_decision_is_used_once(held: Any, world: Any) -> None:
    request = held()
    decide(request, world.supervisor)
    with pytest.raises(AlreadyDecided, match="already decided: approved by sam"):
        decide(request, world.second_supervisor)


def test_an_edit_that_breaks_the_schema_is_refused_naming_the_field(held: Any, world: Any) -> None:
    request = held()
    with pytest.raises(ServiceError, match="amount: 'a lot' is not of type 'number'"):
        decide(request, world.supervisor, edited_args={"claim_id": "c1", "amount": "a lot"})
    with pytest.raises(ServiceError, match="'claim_id' is a required property"):
        decide(request, world.supervisor, edited_args={"amount": 10})
    assert not request.decisions.exists()


def test_an_edit_the_policy_would_deny_is_refused_with_the_reason(held: Any, world: Any) -> None:
    request = held()
    with pytest.raises(ServiceError, match="never made by an agent"):
        decide(request, world.supervisor, edited_args={"claim_id": "c1", "amount": 90000})


def test_an_edit_is_what_the_second_approver_sees_and_binds_to(held: Any, world: Any) -> None:
    request = held(amount=20000)
    shown = request.args_hash
    decide(request, world.supervisor, edited_args={"claim_id": "c1", "amount": 15000})
    with pytest.raises(ServiceError, match=STALE_DECISION):
        decide(request, world.second_supervisor, seen=shown)
    assert decide(request, world.second_supervisor).status == "approved"
    assert Action.objects.get(pk=request.action_id).args["amount"] == 15000


def test_only_supervisors_of_the_agent_may_decide(held: Any, world: Any) -> None:
    request = held()
    for outsider in (world.support_supervisor, world.compliance, world.outsider):
        with pytest.raises(PermissionDenied):
            decide(request, outsider)


def test_an_expired_request_fails_closed(held: Any, world: Any) -> None:
    request = held()
    ApprovalRequest.objects.filter(pk=request.pk).update(
        due_at=timezone.now() - timedelta(seconds=1)
    )
    assert approvals_expire() == 1
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.EXPIRED
    execute_run(request.run_id)
    run = Run.objects.get(pk=request.run_id)
    assert run.output == {"paid": False, "reason": "expired: nobody decided in time"}
    assert not Payment.objects.exists()
    assert audit_verbs(request)[-1] == "approval.expired"


def test_a_request_escalates_to_the_next_group_then_fails_closed(
    payer: Any, world: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from agents.services import version_create, version_publish

    version_publish(
        version=version_create(
            agent=payer,
            program="tests.support.agents.payout_with_fallback",
            user=world.admin,
            policy={
                "rules": [
                    {
                        "tool": "test.pay",
                        "effect": "approve",
                        "timeout": "1h",
                        "on_timeout": "escalate",
                        "escalate_to": ["Claims leads"],
                    }
                ]
            },
        ),
        user=None,
        reason="set-up",
    )
    payer.refresh_from_db()
    lead = type(world.outsider).objects.create_user("lena", email="lena@baton.example")
    lead.groups.add(Group.objects.create(name="Claims leads"))
    run = run_start(agent=payer, input={"claim_id": "c2", "amount": 10})
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    with pytest.raises(PermissionDenied):
        decide(request, lead)

    ApprovalRequest.objects.filter(pk=request.pk).update(due_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        approvals_expire()
    request.refresh_from_db()
    assert (request.status, request.escalation_level, request.escalated_to) == (
        "pending",
        1,
        "Claims leads",
    )
    escalated = [m for m in mail.outbox if "Escalated" in m.subject]
    assert [m.to for m in escalated] == [["lena@baton.example"]], "the group is told"
    assert request.due_at is not None
    assert request.due_at > timezone.now() + timedelta(minutes=59)

    ApprovalRequest.objects.filter(pk=request.pk).update(due_at=timezone.now())
    approvals_expire()
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.EXPIRED
    assert audit_verbs(request) == ["approval.requested", "approval.escalated", "approval.expired"]


def test_an_escalated_request_can_be_decided_by_the_group(payer: Any, world: Any) -> None:
    request_group = Group.objects.create(name="Claims leads")
    lead = type(world.outsider).objects.create_user("lena")
    lead.groups.add(request_group)
    run = run_start(agent=payer, input={"claim_id": "c3", "amount": 10})
    execute_run(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        escalation_level=1, escalated_to="Claims leads"
    )
    assert decide(request, lead).status == "approved"


@pytest.mark.django_db(transaction=True)
def test_two_people_deciding_at_once_get_one_winner_and_one_clear_refusal(
    held: Any,
    world: Any,
) -> None:
    request = held()
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def attempt(user: Any, verdict: str) -> None:
        start.wait()
        try:
            approval_decide(
                request_id=request.pk,
                user=user,
                verdict=verdict,
                seen_args_hash=request.args_hash,
                comment="not this one",
            )
            outcomes[user.username] = "won"
        except AlreadyDecided as exc:
            outcomes[user.username] = str(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=attempt, args=(world.supervisor, "approve")),
        threading.Thread(target=attempt, args=(world.second_supervisor, "reject")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values())[1] == "won"
    loser = next(v for v in outcomes.values() if v != "won")
    assert loser.startswith("already decided: ")
    assert ApprovalDecision.objects.filter(request=request).count() == 1
