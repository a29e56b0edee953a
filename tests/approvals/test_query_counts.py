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


def test_an_approval_that_releases_the_run_costs_nineteen_queries(
    held: Any, world: Any, django_assert_num_queries: Any
) -> None:
    request = held(amount=500, claim="c1")
    # The same decision once before, on another request of the same agent: it fills the
    # process-wide caches a decision reads (content types, the version's parsed policy),
    # so the count below does not depend on which tests ran before.
    warm = held(amount=500, claim="c0")
    approval_decide(
        request_id=warm.pk, user=world.supervisor, verdict="approve", seen_args_hash=warm.args_hash
    )
    # A person as a request loads them: no permission cached on the instance yet.
    supervisor = get_user_model().objects.get(pk=world.supervisor.pk)

    with django_assert_num_queries(19):
        # The test runs in a transaction: the service's own shows as SAVEPOINT ... RELEASE.
        #  1. SAVEPOINT
        #  2-5. _lock_request: the request's run and action ids; the run, then the action,
        #     FOR NO KEY UPDATE (store.LOCK_ORDER); the request row itself
        #  6. may_decide: the person's group names (approver groups)
        #  7-8. agents_for_user: the person's global permissions (user's, then groups')
        #  9. may_decide: the request among those this person may decide (EXISTS)
        # 10. INSERT the decision
        # 11. COUNT the approvals of these arguments
        # 12. baton_audit_append: approval.approved
        # 13-15. _release: UPDATE the request, the action, the run (re-queued)
        # 16. the run's agent, loaded for audit_run (not selected with the request)
        # 17. baton_audit_append: run.queued
        # 18. RELEASE SAVEPOINT
        # 19. the request read again for the caller (refresh_from_db)
        decided = approval_decide(
            request_id=request.pk,
            user=supervisor,
            verdict="approve",
            seen_args_hash=request.args_hash,
        )
    assert decided.status == "approved"
    run = Run.objects.get(pk=request.run_id)
    assert (run.status, run.wait_reason) == (Run.Status.QUEUED, "")
    assert Action.objects.get(pk=request.action_id).status == Action.Status.APPROVED
