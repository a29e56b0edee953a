"""A halt's events are written from one content (audit.services.run_bodies): the bytes of
each equal those the long way (canonical_content of event_content) would write for its run,
whatever the payload holds; and many bodies are queued by one statement, in their order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from audit.chain import canonical_content
from audit.models import AuditEvent
from audit.services import (
    SYSTEM,
    Actor,
    audit_append_bodies,
    audit_flush,
    event_content,
    run_bodies,
)
from audit.verbs import Verb
from audit.verify import chain_verify

WHEN = datetime(2026, 12, 1, 6, 30, 1, 123456, tzinfo=UTC)
RUNS = [(1, 2, 3), (10, 7, None), (123456789, 1, 99), (9_007_199_254_740_880, 5, 6)]


def long_way(actor: Actor, payload: dict[str, Any], runs: list[Any]) -> list[bytes]:
    return [
        canonical_content(
            event_content(
                verb=Verb.RUN_CANCELLED,
                actor=actor,
                subject_type="run",
                subject_id=run_id,
                agent_id=agent_id,
                team_id=team_id,
                run_id=run_id,
                payload=payload,
                occurred_at=WHEN,
            )
        )
        for run_id, agent_id, team_id in runs
    ]


@pytest.mark.parametrize(
    "reason",
    [
        "halted: bench",
        'halted: a "quoted" \\ reason\nover two lines\t\u0001',
        "halted: ünïcödé, 漢字 and an astral 🛑",
        # A mark's digits in the payload: each event is made the long way.
        "halted: 9007199254740883 and 9007199254740884",
        "",
    ],
)
@pytest.mark.parametrize("actor", [SYSTEM, Actor("user", 42, "ana.lima")])
def test_the_bodies_are_the_long_ways_bytes(reason: str, actor: Actor) -> None:
    payload = {"reason": reason}
    made = run_bodies(Verb.RUN_CANCELLED, actor=actor, runs=RUNS, payload=payload, occurred_at=WHEN)
    assert made == long_way(actor, payload, RUNS)


def test_no_runs_no_bodies() -> None:
    assert run_bodies(Verb.RUN_CANCELLED, actor=SYSTEM, runs=[], payload={}) == []


@pytest.mark.django_db
def test_the_bodies_go_in_one_statement_in_their_order() -> None:
    bodies = run_bodies(Verb.RUN_CANCELLED, actor=SYSTEM, runs=RUNS[:3], payload={"reason": "a\nb"})
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        audit_append_bodies(bodies, owners=[(a, t) for _, a, t in RUNS[:3]])
    if connection.vendor == "postgresql":
        assert len(queries) == 1
    audit_flush()
    stored = list(AuditEvent.objects.order_by("seq").values_list("body", flat=True))
    assert [b.encode() for b in stored[-3:]] == bodies
    assert chain_verify().ok


@pytest.mark.django_db
def test_a_body_with_a_raw_line_break_is_refused() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the bodies go one by one on SQLite")
    with pytest.raises(ValueError), transaction.atomic():
        audit_append_bodies([b'{"a":"\n"}'], owners=[(None, None)])
