"""One rule for who may decide a request (issue 9, item 15): the queue's controls, the
badge, the request page, the decide check and the e-mail recipients agree with each other
and with what the rule says, person by person."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.test import Client

from agents import roles
from agents.services import ServiceError
from approvals.models import ApprovalRequest
from approvals.notifications import recipients
from approvals.services import approval_decide

pytestmark = pytest.mark.django_db


def decide_succeeds(user: Any, request: ApprovalRequest) -> bool:
    """Whether the service takes the person's approval; rolled back either way."""
    request.refresh_from_db()
    # A savepoint, not an outer atomic block: approval_decide is durable, and only the
    # test's own transaction may enclose it.
    undo = transaction.savepoint()
    try:
        approval_decide(
            request_id=request.pk,
            user=user,
            verdict="approve",
            seen_args_hash=request.args_hash,
        )
    except (ServiceError, PermissionDenied, Http404):
        return False
    finally:
        transaction.savepoint_rollback(undo)
    return True


def badge(client: Client) -> int:
    html = client.get("/approvals/badge").content.decode()
    found = re.search(r">(\d+)</span>", html)
    return int(found.group(1)) if found else 0


def queue_controls(client: Client) -> set[int]:
    html = client.get("/approvals/").content.decode()
    boxes = {int(pk) for pk in re.findall(r'name="selected" value="(\d+):', html)}
    buttons = {int(pk) for pk in re.findall(r'<button form="approve-(\d+)"', html)}
    assert boxes == buttons, "a row offers a box and no button, or the other way round"
    return boxes


def page_offers_decision(client: Client, request: ApprovalRequest) -> bool:
    response = client.get(f"/approvals/{request.pk}/")
    return response.status_code == 200 and 'id="approve"' in response.content.decode()


def test_queue_badge_page_decide_check_and_recipients_agree(
    hold: Any, world: Any, treasurer: Any
) -> None:
    people = {
        "sam": world.supervisor,
        "sol": world.second_supervisor,
        "tia": treasurer,
        "sue": world.support_supervisor,
        "cora": world.compliance,
        "ada": world.admin,
        "otto": world.outsider,
    }
    lena = type(world.outsider).objects.create_user("lena")
    lena.groups.add(Group.objects.create(name="Claims leads"))
    people["lena"] = lena
    # The policy's author supervises Claims too: four-eyes still keeps her out.
    roles.role_grant(user=world.admin, role=roles.SUPERVISOR, target=world.claims)
    for name, person in people.items():
        person.email = f"{name}@baton.example"
        person.save(update_fields=["email"])

    launched_by_sam = hold(5000, user=world.supervisor, claim="a")
    approved_by_sol = hold(20000, claim="b")
    approval_decide(
        request_id=approved_by_sol.pk,
        user=world.second_supervisor,
        verdict="approve",
        seen_args_hash=approved_by_sol.args_hash,
    )
    treasury_only = hold(70000, claim="c")
    escalated = hold(5000, claim="d")
    ApprovalRequest.objects.filter(pk=escalated.pk).update(
        escalation_level=1, escalated_to="Claims leads"
    )
    decided = hold(5000, claim="e")
    approval_decide(
        request_id=decided.pk, user=treasurer, verdict="approve", seen_args_hash=decided.args_hash
    )
    requests = [launched_by_sam, approved_by_sol, treasury_only, escalated, decided]

    rule = {
        "sam": {approved_by_sol, escalated},
        "sol": {launched_by_sam, escalated},
        "tia": {launched_by_sam, approved_by_sol, treasury_only, escalated},
        "lena": {escalated},
        "sue": set(),
        "cora": set(),
        "ada": set(),
        "otto": set(),
    }
    for name, person in people.items():
        expected = {r.pk for r in rule[name]}
        client = Client()
        client.force_login(person)
        assert badge(client) == len(expected), name
        assert queue_controls(client) == expected, name
        for request in requests:
            assert page_offers_decision(client, request) == (request.pk in expected), (
                name,
                request.pk,
            )
            assert decide_succeeds(person, request) == (request.pk in expected), (
                name,
                request.pk,
            )
    for request in requests:
        told = {person.username for person in recipients(request)}
        assert told == {name for name in people if request in rule[name]}, request.pk


def test_the_decide_check_compiled_once_follows_grants_groups_and_permissions(
    held: Any, world: Any
) -> None:
    """The decide check is compiled once per person (approvals.selectors.decide_check):
    a grant revoked, a group joined or a model-wide permission given after that is
    still judged as it stands when the check runs."""
    from django.contrib.auth.models import Permission

    from approvals.selectors import decide_check

    first, second = held(amount=500, claim="c1"), held(amount=500, claim="c2")
    sam, olly = world.supervisor, world.outsider
    assert decide_check(sam, first.pk) == 0
    assert decide_check(olly, first.pk) is None  # compiled for olly: nothing to decide

    roles.role_revoke(user=sam, role=roles.SUPERVISOR, target=world.claims)
    assert decide_check(sam, first.pk) is None
    assert not decide_succeeds(sam, second)

    supervise = Permission.objects.get(content_type__app_label="agents", codename="supervise_agent")
    supervisors = Group.objects.create(name="Model-wide supervisors")
    supervisors.permissions.add(supervise)
    olly.groups.add(supervisors)
    assert decide_check(olly, first.pk) == 0
    assert decide_succeeds(olly, second)

    olly.groups.remove(supervisors)
    olly.user_permissions.add(supervise)
    assert decide_check(olly, first.pk) == 0
    olly.user_permissions.remove(supervise)
    assert decide_check(olly, first.pk) is None
