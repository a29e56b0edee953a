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
def test_the_overview_costs_twenty_queries_however_many_agents_it_shows(
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

    with django_assert_num_queries(20):
        #  1-2. the session and the signed-in person
        #  3-4. agents_for_user: the person's global permissions (user's, then groups')
        #  5. agent_cards: the visible agents with their run counts
        #  6. agent_cards: engaged kill switches (card states)
        #  7. actions_per_minute: the pace sparklines
        #  8. _current_runs: each card's current run
        #  9-12. grants_prefetch (guardian): the person's and their groups' grants on
        #     all the listed agents (2), then on their teams (2) - not one per card
        # 13. overview: engaged kill switches again (the page's switch list)
        # 14-15. audit_scope: the teams and agents whose events the person sees
        # 16. recent_events: the live stream's last events
        # 17. the console context: engaged kill switches again (banners)
        # 18. the console context: latest_seq (where the live stream starts)
        # 19. base.html: the person's groups
        # 20. overview.html: recent_runs (lazy, read by the template)
        page = client.get("/")
    assert page.status_code == 200
    assert all(f"counter-{i}" in page.content.decode() for i in range(agents))
