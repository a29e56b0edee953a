"""What the overview page costs in queries on Postgres (STYLE.md: the hot paths assert
their query counts, so a regression fails here instead of slowing the console).

A new query on the page fails this test with the captured SQL: add it on purpose, then
update the count and the list of what the queries are."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agents.runtime import execute_run
from agents.services import run_start
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("agents", [3, 7])
def test_the_overview_costs_twenty_five_queries_however_many_agents_it_shows(
    agents: int, make_agent: Any, world: Any, django_assert_num_queries: Any
) -> None:
    for i in range(agents):
        agent = make_agent(f"counter-{i}", "tests.support.agents.counter", ALLOW_ALL_TESTS)
        for label in ("a", "b"):
            execute_run(run_start(agent=agent, input={"label": f"{label}{i}", "steps": 1}).pk)
    client = Client()
    client.force_login(world.supervisor)
    # The page once before: it fills the process-wide caches the page reads (content
    # types), so the count below does not depend on which tests ran before.
    assert client.get("/").status_code == 200

    with django_assert_num_queries(25):
        #  1-2. the session and the signed-in person
        #  3. overview: engaged kill switches (card states, the team lines, the filter)
        #  4-5. agents_for_user: the person's global permissions (user's, then groups')
        #  6-7. team_summaries: the visible agents by team and state; their runs waiting
        #     or failed lately, by team
        #  8. overview: the ids of the agents that need attention
        #  9-10. overview: how many agents the filter keeps; the ids of this page's
        # 11. agent_cards: those agents with their run counts
        # 12-15. grants_prefetch (guardian): the person's and their groups' grants on
        #     all the listed agents (2), then on their teams (2) - not one per card
        # 16. actions_per_minute: the pace sparklines
        # 17. _current_runs: each card's current run
        # 18-19. audit_scope: the teams and agents whose events the person sees
        # 20. recent_events: the live stream's last events
        # 21. firing_for_user: the firing alert rules of the agents and teams the
        #     person sees (one query: the grants are subqueries)
        # 22. the console context: engaged kill switches again (banners; none engaged
        #     here, so no grants are loaded for them)
        # 23. the console context: latest_seq (where the live stream starts)
        # 24. base.html: the person's groups
        # 25. overview.html: recent_runs (lazy, read by the template)
        page = client.get("/")
    assert page.status_code == 200
    assert all(f"counter-{i}" in page.content.decode() for i in range(agents))
