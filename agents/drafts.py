"""Draft versions and their edits (issue 11, point 3).

A version is a draft until it is published (published_at NULL); a draft may be edited,
a published version never changes. `version_draft_save` is the only writer of a version's
policy, config and note after `version_create`, and it changes a row only where
published_at is still NULL, under that row's lock: a publish that won the race leaves the
save refused (Conflict) and the version as it was published.

What a policy names outside itself is checked here too, once for every caller (the
editor's fields and the service): each tool glob matches a registered tool, and each
approver group (`approvers`, `escalate_to`) is an existing group of people.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction

from agents.models import Agent, AgentVersion
from agents.permissions import NOT_ALLOWED, user_can
from agents.policy import PolicyError, parse_policy
from agents.registry import all_tools
from agents.services import Conflict, NotFound, ServiceError, storable, version_create
from audit.services import Actor, audit_record
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User

PUBLISHED_IS_FINAL = "v{number} is published: a published version never changes; start a new draft"
UNKNOWN_TOOL = "no registered tool matches {tool!r}"
UNKNOWN_GROUP = "no group of people is named {group!r}"
CONFIG_NOT_OBJECT = 'the config is a JSON object, like {"model": "scripted"}'
NOTHING_TO_COPY = "{agent} has no version to copy: its first version names its program"
OTHER_AGENTS_VERSION = "v{number} belongs to another agent"


def tool_known(glob: str) -> bool:
    """Whether a rule's tool glob matches at least one registered tool."""
    return any(fnmatch.fnmatchcase(tool.name, glob) for tool in all_tools())


def groups_missing(names: Iterable[str]) -> list[str]:
    """The names among `names` that are no group of people, in their order."""
    wanted = [n for n in dict.fromkeys(names) if n]
    found = set(Group.objects.filter(name__in=wanted).values_list("name", flat=True))
    return [n for n in wanted if n not in found]


def policy_reference_problems(policy: Any) -> list[str]:
    """What a (parsed, valid) policy names that does not exist: tools no glob matches,
    approver groups nobody created. Each problem says which rule or limit it is in."""
    parsed = parse_policy(policy)
    problems = []
    for rule in parsed.rules:
        if not tool_known(rule.tool):
            problems.append(f"rule {rule.index + 1}: " + UNKNOWN_TOOL.format(tool=rule.tool))
        for group in groups_missing([rule.approvers, *rule.escalate_to]):
            problems.append(f"rule {rule.index + 1}: " + UNKNOWN_GROUP.format(group=group))
    for i, limit in enumerate(parsed.rate_limits):
        if not tool_known(limit.tool):
            problems.append(f"rate limit {i + 1}: " + UNKNOWN_TOOL.format(tool=limit.tool))
    return problems


def _administer(user: User | None, agent: Agent) -> None:
    if user is not None and not user_can(user, "administer", agent):
        raise PermissionDenied(NOT_ALLOWED.format(capability="administer"))


def version_draft_save(
    *,
    version: AgentVersion,
    policy: dict[str, Any],
    config: dict[str, Any],
    note: str = "",
    user: User | None,
) -> bool:
    """Replace a draft's policy, config and note. Refused (Conflict) once the version is
    published, and then nothing changes; a ServiceError for a policy that does not parse
    or names unknown tools or groups. True if the draft changed (an unchanged save
    records nothing)."""
    _administer(user, version.agent)
    policy, config = storable(policy, "policy"), storable(config, "config")
    note = storable(note, "note")
    if not isinstance(config, dict):
        raise ServiceError(CONFIG_NOT_OBJECT)
    try:
        problems = policy_reference_problems(policy)
    except PolicyError as exc:
        raise ServiceError(str(exc)) from exc
    if problems:
        raise ServiceError("; ".join(problems))
    after = {"policy": policy, "config": config, "note": note}
    with transaction.atomic(durable=True):
        # The row's lock (FOR NO KEY UPDATE, store.LOCK_ORDER) holds off a publish until
        # this save commits; a publish that came first leaves no draft to find.
        before = (
            AgentVersion.objects.select_for_update(of=("self",), no_key=True)
            .filter(pk=version.pk, published_at__isnull=True)
            .values("policy", "config", "note")
            .first()
        )
        if before is None:
            if not AgentVersion.objects.filter(pk=version.pk).exists():
                raise NotFound(f"v{version.number} no longer exists")
            raise Conflict(PUBLISHED_IS_FINAL.format(number=version.number))
        if before == after:
            return False
        changed = AgentVersion.objects.filter(pk=version.pk, published_at__isnull=True).update(
            **after
        )
        if changed != 1:  # not reachable under the lock; kept so a change of it fails loud
            raise Conflict(PUBLISHED_IS_FINAL.format(number=version.number))
        audit_record(
            verb=Verb.VERSION_DRAFT_SAVED,
            actor=Actor.of(user),
            subject_type="version",
            subject_id=version.pk,
            agent=version.agent,
            payload={"number": version.number, "before": before, "after": after},
        )
    version.policy, version.config, version.note = policy, config, note
    return True


def version_draft_new(
    *,
    agent: Agent,
    user: User | None,
    from_version: AgentVersion | None = None,
    program: str = "",
) -> AgentVersion:
    """A new draft, a copy of `from_version`, else of the live version, else of the
    newest one; an agent with no version at all gets an empty policy and `program`."""
    _administer(user, agent)
    source = from_version or agent.live_version or agent.versions.order_by("-number").first()
    if source is not None and source.agent_id != agent.pk:
        raise ServiceError(OTHER_AGENTS_VERSION.format(number=source.number))
    if source is None:
        if agent.kind == Agent.Kind.HOSTED and not program:
            raise ServiceError(NOTHING_TO_COPY.format(agent=agent.name))
        return version_create(agent=agent, program=program, policy={}, user=user)
    return version_create(
        agent=agent,
        program=source.program,
        policy=source.policy,
        config=source.config,
        note=f"from v{source.number}",
        user=user,
    )
