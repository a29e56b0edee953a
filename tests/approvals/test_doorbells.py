"""The live doorbells a decision rings once it commits, through the real Redis channel
layer (console/live.py): the request's agent and team hear of the decision and of the
run queued again."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.services import approval_decide
from tests.support.doorbells import EVERYTHING, Doorbells, agent_group, team_group

pytestmark = pytest.mark.django_db


def test_an_approval_rings_the_agent_and_its_team(
    held: Any, world: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    request = held(amount=500)
    agent = request.agent
    expected = {EVERYTHING, agent_group(agent.pk), team_group(agent.team_id)}
    doorbells.listen(*expected)
    with django_capture_on_commit_callbacks(execute=True):
        approval_decide(
            request_id=request.pk,
            user=world.supervisor,
            verdict="approve",
            seen_args_hash=request.args_hash,
        )
    # approval.approved, then run.queued: both events of the agent and its team.
    assert doorbells.rings == [frozenset(expected)] * 2
    assert doorbells.heard() == expected


def test_a_rejection_rings_the_agent_and_its_team(
    held: Any, world: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    request = held(amount=500)
    agent = request.agent
    expected = {EVERYTHING, agent_group(agent.pk), team_group(agent.team_id)}
    doorbells.listen(*expected)
    with django_capture_on_commit_callbacks(execute=True):
        approval_decide(
            request_id=request.pk,
            user=world.supervisor,
            verdict="reject",
            comment="not this claim",
            seen_args_hash=request.args_hash,
        )
    assert doorbells.groups() == expected
    assert doorbells.heard() == expected
