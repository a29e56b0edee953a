"""Pages that show the trail never fail on what it already holds: the trail cannot be
edited, so a value nested too deep or too big to show, written before the boundaries
refused it, is shown bounded, never as a 500 that would last forever."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from agents.models import Action, Run
from agents.services import run_start
from audit.jsonsafe import SHOW_DEPTH, SHOW_TEXT, shown
from audit.models import AuditEvent
from audit.services import Actor, audit_append, event_content
from audit.verbs import Verb
from audit.views import BODY_CUT
from console.frames import recent_events
from tests.conftest import chained

pytestmark = pytest.mark.django_db

DEEP = 900
PAGE_LIMIT = 400_000  # bytes: a page showing these values stays small


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def plant(run: Run, payload: dict[str, Any], verb: str = Verb.ACTION_SUCCEEDED) -> int:
    """Append an event as a writer before the boundaries checked would have: straight to
    the chain, past event_content's own check."""
    content = event_content(
        verb=verb,
        actor=Actor.agent(run.agent),
        subject_type="action",
        subject_id=f"{run.pk}/1",
        agent_id=run.agent_id,
        team_id=run.agent.team_id,
        run_id=run.pk,
    )
    content["payload"] = payload
    with transaction.atomic():
        return chained(audit_append(content))


@pytest.fixture
def run(make_agent: Any) -> Run:
    from tests.conftest import ALLOW_ALL_TESTS

    agent = make_agent("ledger", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    return run_start(agent=agent, input={"label": "x"})


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"seq": 1, "tool": "test.count", "result": deep(DEEP)}, id="nested-900"),
        pytest.param({"seq": 1, "tool": "test.count", "args": deep(DEEP)}, id="args-nested-900"),
        pytest.param({"seq": 1, "tool": "test.count", "result": "x" * 1_200_000}, id="1mb-text"),
        pytest.param(
            {"seq": 1, "tool": "test.count", "result": {"amount": "1e5000000"}}, id="huge-money"
        ),
        pytest.param(
            {"seq": 1, "tool": "test.count", "result": list(range(50_000))}, id="50k-items"
        ),
    ],
)
def test_every_page_shows_a_stored_value_bounded(
    world: Any, run: Run, payload: dict[str, Any]
) -> None:
    Action.objects.create(
        run=run,
        seq=1,
        kind=Action.Kind.TOOL,
        name="test.count",
        requested_args={"label": "x"},
        args={"label": "x"},
        args_hash="0" * 64,
        status=Action.Status.SUCCEEDED,
        result=payload.get("result"),
        idempotency_key="k1",
    )
    seq = plant(run, payload)
    client = client_for(world.compliance)
    for url in (
        "/audit/",
        f"/audit/events/{seq}/",
        f"/audit/runs/{run.pk}/",
        f"/audit/runs/{run.pk}/actions/1/",
        f"/audit/?run={run.pk}",
        "/",
        f"/runs/{run.pk}/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) < PAGE_LIMIT, url
    assert any(e.seq == seq for e in recent_events(world.compliance))


def test_a_stored_value_too_deep_to_show_says_so(world: Any, run: Run) -> None:
    seq = plant(run, {"seq": 1, "tool": "test.count", "result": deep(DEEP)})
    page = client_for(world.compliance).get(f"/audit/events/{seq}/").content.decode()
    payload = page.split('data-testid="payload">')[1].split("</pre>")[0]
    assert "bottom" not in payload
    assert payload.count("next") == SHOW_DEPTH - 1
    assert "…" in payload
    # What is stored stays as it was written.
    assert AuditEvent.objects.get(seq=seq).payload["result"]["next"]["next"]


def test_a_stored_text_too_long_to_show_is_cut_and_the_page_says_where_it_is_whole(
    world: Any, run: Run
) -> None:
    seq = plant(run, {"seq": 1, "tool": "test.count", "result": "x" * 1_200_000})
    page = client_for(world.compliance).get(f"/audit/events/{seq}/").content.decode()
    assert "x" * SHOW_TEXT + "…" in page
    assert BODY_CUT in page


def test_what_a_page_shows_of_a_wide_and_deep_value_is_bounded_in_all() -> None:
    row: list[Any] = list(range(200))
    for _ in range(5):
        row = [row] * 200  # 200**6 values, shared so the test itself stays small
    assert len(json.dumps(shown(row))) < 100_000
