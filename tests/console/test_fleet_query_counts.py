"""The pages at fleet size cost the same number of queries for ten agents as for a
thousand (issue 13, DESIGN section 11 "pages"): 50 teams of 20 agents, one pending
approval request each, against 2 teams of 5. A query per agent, per team or per request
fails here with the counts of both sizes; an added query fails the constant."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents import roles
from agents.selectors import CARDS_PAGE_SIZE
from bench.fleet import Fleet, build_fleet

pytestmark = pytest.mark.django_db

SIZES = {"small": (2, 5), "fleet": (50, 20)}
# What each page costs, for either size and either person (the counts below are asserted
# for both; see tests/console/test_query_counts.py for what the overview's queries are).
# The supervisor's two more are guardian's object grants (user's and groups'), which
# compliance's model-wide permissions skip; the banners of the two engaged switches cost
# their grants once (agents.permissions.grants_prefetch), not once a switch. The queue's
# decide rule reads the person's groups in its own SQL (approvals.selectors.decidable_by).
EXPECTED = {
    "overview": {"supervisor": 29, "compliance": 27},
    "queue": {"supervisor": 16, "compliance": 14},
    "agent": {"supervisor": 21, "compliance": 19},
    "run": {"supervisor": 15, "compliance": 13},
}


def _pages(fleet: Fleet) -> dict[str, str]:
    agent = fleet.agents[-1]
    run = fleet.requests[-1].run_id
    return {
        "overview": "/",
        "queue": "/approvals/",
        "agent": f"/agents/{agent.slug}/",
        "run": f"/runs/{run}/",
    }


def _count(client: Client, url: str) -> tuple[int, str]:
    client.get(url)  # once before: the process-wide caches (content types) are filled
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(queries), response.content.decode()


@pytest.fixture
def counts(world: Any) -> Any:
    def measure(size: str) -> dict[str, dict[str, int]]:
        teams, per_team = SIZES[size]
        fleet = build_fleet(teams=teams, per_team=per_team, prefix=size)
        # A supervisor of five teams (or both): the first two, whose paused team and
        # halted agent they see, and the last ones (the agent and run asked for are
        # theirs); and compliance, who sees all.
        for team in {*fleet.teams[:2], *fleet.teams[-3:]}:
            roles.role_grant(user=world.supervisor, role=roles.SUPERVISOR, target=team)
        found: dict[str, dict[str, int]] = {}
        for who in ("supervisor", "compliance"):
            client = Client()
            client.force_login(getattr(world, who))
            for page, url in _pages(fleet).items():
                found.setdefault(page, {})[who], html = _count(client, url)
                if page == "overview":
                    # One page of cards at most, whatever the fleet.
                    assert html.count('class="card agent') <= CARDS_PAGE_SIZE
        return found

    return measure


@pytest.mark.parametrize("size", list(SIZES))
def test_the_pages_cost_a_fixed_number_of_queries_at_any_fleet_size(size: str, counts: Any) -> None:
    assert counts(size) == EXPECTED
