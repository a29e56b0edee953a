"""The overview, agent and run pages render what a supervisor needs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from agents.demo.seed import CLAIMS_POLICY
from agents.runtime import execute_run
from agents.services import run_start

pytestmark = pytest.mark.django_db


def test_the_run_page_shows_the_journal_step_by_step(world: Any, make_agent: Any) -> None:
    agent = make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    run = run_start(
        agent=agent,
        input={
            "claim_id": "CLM-7",
            "policyholder": "Tom Becker",
            "description": "stolen bicycle",
            "amount": 640,
        },
    )
    execute_run(run.pk)
    client = Client()
    client.force_login(world.supervisor)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "succeeded" in page
    assert "Assess insurance claim CLM-7" in page  # the prompt
    assert "Damage is covered" in page  # the model's rationale
    assert "payments.pay" in page and "640.00" in page  # the tool and its money argument
    assert "gateway: allow" in page
    assert "small payouts are paid automatically" in page  # why the gateway decided


def test_htmx_requests_get_only_the_partial(world: Any, make_agent: Any) -> None:
    make_agent("claims-payer", "agents.demo.programs.claim_payout", CLAIMS_POLICY)
    client = Client()
    client.force_login(world.supervisor)
    full = client.get("/").content.decode()
    partial = client.get("/", headers={"HX-Request": "true"}).content.decode()
    assert "<html" in full and "<html" not in partial
    assert 'id="live"' in partial and "Claims Payer" in partial


def test_the_demo_seed_creates_people_agents_and_printable_passwords(db: Any) -> None:
    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    from agents.demo.seed import demo_seed
    from agents.models import Agent

    credentials = demo_seed()
    assert {role for _, _, role in credentials} == {"Supervisor", "Compliance", "Agent admin"}
    username, password, _ = credentials[0]
    login = RequestFactory().post("/login/")
    assert authenticate(login, username=username, password=password) is not None
    assert Agent.objects.count() == 3
    again = demo_seed()  # a second start keeps the world and renews the passwords
    assert Agent.objects.count() == 3 and again[0][1] != password


def test_agent_cards_show_the_current_run_and_actions_per_minute(
    world: Any, make_agent: Any
) -> None:
    from agents.models import Run
    from agents.selectors import actions_per_minute, agent_cards
    from tests.conftest import ALLOW_ALL_TESTS

    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "p", "steps": 4})
    execute_run(run.pk)
    pace = actions_per_minute([agent.pk])[agent.pk]
    assert len(pace) == 15 and sum(pace[-2:]) == 4  # this minute (or the one just gone)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING)
    card = agent_cards(world.supervisor)[0]
    assert card.current_run.pk == run.pk and sum(card.pace) == 4
    client = Client()
    client.force_login(world.supervisor)
    page = client.get("/").content.decode()
    assert f'running <a href="/runs/{run.pk}/">#{run.pk}</a>' in page
    assert "tool actions per minute, last 15 minutes: 0, 0, 0," in page
    # The fifteen bars are one path, drawn for the minutes that had actions.
    assert re.search(r'<path d="(M\d+ \d+h8v\d+h-8z)+"/></svg>', page)
