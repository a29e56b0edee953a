"""The integrity badge, and checkpoints and verification on demand, over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client

from audit.models import AuditEvent, Checkpoint, Verification
from audit.services import SYSTEM, audit_record
from audit.verbs import Verb
from tests.conftest import chained, wait_for

pytestmark = pytest.mark.django_db


def client_for(user: Any, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def record(n: int) -> int:
    """Append n events; returns the head's seq (the people of `world` have some too)."""
    seq = 0
    for i in range(n):
        with transaction.atomic():
            seq = chained(
                audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=i)
            )
    return seq


def badge(user: Any) -> str:
    return client_for(user).get("/audit/integrity").content.decode()


def test_the_badge_says_not_verified_then_verified_then_where_it_broke(world: Any) -> None:
    head = record(4)
    assert "Not verified yet" in badge(world.compliance)
    call_command("audit_checkpoint")
    call_command("audit_verify")
    page = client_for(world.compliance).get("/audit/").content.decode()
    assert f"Chain verified ✓ up to #{head}" in page
    assert f"last checkpoint #{head}" in page
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "UPDATE audit_auditevent SET body = replace(body, 'run', 'nur') WHERE seq = %s",
            [head - 1],
        )
        cursor.execute("SET LOCAL session_replication_role = origin")
    with pytest.raises(CommandError):
        call_command("audit_verify")
    assert f"Chain BROKEN at #{head - 1}" in badge(world.compliance)


def test_compliance_signs_a_checkpoint_on_demand_with_csrf(world: Any) -> None:
    head = record(2)
    client = client_for(world.compliance, csrf=True)
    assert client.post("/audit/checkpoint").status_code == 403  # no CSRF token
    assert not Checkpoint.objects.exists()
    page = client.get("/audit/")
    token = page.cookies["csrftoken"].value
    response = client.post("/audit/checkpoint", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 302
    assert Checkpoint.objects.get().seq == head


@pytest.mark.django_db(transaction=True)
def test_verification_on_demand_runs_in_a_worker_and_records_its_outcome(
    world: Any, worker: Any
) -> None:
    head = record(3)
    response = client_for(world.compliance).post("/audit/verify")
    assert response.status_code == 302
    done = wait_for(lambda: Verification.objects.first(), message="the verification to run")
    assert done.ok and done.up_to_seq == head
    # With a signed outcome to go on from, on demand is still the whole trail.
    head = record(2)
    assert client_for(world.compliance).post("/audit/verify").status_code == 302
    again = wait_for(
        lambda: Verification.objects.exclude(pk=done.pk).first(),
        message="the second verification to run",
    )
    assert again.ok and (again.up_to_seq, again.from_seq) == (head, None)


def test_supervisors_and_outsiders_may_not_sign_or_start_verification(world: Any) -> None:
    record(1)
    for person in (world.supervisor, world.outsider):
        client = client_for(person)
        assert client.post("/audit/checkpoint").status_code == 403
        assert client.post("/audit/verify").status_code == 403
    # Everyone signed in reads the trail (an outsider: the global switches) and its badge.
    assert client_for(world.outsider).get("/audit/integrity").status_code == 200
    assert Client().get("/audit/integrity").status_code == 302
    assert not Checkpoint.objects.exists() and not Verification.objects.exists()
    assert client_for(world.compliance).get("/audit/checkpoint").status_code == 405


def test_the_public_key_and_verifier_are_downloadable(world: Any) -> None:
    client = client_for(world.compliance)
    key = client.get("/audit/public-key.pem")
    assert key.status_code == 200 and key.content.startswith(b"-----BEGIN PUBLIC KEY-----")
    verifier = client.get("/audit/verifier.py")
    assert b"def verify(" in verifier.content and b"django" not in verifier.content.lower()
    assert Client().get("/audit/public-key.pem").status_code == 302  # sign in first
    assert not AuditEvent.objects.filter(verb=Verb.AUDIT_EXPORTED).exists()
