"""What a decision costs in queries on Postgres (STYLE.md: the hot paths assert their
query counts, so a regression fails here instead of slowing bench/approvals.py).

A new query in the decision fails this test with the captured SQL: add it on purpose,
then update the count and the list of what the queries are."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agents.models import Action, Run
from approvals.services import approval_decide

pytestmark = pytest.mark.django_db


def test_an_approval_that_releases_the_run_costs_ten_queries(
    held: Any, world: Any, django_assert_num_queries: Any
) -> None:
    request = held(amount=500, claim="c1")
    # The same decision once before, on another request of the same agent: it fills the
    # process-wide caches a decision reads (content types, the version's parsed policy,
    # the person's compiled decide check), so the count below does not depend on which
    # tests ran before.
    warm = held(amount=500, claim="c0")
    approval_decide(
        request_id=warm.pk, user=world.supervisor, verdict="approve", seen_args_hash=warm.args_hash
    )
    # A person as a request loads them: no permission cached on the instance yet.
    supervisor = get_user_model().objects.get(pk=world.supervisor.pk)

    with django_assert_num_queries(10):
        # The test runs in a transaction: the service's own shows as SAVEPOINT ... RELEASE.
        #  1. SAVEPOINT
        #  2. _lock_request, one round trip: the run, then the action (each found through
        #     the request), then the request, FOR NO KEY UPDATE (store.LOCK_ORDER); then the
        #     decide rule (approvals.selectors.decide_check: the person's grants, groups and
        #     model-wide permissions read in the statement) with how many approvals the
        #     arguments have already
        #  3. the request with its agent, team, run and version (locked already)
        #  4. INSERT the decision
        #  5. baton_audit_append: approval.approved
        #  6-8. _release: UPDATE the request, the action, the run (re-queued)
        #  9. baton_audit_append: run.queued (the run's agent is the request's, loaded)
        # 10. RELEASE SAVEPOINT
        # Not read again afterwards: the returned request carries what was written.
        decided = approval_decide(
            request_id=request.pk,
            user=supervisor,
            verdict="approve",
            seen_args_hash=request.args_hash,
        )
    assert decided.status == "approved"
    decided_at = decided.decided_at
    decided.refresh_from_db()
    assert (decided.status, decided.decided_at) == ("approved", decided_at)
    run = Run.objects.get(pk=request.run_id)
    assert (run.status, run.wait_reason) == (Run.Status.QUEUED, "")
    assert Action.objects.get(pk=request.action_id).status == Action.Status.APPROVED


def test_the_approved_step_starts_five_queries_into_the_resume(held: Any, world: Any) -> None:
    """From a worker taking the approved run to the tool starting (its first query is the
    payment's read): the claim, the trail's event, the switches, the journal, the step."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from agents.runtime import execute_run

    request = held(amount=500, claim="c1")
    approval_decide(
        request_id=request.pk,
        user=world.supervisor,
        verdict="approve",
        seen_args_hash=request.args_hash,
    )
    with CaptureQueriesContext(connection) as captured:
        execute_run(request.run_id)
    sql = [q["sql"] for q in captured.captured_queries]
    tool_starts = next(i for i, s in enumerate(sql) if "agents_payment" in s)
    before = [s for s in sql[:tool_starts] if not s.startswith(("SAVEPOINT", "RELEASE"))]
    # 1. the claim: UPDATE ... RETURNING the run with its agent, team and version (one
    #    statement, agents.runtime._claim_returning)
    # 2. baton_audit_append: run.started
    # 3. the kill switches covering the agent
    # 4. the journal
    # 5. baton_step_restart: admit, the step `started` again, action.allowed
    assert len(before) == 5, "\n\n".join(before)
    assert Run.objects.get(pk=request.run_id).status == Run.Status.SUCCEEDED


def warm_caches(held: Any, client: Any) -> None:
    """One decision first, as a console that has served any: the process's caches (the
    content types the permission checks name, the policy's compiled rules) are then warm,
    whatever ran in this process before — the counts below are a decision's own, not a
    cold process's first."""
    first = held(amount=500, claim="c0")
    answer = client.post(
        f"/approvals/{first.pk}/decide",
        {"verdict": "approve", "args_hash": first.args_hash},
        HTTP_HX_REQUEST="true",
    )
    assert answer.status_code == 200


def test_the_decide_post_decides_before_it_reads_anything_for_its_answer(
    held: Any, world: Any, client: Any
) -> None:
    """The run is released by the POST's first statements after the session and the
    person: nothing drawn for the answer (the request as the person sees it, the banners,
    the permission checks of the page) comes before the decision's transaction."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(world.supervisor)
    warm_caches(held, client)
    request = held(amount=500, claim="c1")
    with CaptureQueriesContext(connection) as captured:
        answer = client.post(
            f"/approvals/{request.pk}/decide",
            {"verdict": "approve", "args_hash": request.args_hash},
            HTTP_HX_REQUEST="true",
        )
    assert answer.status_code == 200
    sql = [q["sql"] for q in captured.captured_queries]
    locks = next(i for i, s in enumerate(sql) if "FOR NO KEY UPDATE" in s)
    before = [s for s in sql[:locks] if not s.startswith(("SAVEPOINT", "RELEASE"))]
    # 1. the session, 2. the person
    assert len(before) == 2, "\n\n".join(before)
    assert Run.objects.get(pk=request.run_id).status == Run.Status.QUEUED


def test_the_decide_post_answers_with_the_panel_in_two_queries_after_the_decision(
    held: Any, world: Any, client: Any
) -> None:
    """After the decision's transaction the htmx answer is the decision panel only, drawn
    from the request the decision returned: its decisions and the page's live position.
    Not read again: the request, the person's view of it, the run's steps, the tool's
    schema (no form on a decided request), the kill switch banners (not in the panel)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(world.supervisor)
    warm_caches(held, client)
    request = held(amount=500, claim="c1")
    with CaptureQueriesContext(connection) as captured:
        answer = client.post(
            f"/approvals/{request.pk}/decide",
            {"verdict": "approve", "args_hash": request.args_hash},
            HTTP_HX_REQUEST="true",
        )
    assert answer.status_code == 200
    assert b'data-testid="request-status">approved<' in answer.content
    sql = [q["sql"] for q in captured.captured_queries]
    released = max(i for i, s in enumerate(sql) if "baton_audit_append" in s)
    after = [s for s in sql[released + 1 :] if not s.startswith(("SAVEPOINT", "RELEASE"))]
    # 1. the request's decisions with who made them, 2. the trail's last seq (live_seq)
    assert len(after) == 2, "\n\n".join(after)
    assert "approvals_approvaldecision" in after[0] and "audit_auditevent" in after[1]
    # The whole POST: the session, the person, the decision's ten, the answer's two.
    assert len(sql) == 14, "\n\n".join(sql)
