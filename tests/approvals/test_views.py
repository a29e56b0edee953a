"""The queue and request screens over HTTP: who sees, who decides, and bad input."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape

from approvals.models import ApprovalDecision, ApprovalRequest
from approvals.selectors import AUTHOR_APPROVAL, NOT_YOURS, SELF_APPROVAL
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def client_for(user: Any, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def post_decision(client: Client, request: ApprovalRequest, **data: Any) -> Any:
    body = {"verdict": "approve", "args_hash": request.args_hash, **data}
    return client.post(f"/approvals/{request.pk}/decide", body)


def nothing_changed(request: ApprovalRequest, events_before: int) -> None:
    request.refresh_from_db()
    assert request.status == "pending"
    assert not ApprovalDecision.objects.filter(request=request).exists()
    assert AuditEvent.objects.count() == events_before


def test_the_queue_shows_what_waits_with_its_context(held: Any, world: Any) -> None:
    request = held(amount=4200)
    page = client_for(world.supervisor).get("/approvals/").content.decode()
    assert f'id="request-{request.pk}"' in page and "test.pay" in page and "4,200.00" in page
    detail = client_for(world.supervisor).get(f"/approvals/{request.pk}/").content.decode()
    for expected in [
        "Payer",
        "v1",
        "a person checks payouts",
        "4,200.00",
        "claim_id",
        "0 of 1 approval",
        "1 still needed",
        "left",
        'id="approve"',
    ]:
        assert expected in detail, expected


def test_approving_from_the_request_page_releases_the_action(held: Any, world: Any) -> None:
    request = held()
    response = post_decision(client_for(world.supervisor), request)
    assert response.status_code == 302 and response["Location"] == "/approvals/"
    request.refresh_from_db()
    assert request.status == "approved"


def test_an_htmx_decision_gets_the_updated_panel_and_a_refresh_signal(
    held: Any, world: Any
) -> None:
    request = held()
    response = client_for(world.supervisor).post(
        f"/approvals/{request.pk}/decide",
        {"verdict": "approve", "args_hash": request.args_hash},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    # django-htmx writes the trigger as JSON: the event's name, with no detail.
    assert json.loads(response["HX-Trigger"]) == {"approvals-changed": {}}
    body = response.content.decode()
    assert 'id="panel"' in body and "<html" not in body and "approved" in body


def test_compliance_reads_the_queue_but_may_not_decide(held: Any, world: Any) -> None:
    request = held()
    client = client_for(world.compliance)
    assert f"request-{request.pk}" in client.get("/approvals/").content.decode()
    page = client.get(f"/approvals/{request.pk}/").content.decode()
    assert escape(f"You can see this request but not decide it: {NOT_YOURS}.") in page
    assert 'id="approve"' not in page
    before = AuditEvent.objects.count()
    assert post_decision(client, request).status_code == 403
    nothing_changed(request, before)


def test_a_supervisor_of_another_team_neither_sees_nor_decides(held: Any, world: Any) -> None:
    request = held()
    client = client_for(world.support_supervisor)
    assert f"request-{request.pk}" not in client.get("/approvals/").content.decode()
    assert client.get(f"/approvals/{request.pk}/").status_code == 404
    before = AuditEvent.objects.count()
    assert post_decision(client, request).status_code == 404
    nothing_changed(request, before)


def test_unknown_request_is_404(world: Any) -> None:
    client = client_for(world.supervisor)
    assert client.get("/approvals/999999/").status_code == 404
    assert client.post("/approvals/999999/decide", {"verdict": "approve"}).status_code == 404


def test_deciding_a_decided_request_is_409_with_who_decided(held: Any, world: Any) -> None:
    request = held()
    post_decision(client_for(world.supervisor), request)
    response = post_decision(
        client_for(world.second_supervisor), request, headers={"HX-Request": "true"}
    )
    assert response.status_code == 409
    assert "already decided: approved by sam" in response.content.decode()
    assert ApprovalDecision.objects.filter(request=request).count() == 1


def test_a_stale_decision_is_409_and_changes_nothing(held: Any, world: Any) -> None:
    request = held()
    before = AuditEvent.objects.count()
    response = post_decision(client_for(world.supervisor), request, args_hash="a" * 64)
    assert (
        response.status_code == 409 and "changed since you opened it" in response.content.decode()
    )
    nothing_changed(request, before)


def test_a_rejection_without_a_reason_is_a_form_error(held: Any, world: Any) -> None:
    request = held()
    before = AuditEvent.objects.count()
    response = post_decision(client_for(world.supervisor), request, verdict="reject")
    assert response.status_code == 400
    assert "Write the reason: it goes back to the agent." in response.content.decode()
    nothing_changed(request, before)


def test_malformed_edited_arguments_name_the_field(held: Any, world: Any) -> None:
    request = held()
    before = AuditEvent.objects.count()
    response = post_decision(
        client_for(world.supervisor),
        request,
        edit="1",
        **{"arg:claim_id": "c1", "arg:amount": "twelve"},
    )
    assert response.status_code == 400
    assert "amount: &#x27;twelve&#x27; is not of type &#x27;number&#x27;" in (
        response.content.decode()
    )
    nothing_changed(request, before)


def test_edited_arguments_from_the_form_are_typed_and_approved(held: Any, world: Any) -> None:
    request = held(amount=900)
    response = post_decision(
        client_for(world.supervisor),
        request,
        edit="1",
        **{"arg:claim_id": "c1", "arg:amount": "850.50"},
    )
    assert response.status_code == 302
    request.refresh_from_db()
    assert request.args == {"claim_id": "c1", "amount": 850.5}


@pytest.mark.parametrize("data", [{"verdict": "maybe"}, {"args_hash": "not-a-hash"}, {}])
def test_a_malformed_decision_is_a_400(held: Any, world: Any, data: dict[str, str]) -> None:
    request = held()
    before = AuditEvent.objects.count()
    response = client_for(world.supervisor).post(f"/approvals/{request.pk}/decide", data)
    assert response.status_code == 400
    nothing_changed(request, before)


def test_a_decision_without_a_csrf_token_is_refused(held: Any, world: Any) -> None:
    request = held()
    before = AuditEvent.objects.count()
    assert post_decision(client_for(world.supervisor, csrf=True), request).status_code == 403
    nothing_changed(request, before)


def test_batch_decisions_are_each_audited_and_refusals_reported(held: Any, world: Any) -> None:
    first, second, third = held(claim="a"), held(claim="b"), held(claim="c")
    client = client_for(world.supervisor)
    response = client.post(
        "/approvals/batch",
        {
            "verdict": "approve",
            "selected": [
                f"{first.pk}:{first.args_hash}",
                f"{second.pk}:{second.args_hash}",
                f"{third.pk}:{'0' * 64}",
                "junk",
            ],
        },
        follow=True,
    )
    page = response.content.decode()
    assert "2 request(s): approve recorded." in page
    assert "changed since you opened it" in page and "not a request" in page
    assert ApprovalRequest.objects.filter(status="approved").count() == 2
    assert AuditEvent.objects.filter(verb="approval.approved").count() == 2


def test_batch_rejection_needs_a_reason(held: Any, world: Any) -> None:
    request = held()
    response = client_for(world.supervisor).post(
        "/approvals/batch",
        {"verdict": "reject", "selected": [f"{request.pk}:{request.args_hash}"]},
        follow=True,
    )
    assert "a rejection needs a reason" in response.content.decode()
    request.refresh_from_db()
    assert request.status == "pending"


def test_the_queue_filters_sorts_and_keeps_history(held: Any, world: Any) -> None:
    low, high = held(amount=100, claim="low"), held(amount=20000, claim="high")
    client = client_for(world.supervisor)
    assert f"request-{low.pk}" in client.get("/approvals/?agent=payer").content.decode()
    assert f"request-{low.pk}" not in client.get("/approvals/?agent=other").content.decode()
    assert f"request-{low.pk}" not in client.get("/approvals/?risk=low").content.decode()
    post_decision(client, low, verdict="reject", comment="no")
    history = client.get("/approvals/?tab=history").content.decode()
    assert "rejected" in history and "sam (reject)" in history
    assert f"request-{high.pk}" in client.get("/approvals/?sort=due").content.decode()


def test_malformed_filters_give_a_message_not_a_500(held: Any, world: Any) -> None:
    response = client_for(world.supervisor).get("/approvals/?agent=%3Cscript%3E&risk=huge")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<script>" not in body and "risk:" in body and "agent:" in body


def test_the_badge_counts_what_the_person_may_decide(held: Any, world: Any) -> None:
    held(claim="x")
    held(claim="y")
    assert ">2<" in client_for(world.supervisor).get("/approvals/badge").content.decode()
    assert "badge" not in client_for(world.compliance).get("/approvals/badge").content.decode()


DECIDE_CONTROLS = (
    'name="selected"',
    "Approve selected",
    "Reject selected",
    'class="small">Approve',
)


def test_compliance_and_agent_admins_are_offered_no_decide_controls(held: Any, world: Any) -> None:
    request = held()
    # Compliance may not decide at all; the admin authored the policy in force.
    for person, refused in ((world.compliance, 403), (world.admin, 400)):
        client = client_for(person)
        queue = client.get("/approvals/").content.decode()
        assert f'id="request-{request.pk}"' in queue, person.username
        for control in (*DECIDE_CONTROLS, f"/approvals/{request.pk}/decide"):
            assert control not in queue, (person.username, control)
        page = client.get(f"/approvals/{request.pk}/").content.decode()
        assert f"/approvals/{request.pk}/decide" not in page, person.username
        before = AuditEvent.objects.count()
        response = post_decision(client, request)
        assert response.status_code == refused, "the server refuses"
        if refused == 400:
            assert AUTHOR_APPROVAL in response.content.decode()
        assert client.post(f"/approvals/{request.pk}/decide", {}).status_code == refused
        nothing_changed(request, before)


def test_the_launcher_is_offered_no_form_the_server_would_refuse(held: Any, world: Any) -> None:
    request = held(user=world.supervisor)
    client = client_for(world.supervisor)
    queue = client.get("/approvals/").content.decode()
    assert f'id="request-{request.pk}"' in queue
    for control in (*DECIDE_CONTROLS, f"/approvals/{request.pk}/decide"):
        assert control not in queue, control
    page = client.get(f"/approvals/{request.pk}/").content.decode()
    assert f"/approvals/{request.pk}/decide" not in page
    assert escape(f"You can see this request but not decide it: {SELF_APPROVAL}.") in page
    before = AuditEvent.objects.count()
    refused = post_decision(client, request)
    assert refused.status_code == 400 and SELF_APPROVAL in refused.content.decode()
    nothing_changed(request, before)
    assert any(
        c in client_for(world.second_supervisor).get("/approvals/").content.decode()
        for c in DECIDE_CONTROLS
    )


def page_rows(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr id="request-(\d+)"', html)]


def next_href(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return found.group(1).replace("&amp;", "&") if found else None


def test_the_queue_paginates_with_real_links_that_keep_the_filters(
    held: Any, world: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr("approvals.views.QUEUE_PAGE_SIZE", 2)
    made = {held(claim=f"p{i}").pk for i in range(5)}
    client = client_for(world.supervisor)
    seen: list[int] = []
    url: str | None = "/approvals/?agent=payer&sort=due"
    pages = 0
    while url is not None:
        html = client.get(url if url.startswith("/") else f"/approvals/{url}").content.decode()
        rows = page_rows(html)
        assert 1 <= len(rows) <= 2
        seen += rows
        pages += 1
        url = next_href(html)
        assert url is None or ("agent=payer" in url and "sort=due" in url)
    assert pages == 3 and len(seen) == 5 and set(seen) == made
    assert seen == sorted(seen), "least time left first, across pages"
    refresh = client.get("/approvals/?page=2", headers={"HX-Request": "true"}).content.decode()
    assert len(page_rows(refresh)) == 2 and "page 2 of 3" in refresh


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("agent=nobody", "agent: No agent named nobody that you can see."),
        ("team=support", "team: No team named support that you can see."),
        ("team=nowhere", "team: No team named nowhere that you can see."),
        ("page=0", "page: A page is a positive whole number, like 2."),
    ],
)
def test_a_filter_naming_nothing_the_person_sees_says_so(
    held: Any, world: Any, query: str, message: str
) -> None:
    held()
    client = client_for(world.supervisor)
    for headers in ({}, {"HX-Request": "true"}):
        html = client.get(f"/approvals/?{query}", headers=headers).content.decode()
        assert escape(message) in html
        assert page_rows(html) == [], "a wrong filter shows nothing rather than everything"


def test_an_agents_runs_paginate_by_keyset_with_real_links(
    world: Any, make_agent: Any, monkeypatch: Any
) -> None:
    from agents.services import run_start
    from tests.conftest import ALLOW_ALL_TESTS

    monkeypatch.setattr("agents.selectors.RUNS_PAGE_SIZE", 2)
    agent = make_agent("pager", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    made = [run_start(agent=agent, input={"label": f"r{i}"}).pk for i in range(5)]
    client = client_for(world.supervisor)
    seen: list[int] = []
    url: str | None = "/agents/pager/"
    while url is not None:
        html = client.get(url if url.startswith("/") else f"/agents/pager/{url}").content.decode()
        seen += [int(pk) for pk in re.findall(r'<a href="/runs/(\d+)/">', html)]
        url = next_href(html)
    assert seen == sorted(made, reverse=True)
    broken = client.get("/agents/pager/?before=abc")
    assert broken.status_code == 400
    assert escape("This page link is broken") in broken.content.decode()


def test_the_queue_counts_only_approvals_of_the_current_arguments(held: Any, world: Any) -> None:
    from approvals.services import approval_decide

    request = held(amount=20000)
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    row = re.compile(rf'id="request-{request.pk}".*?<td>(\d) / (\d)</td>', re.S)
    page = client_for(world.compliance).get("/approvals/").content.decode()
    assert row.search(page).groups() == ("1", "2")  # type: ignore[union-attr]
    approval_decide(
        request_id=request.pk,
        user=world.second_supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
        edited_args={"claim_id": "c1", "amount": 30000},
    )
    page = client_for(world.compliance).get("/approvals/").content.decode()
    assert row.search(page).groups() == ("1", "2"), "sam approved 20,000, not 30,000"  # type: ignore[union-attr]


def test_the_queue_costs_the_same_queries_for_two_rows_or_six(held: Any, world: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(world.supervisor)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/approvals/").status_code == 200
        return len(captured)

    held(claim="a"), held(claim="b")
    queries()  # warms the process-wide caches (content types, permissions)
    two = queries()
    for claim in "cdef":
        held(claim=claim)
    assert queries() == two
