"""Verbs are a StrEnum, but the trail holds and hashes their plain text: an event written
with `Verb.RUN_QUEUED` is byte for byte the event written with "run.queued", so every
event stored before the enum still verifies."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from audit.chain import CONTENT_FIELDS, canonical_content, canonical_json, event_hash
from audit.models import AuditEvent
from audit.services import SYSTEM, audit_record, event_content
from audit.verbs import Verb
from tests.conftest import chained

pytestmark = pytest.mark.django_db

# The vocabulary as the trail stores it. A value here never changes: events carry it and
# their hashes cover it.
STORED = {
    "RUN_QUEUED": "run.queued",
    "RUN_STARTED": "run.started",
    "RUN_WAITING": "run.waiting",
    "RUN_DELAYED": "run.delayed",
    "RUN_PAUSED": "run.paused",
    "RUN_SUCCEEDED": "run.succeeded",
    "RUN_FAILED": "run.failed",
    "RUN_CANCELLED": "run.cancelled",
    "RUN_REQUEUED": "run.requeued",
    "ACTION_ALLOWED": "action.allowed",
    "ACTION_SUCCEEDED": "action.succeeded",
    "ACTION_FAILED": "action.failed",
    "ACTION_DENIED": "action.denied",
    "ACTION_INVALID": "action.invalid",
    "ACTION_SHADOWED": "action.shadowed",
    "ACTION_HELD": "action.held",
    "ACTION_RETRIED": "action.retried",
    "ACTION_UNKNOWN": "action.unknown",
    "MODEL_CALLED": "model.called",
    "VALUE_RECORDED": "value.recorded",
    "APPROVAL_REQUESTED": "approval.requested",
    "APPROVAL_APPROVED": "approval.approved",
    "APPROVAL_REJECTED": "approval.rejected",
    "APPROVAL_DECISION": "approval.decision",
    "APPROVAL_CANCELLED": "approval.cancelled",
    "APPROVAL_ESCALATED": "approval.escalated",
    "APPROVAL_EXPIRED": "approval.expired",
    "KILLSWITCH_ENGAGED": "killswitch.engaged",
    "KILLSWITCH_RELEASED": "killswitch.released",
    "TEAM_CREATED": "team.created",
    "TEAM_UPDATED": "team.updated",
    "TEAM_ARCHIVED": "team.archived",
    "AGENT_CREATED": "agent.created",
    "AGENT_UPDATED": "agent.updated",
    "AGENT_ARCHIVED": "agent.archived",
    "AGENT_UNARCHIVED": "agent.unarchived",
    "VERSION_CREATED": "version.created",
    "VERSION_DRAFT_SAVED": "version.draft_saved",
    "POLICY_PUBLISHED": "policy.published",
    "PUBLISH_REQUESTED": "publish.requested",
    "PUBLISH_APPROVED": "publish.approved",
    "PUBLISH_REJECTED": "publish.rejected",
    "ROLLOUT_SHADOW": "rollout.shadow",
    "ROLLOUT_CANARY": "rollout.canary",
    "ROLLOUT_PROMOTED": "rollout.promoted",
    "ROLLOUT_ROLLED_BACK": "rollout.rolled_back",
    "ROLLOUT_RETIRED": "rollout.retired",
    "GRANT_ADDED": "grant.added",
    "GRANT_REVOKED": "grant.revoked",
    "PERSON_CREATED": "person.created",
    "PERSON_DEACTIVATED": "person.deactivated",
    "PERSON_REACTIVATED": "person.reactivated",
    "PERSON_INVITED": "person.invited",
    "ROLE_ASSIGNED": "role.assigned",
    "ROLE_REMOVED": "role.removed",
    "APIKEY_CREATED": "apikey.created",
    "APIKEY_REVOKED": "apikey.revoked",
    "APIKEY_ROTATED": "apikey.rotated",
    "MCP_SERVER_ADDED": "mcp_server.added",
    "MCP_SERVER_REMOVED": "mcp_server.removed",
    "ALERT_RULE_CREATED": "alert_rule.created",
    "ALERT_RULE_UPDATED": "alert_rule.updated",
    "ALERT_FIRED": "alert.fired",
    "ALERT_RESOLVED": "alert.resolved",
    "AUDIT_EXPORTED": "audit.exported",
    "REVIEW_EXPORTED": "review.exported",
    "LOGIN_LOCKED_OUT": "login.locked_out",
}


def test_the_vocabulary_is_the_stored_text() -> None:
    assert {name: verb.value for name, verb in Verb.__members__.items()} == STORED


@pytest.mark.parametrize(
    "extra",
    [
        "plain",  # Python's json writes it (audit.chain's fast path)
        "astral \U0001f600",  # the RFC 8785 package writes it
    ],
)
def test_a_verb_is_written_as_its_text_by_both_canonical_writers(extra: str) -> None:
    as_enum = canonical_json({"verb": Verb.RUN_QUEUED, "extra": extra, "list": [Verb.RUN_FAILED]})
    as_text = canonical_json({"verb": "run.queued", "extra": extra, "list": ["run.failed"]})
    assert as_enum == as_text
    assert b'"verb":"run.queued"' in as_enum


def test_event_content_holds_the_plain_string() -> None:
    content = event_content(
        verb=Verb.APPROVAL_APPROVED, actor=SYSTEM, subject_type="x", subject_id=1
    )
    assert type(content["verb"]) is str
    assert content["verb"] == "approval.approved"
    assert canonical_content(content) == canonical_content({**content, "verb": "approval.approved"})


def test_an_event_recorded_with_a_member_verifies_as_text(world: Any) -> None:
    with transaction.atomic():
        seq = chained(
            audit_record(verb=Verb.KILLSWITCH_ENGAGED, actor=SYSTEM, subject_type="x", subject_id=7)
        )
    event = AuditEvent.objects.get(seq=seq)
    assert '"verb":"killswitch.engaged"' in event.body
    assert event.verb == "killswitch.engaged"
    content = {field: getattr(event, field) for field in CONTENT_FIELDS}
    assert type(content["verb"]) is str
    assert event.hash == event_hash(event.prev_hash, seq, {**content, "verb": "killswitch.engaged"})
