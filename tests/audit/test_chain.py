"""The audit events written so far form one unbroken hash chain, whichever writer (the
Postgres function on the gateway's hot path, or Python) appended them."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from agents.runtime import execute_run
from agents.services import run_start
from audit.chain import CONTENT_FIELDS, GENESIS, event_hash
from audit.models import AuditEvent
from audit.services import SYSTEM, audit_record
from audit.verbs import Verb
from tests.conftest import ALLOW_ALL_TESTS

pytestmark = pytest.mark.django_db


def assert_chain_intact() -> int:
    prev, expected_seq = GENESIS, 1
    for event in AuditEvent.objects.order_by("seq"):
        assert event.seq == expected_seq, f"gap before seq {event.seq}"
        assert event.prev_hash == prev, f"fork at seq {event.seq}"
        content = {field: getattr(event, field) for field in CONTENT_FIELDS}
        assert event.hash == event_hash(prev, event.seq, content), f"bad hash at {event.seq}"
        prev, expected_seq = event.hash, expected_seq + 1
    return expected_seq - 1


def test_events_from_every_writer_chain_and_recompute(make_agent: Any) -> None:
    agent = make_agent("counter", "tests.support.agents.counter", ALLOW_ALL_TESTS)
    run = run_start(agent=agent, input={"label": "c", "steps": 3})
    execute_run(run.pk)
    count = assert_chain_intact()
    assert count > 10
    assert AuditEvent.objects.filter(verb=Verb.ACTION_SUCCEEDED).count() == 3
    action_event = AuditEvent.objects.filter(verb=Verb.ACTION_ALLOWED).order_by("seq").first()
    assert action_event is not None
    assert action_event.subject_id == f"{run.pk}/1"
    assert action_event.payload["args"] == {"label": "c", "n": 0}


def test_a_rolled_back_change_leaves_no_event_and_no_gap(world: Any) -> None:
    before = AuditEvent.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=1)
        raise RuntimeError("the business change failed")
    audit_record(verb=Verb.RUN_QUEUED, actor=SYSTEM, subject_type="run", subject_id=2)
    assert AuditEvent.objects.count() == before + 1
    assert_chain_intact()


def test_an_unknown_verb_is_refused(world: Any) -> None:
    with pytest.raises(ValueError, match="unknown audit verb"), transaction.atomic():
        # Not a Verb: the type checker refuses it too, the service must refuse it at run time.
        teleported: Any = "run.teleported"
        audit_record(verb=teleported, actor=SYSTEM, subject_type="run", subject_id=1)
