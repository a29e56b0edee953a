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


def test_an_approval_that_releases_the_run_costs_fifteen_queries(
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

    with django_assert_num_queries(15):
        # The test runs in a transaction: the service's own shows as SAVEPOINT ... RELEASE.
        #  1. SAVEPOINT
        #  2-4. _lock_request: the run, then the action (each found through the request in
        #     the same statement), FOR NO KEY UPDATE (store.LOCK_ORDER); the request row
        #     itself with its agent, team, run and version
        #  5. decidable_by: the person's group names (approver groups)
        #  6-7. agents_for_user: the person's global permissions (user's, then groups'; a
        #     request that checked a permission before has them cached on the person)
        #  8. _decider_check: the request among those this person may decide, with how many
        #     approvals its arguments have already (one query)
        #  9. INSERT the decision
        # 10. baton_audit_append: approval.approved
        # 11-13. _release: UPDATE the request, the action, the run (re-queued)
        # 14. baton_audit_append: run.queued (the run's agent is the request's, loaded)
        # 15. RELEASE SAVEPOINT
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
