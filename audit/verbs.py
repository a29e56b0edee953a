"""The fixed vocabulary of audit verbs. An event's verb is always one of these.

The values are stored in the trail and hashed with it: they never change. A member is a
`str`, so the canonical form (audit.chain) and the database write its plain text."""

from __future__ import annotations

from enum import StrEnum


class Verb(StrEnum):
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_WAITING = "run.waiting"
    RUN_DELAYED = "run.delayed"
    RUN_PAUSED = "run.paused"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_REQUEUED = "run.requeued"

    ACTION_ALLOWED = "action.allowed"
    ACTION_SUCCEEDED = "action.succeeded"
    ACTION_FAILED = "action.failed"
    ACTION_DENIED = "action.denied"
    ACTION_INVALID = "action.invalid"
    ACTION_SHADOWED = "action.shadowed"
    ACTION_HELD = "action.held"
    ACTION_RETRIED = "action.retried"
    ACTION_UNKNOWN = "action.unknown"
    MODEL_CALLED = "model.called"
    VALUE_RECORDED = "value.recorded"

    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_APPROVED = "approval.approved"
    APPROVAL_REJECTED = "approval.rejected"
    APPROVAL_DECISION = "approval.decision"
    APPROVAL_CANCELLED = "approval.cancelled"
    APPROVAL_ESCALATED = "approval.escalated"
    APPROVAL_EXPIRED = "approval.expired"

    KILLSWITCH_ENGAGED = "killswitch.engaged"
    KILLSWITCH_RELEASED = "killswitch.released"

    TEAM_CREATED = "team.created"
    TEAM_UPDATED = "team.updated"
    TEAM_ARCHIVED = "team.archived"
    AGENT_CREATED = "agent.created"
    AGENT_UPDATED = "agent.updated"
    AGENT_ARCHIVED = "agent.archived"
    AGENT_UNARCHIVED = "agent.unarchived"
    VERSION_CREATED = "version.created"
    VERSION_DRAFT_SAVED = "version.draft_saved"
    POLICY_PUBLISHED = "policy.published"
    PUBLISH_REQUESTED = "publish.requested"
    PUBLISH_APPROVED = "publish.approved"
    PUBLISH_REJECTED = "publish.rejected"
    ROLLOUT_SHADOW = "rollout.shadow"
    ROLLOUT_CANARY = "rollout.canary"
    ROLLOUT_PROMOTED = "rollout.promoted"
    ROLLOUT_ROLLED_BACK = "rollout.rolled_back"
    ROLLOUT_RETIRED = "rollout.retired"
    GRANT_ADDED = "grant.added"
    GRANT_REVOKED = "grant.revoked"
    PERSON_CREATED = "person.created"
    PERSON_DEACTIVATED = "person.deactivated"
    PERSON_REACTIVATED = "person.reactivated"
    PERSON_INVITED = "person.invited"
    ROLE_ASSIGNED = "role.assigned"
    ROLE_REMOVED = "role.removed"
    APIKEY_CREATED = "apikey.created"
    APIKEY_REVOKED = "apikey.revoked"
    APIKEY_ROTATED = "apikey.rotated"
    MCP_SERVER_ADDED = "mcp_server.added"
    MCP_SERVER_REMOVED = "mcp_server.removed"

    ALERT_RULE_CREATED = "alert_rule.created"
    ALERT_RULE_UPDATED = "alert_rule.updated"
    ALERT_FIRED = "alert.fired"
    ALERT_RESOLVED = "alert.resolved"

    AUDIT_EXPORTED = "audit.exported"
    REVIEW_EXPORTED = "review.exported"

    LOGIN_LOCKED_OUT = "login.locked_out"
