"""The live doorbells the agents' services ring once they commit: every socket that may
see the new event is told, through the real Redis channel layer (console/live.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agents.models import Run
from agents.services import killswitch_engage, killswitch_release, run_start
from tests.conftest import ALLOW_ALL_TESTS
from tests.support.doorbells import (
    EVERYONE,
    EVERYTHING,
    Doorbells,
    agent_group,
    team_group,
    team_level_group,
)
from tests.support.gateway import claimed

pytestmark = pytest.mark.django_db


@pytest.fixture
def counter(make_agent: Any) -> Any:
    return make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)


def test_a_started_run_rings_its_agent_and_team(
    counter: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    expected = {EVERYTHING, agent_group(counter.pk), team_group(counter.team_id)}
    doorbells.listen(*expected)
    with django_capture_on_commit_callbacks(execute=True):
        run_start(agent=counter, input={"label": "d", "steps": 1})
    assert doorbells.groups() == expected
    assert doorbells.heard() == expected


def test_nothing_rings_before_the_commit(
    counter: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run_start(agent=counter, input={"label": "d", "steps": 1})
        assert doorbells.rings == []
    assert callbacks, "the doorbell waits for the commit"
    assert doorbells.rings == []


def test_a_governed_step_rings_its_agent_and_team(
    counter: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    ctx = claimed(counter, {"label": "d", "steps": 1})
    expected = {EVERYTHING, agent_group(counter.pk), team_group(counter.team_id)}
    doorbells.listen(*expected)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            ctx.tool("test.count", label="d", n=0)
    finally:
        ctx.close()
    # One ring for the step's start (action.allowed), one for its outcome.
    assert doorbells.rings == [frozenset(expected)] * 2
    assert doorbells.heard() == expected


def test_the_global_switch_rings_everyone_when_engaged_and_released(
    world: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    expected = {EVERYTHING, EVERYONE}
    doorbells.listen(*expected)
    with django_capture_on_commit_callbacks(execute=True):
        switch = killswitch_engage(scope="global", mode="pause", reason="drill", user=world.admin)
    assert doorbells.groups() == expected
    assert doorbells.heard() == expected

    doorbells.reset()
    with django_capture_on_commit_callbacks(execute=True):
        killswitch_release(switch=switch, user=world.admin, reason="drill over")
    assert doorbells.groups() == expected
    assert doorbells.heard() == expected


def test_a_team_halt_rings_the_team_and_the_agents_of_the_runs_it_cancels(
    counter: Any, world: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    run = run_start(agent=counter, input={"label": "d", "steps": 1})
    team = counter.team_id
    expected = {EVERYTHING, team_group(team), team_level_group(team), agent_group(counter.pk)}
    doorbells.listen(*expected)
    with django_capture_on_commit_callbacks(execute=True):
        killswitch_engage(
            scope="team", team=world.claims, mode="halt", reason="drill", user=world.admin
        )
    assert Run.objects.get(pk=run.pk).status == Run.Status.CANCELLED
    assert doorbells.rings == [
        frozenset({EVERYTHING, agent_group(counter.pk), team_group(team)}),  # run.cancelled
        frozenset({EVERYTHING, team_group(team), team_level_group(team)}),  # killswitch.engaged
    ]
    assert doorbells.heard() == expected


def test_an_agent_pause_rings_the_agent_and_its_team_when_engaged_and_released(
    counter: Any, world: Any, doorbells: Doorbells, django_capture_on_commit_callbacks: Any
) -> None:
    expected = {EVERYTHING, agent_group(counter.pk), team_group(counter.team_id)}
    doorbells.listen(*expected)
    with django_capture_on_commit_callbacks(execute=True):
        switch = killswitch_engage(
            scope="agent", agent=counter, mode="pause", reason="drill", user=world.admin
        )
    assert doorbells.groups() == expected
    assert doorbells.heard() == expected

    doorbells.reset()
    with django_capture_on_commit_callbacks(execute=True):
        killswitch_release(switch=switch, user=world.admin, reason="drill over")
    assert doorbells.groups() == expected
    assert doorbells.heard() == expected
