"""Edited arguments the audit trail cannot store are refused with a clear 400 before any
decision is recorded (audit.jsonsafe): the edit form turns `nan`, `inf` and `1e400` into
numbers Python accepts but the trail cannot hold."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agents.services import ServiceError
from approvals.models import ApprovalDecision, ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def decide_edited(user: Any, request: ApprovalRequest, **fields: str) -> Any:
    client = Client()
    client.force_login(user)
    data = {"verdict": "approve", "args_hash": request.args_hash, "edit": "1", **fields}
    return client.post(f"/approvals/{request.pk}/decide", data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arg:claim_id": "c\x001", "arg:amount": "500"}, "NUL character"),
        ({"arg:claim_id": "c1", "arg:amount": "nan"}, "numbers must be finite"),
        ({"arg:claim_id": "c1", "arg:amount": "inf"}, "numbers must be finite"),
        ({"arg:claim_id": "c1", "arg:amount": "1e400"}, "numbers must be finite"),
        ({"arg:claim_id": "c1", "arg:amount": "9007199254740993"}, "2**53 - 1"),
    ],
    ids=["nul", "nan", "inf", "beyond-double", "beyond-2-53"],
)
def test_an_edit_the_trail_cannot_store_is_a_400_and_decides_nothing(
    held: Any, world: Any, fields: dict[str, str], message: str
) -> None:
    request = held()
    before = AuditEvent.objects.count()
    response = decide_edited(world.supervisor, request, **fields)
    assert response.status_code == 400
    assert message in response.content.decode()
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.PENDING
    assert not ApprovalDecision.objects.filter(request=request).exists()
    assert AuditEvent.objects.count() == before


def test_a_comment_the_trail_cannot_store_is_refused_by_the_service(held: Any, world: Any) -> None:
    request = held()
    before = AuditEvent.objects.count()
    with pytest.raises(ServiceError, match="comment: text may not contain a lone surrogate"):
        approval_decide(
            request_id=request.pk,
            user=world.supervisor,
            verdict="reject",
            seen_args_hash=request.args_hash,
            comment="no \ud800",
        )
    assert not ApprovalDecision.objects.filter(request=request).exists()
    assert AuditEvent.objects.count() == before
