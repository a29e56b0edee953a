"""The three roles and how a person is granted one over an agent or a team."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from guardian.shortcuts import assign_perm, remove_perm

from agents.models import Agent, Team
from audit.services import Actor, audit_record
from audit.verbs import Verb

SUPERVISOR = "Supervisor"
COMPLIANCE = "Compliance"
AGENT_ADMIN = "Agent admin"

# Model-wide permissions each role's group holds. Supervisors and admins hold nothing
# model-wide: what they may touch comes from grants on agents and teams.
GROUP_PERMISSIONS: dict[str, list[str]] = {
    # Any supervisor may stop everything: in an incident the first person to see it acts.
    SUPERVISOR: ["agents.engage_global"],
    AGENT_ADMIN: ["agents.add_agent", "agents.add_team"],
    COMPLIANCE: [
        "agents.view_agent",
        "agents.view_team",
        "agents.view_run",
        "agents.view_action",
        "approvals.view_approvalrequest",
        "audit.view_auditevent",
        # Held by the role by default, but a permission of its own so it can be withheld.
        "audit.export_auditevent",
        # Signing the head as it stands changes no record; it makes the record provable.
        "audit.sign_checkpoint",
    ],
}
# What a grant of the role over one agent or team gives.
GRANT_CAPABILITIES = {SUPERVISOR: ["view", "supervise"], AGENT_ADMIN: ["view", "administer"]}


def roles_ensure(apps: Any = None) -> None:
    """Create the role groups with their permissions (idempotent; used by the migration)."""
    group_model = apps.get_model("auth", "Group") if apps else Group
    perm_model = apps.get_model("auth", "Permission") if apps else Permission
    for name, perms in GROUP_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        for dotted in perms:
            app_label, codename = dotted.split(".")
            # A permission added by a later migration does not exist yet when an earlier
            # one runs; the later migration calls this again.
            found = perm_model.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if found is not None:
                group.permissions.add(found)


def role_grant(*, user: Any, role: str, target: Agent | Team, granted_by: Any = None) -> None:
    if role not in GRANT_CAPABILITIES:
        raise ValueError(f"role {role!r} is not granted per agent or team")
    kind = "agent" if isinstance(target, Agent) else "team"
    with transaction.atomic():
        user.groups.add(Group.objects.get(name=role))
        for capability in GRANT_CAPABILITIES[role]:
            assign_perm(f"agents.{capability}_{kind}", user, target)
        audit_record(
            verb=Verb.GRANT_ADDED,
            actor=Actor.of(granted_by),
            subject_type="user",
            subject_id=user.pk,
            agent=target if isinstance(target, Agent) else None,
            team=target if isinstance(target, Team) else None,
            payload={"user": user.get_username(), "role": role, kind: target.slug},
        )


def held_roles(user: Any, target: Agent | Team) -> list[str]:
    """The roles granted to the person itself (not through a group) on this agent or
    team: those whose every capability they hold there."""
    from guardian.shortcuts import get_user_perms

    kind = "agent" if isinstance(target, Agent) else "team"
    perms = set(get_user_perms(user, target))
    return [
        role
        for role, capabilities in GRANT_CAPABILITIES.items()
        if all(f"{capability}_{kind}" in perms for capability in capabilities)
    ]


def role_revoke(
    *, user: Any, role: str, target: Agent | Team, revoked_by: Any = None, reason: str = ""
) -> None:
    """Take a role's grant away; a capability another role still held there needs (both
    roles give view) stays."""
    kind = "agent" if isinstance(target, Agent) else "team"
    with transaction.atomic():
        kept = {
            capability
            for other in held_roles(user, target)
            if other != role
            for capability in GRANT_CAPABILITIES[other]
        }
        for capability in GRANT_CAPABILITIES[role]:
            if capability not in kept:
                remove_perm(f"agents.{capability}_{kind}", user, target)
        audit_record(
            verb=Verb.GRANT_REVOKED,
            actor=Actor.of(revoked_by),
            subject_type="user",
            subject_id=user.pk,
            agent=target if isinstance(target, Agent) else None,
            team=target if isinstance(target, Team) else None,
            payload={
                "user": user.get_username(),
                "role": role,
                kind: target.slug,
                "reason": reason,
            },
        )
