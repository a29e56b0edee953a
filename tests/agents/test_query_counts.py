"""What a governed tool step costs in queries on Postgres (STYLE.md: the hot paths assert
their query counts, so a regression fails here instead of slowing bench/gateway.py).

A new query in the step fails this test with the captured SQL: add it on purpose, then
update the count and the list of what the queries are."""

from __future__ import annotations

from typing import Any

import pytest

from agents.models import Action
from tests.conftest import ALLOW_ALL_TESTS
from tests.support.agents import executions
from tests.support.gateway import claimed

pytestmark = pytest.mark.django_db


def test_an_allowed_step_costs_two_queries(
    make_agent: Any, settings: Any, django_assert_num_queries: Any
) -> None:
    # A lease far longer than the test: no renewal falls inside the measured step.
    settings.BATON_RUN_LEASE_SECONDS = 3600
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    # The policy is parsed (and cached per version) when the context is made, and the tool
    # and its schema come from the in-process registry: no cache the step reads from the
    # database, so the count does not depend on what ran before.
    ctx = claimed(agent, {"label": "q", "steps": 1})
    try:
        with django_assert_num_queries(2):
            # 1. SELECT * FROM baton_step_start(...): admit the step (the run's cancel flag
            #    and lease, the kill switches under their shared advisory locks), journal
            #    the action as `started`, append `action.allowed` to the trail.
            # 2. SELECT baton_step_finish(...): the outcome, fenced by the attempt, and its
            #    `action.succeeded` event.
            result = ctx.tool("test.count", label="q", n=0)
    finally:
        ctx.close()
    assert result == {"label": "q", "executions": 1} and executions("q") == 1
    action = Action.objects.get(run=ctx.run)
    assert (action.status, action.decision) == (Action.Status.SUCCEEDED, Action.Decision.ALLOW)
