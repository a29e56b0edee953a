"""An agent's rollout: draft → shadow → canary (p %) → live → retired, one agent at a time.

The agent's row holds the state (Agent.live_version, shadow_version, canary_version and
canary_percent, previous_version); each version's `stage` says where it stands. Every
change here is one durable transaction that locks the agent's row, compares the rollout
with the one the caller saw (a race loses with ROLLOUT_CHANGED, nothing changed), moves
the versions' stages, and writes its audit event with the rollout before and after.

What each place means at run time:
- live: new runs start on it (Agent.version_for_run), unless chosen for the canary;
- canary: a deterministic canary_percent of new runs start on it, by run id;
- shadow: every tool step of a live run is also decided by its policy, recorded beside the
  step (ShadowDecision, agents.gateway.core) and never executed;
- previous: the live version before the current one, which rollout_rollback restores
  (during a canary, rolling back withdraws the canary instead).
A run keeps the version it started on to the end (replay needs it): none of these
changes touches a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import transaction

from agents.models import Agent, AgentVersion
from agents.services import (
    ROLLOUT_FIELDS,
    Conflict,
    ServiceError,
    live_set,
    reason_required,
)
from audit.services import Actor, audit_record
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User

S = AgentVersion.Stage

ROLLOUT_CHANGED = "{agent}'s rollout changed since you saw it: look again before changing it"
NOT_THIS_AGENTS = "version {version} is not a version of {agent}"
NOT_PUBLISHED = "v{number} is not published: publish it before it enters the rollout"
ALREADY_LIVE = "v{number} is already live"
ALREADY_SHADOW = "v{number} is already the shadow version"
PERCENT_RANGE = "the canary's share is a whole number of percent from 0 to 100"
NO_CANARY = "{agent} has no canary version to promote"
NO_PREVIOUS = "{agent} has no canary to withdraw and no previous live version to roll back to"
RETIRE_LIVE = "v{number} is live: promote a canary or roll back before retiring it"
ALREADY_RETIRED = "v{number} is already retired"


def _state(agent: Agent) -> dict[str, Any]:
    """The rollout as the audit trail records it (before and after)."""
    out: dict[str, Any] = {f: getattr(agent, f"{f}_id") for f in ROLLOUT_FIELDS}
    out["canary_percent"] = agent.canary_percent
    return out


def _locked(agent: Agent) -> Agent:
    """The agent's row under FOR NO KEY UPDATE (agents.store.LOCK_ORDER), compared with
    the rollout the caller saw in `agent`."""
    current = Agent.objects.select_for_update(no_key=True).select_related("team").get(pk=agent.pk)
    if _state(current) != _state(agent):
        raise Conflict(ROLLOUT_CHANGED.format(agent=agent.name))
    return current


def _published(agent: Agent, version: AgentVersion) -> AgentVersion:
    """`version` read again under the agent's lock: one of the agent's, published."""
    if version.agent_id != agent.pk:
        raise ServiceError(NOT_THIS_AGENTS.format(version=version.pk, agent=agent.name))
    fresh = AgentVersion.objects.get(pk=version.pk)
    if fresh.published_at is None:
        raise ServiceError(NOT_PUBLISHED.format(number=fresh.number))
    return fresh


def _vacate(agent: Agent, version_id: int | None) -> None:
    """The version leaves the shadow or canary place it held (retired)."""
    if version_id is None:
        return
    if agent.shadow_version_id == version_id:
        agent.shadow_version_id = None
    if agent.canary_version_id == version_id:
        agent.canary_version_id, agent.canary_percent = None, 0
    AgentVersion.objects.filter(pk=version_id).update(stage=S.RETIRED)


def _commit(
    agent: Agent, before: dict[str, Any], *, verb: Verb, user: User | None, reason: str, **more: Any
) -> None:
    agent.save(update_fields=[*ROLLOUT_FIELDS, "canary_percent"])
    audit_record(
        verb=verb,
        actor=Actor.of(user),
        subject_type="agent",
        subject_id=agent.pk,
        agent=agent,
        payload={"reason": reason, "before": before, "after": _state(agent), **more},
    )


def _caller_sees(seen: Agent, agent: Agent) -> None:
    """The caller's object shows the rollout as committed."""
    for field in ROLLOUT_FIELDS:
        setattr(seen, f"{field}_id", getattr(agent, f"{field}_id"))
    seen.canary_percent = agent.canary_percent


def rollout_shadow(*, agent: Agent, version: AgentVersion, user: User | None, reason: str) -> None:
    """`version` becomes the shadow version: every tool step of a live run is also decided
    by its policy and recorded, never executed. A shadow version before it is retired."""
    reason_required(reason)
    with transaction.atomic(durable=True):
        locked = _locked(agent)
        fresh = _published(locked, version)
        if fresh.pk == locked.live_version_id:
            raise ServiceError(ALREADY_LIVE.format(number=fresh.number))
        if fresh.pk == locked.shadow_version_id:
            raise ServiceError(ALREADY_SHADOW.format(number=fresh.number))
        before = _state(locked)
        _vacate(locked, locked.shadow_version_id)
        _vacate(locked, fresh.pk)  # out of the canary, if it was there
        if locked.previous_version_id == fresh.pk:
            locked.previous_version_id = None
        AgentVersion.objects.filter(pk=fresh.pk).update(stage=S.SHADOW)
        locked.shadow_version_id = fresh.pk
        _commit(
            locked, before, verb=Verb.ROLLOUT_SHADOW, user=user, reason=reason, version=fresh.number
        )
    _caller_sees(agent, locked)


def rollout_canary(
    *, agent: Agent, version: AgentVersion, percent: int, user: User | None, reason: str
) -> None:
    """`version` becomes the canary for `percent` % of new runs (chosen by run id), or the
    canary's share changes. A different canary before it is retired."""
    reason_required(reason)
    if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ServiceError(PERCENT_RANGE)
    with transaction.atomic(durable=True):
        locked = _locked(agent)
        fresh = _published(locked, version)
        if fresh.pk == locked.live_version_id:
            raise ServiceError(ALREADY_LIVE.format(number=fresh.number))
        before = _state(locked)
        if locked.canary_version_id != fresh.pk:
            _vacate(locked, locked.canary_version_id)
            if locked.shadow_version_id == fresh.pk:  # shadow → canary: the usual path
                locked.shadow_version_id = None
            if locked.previous_version_id == fresh.pk:
                locked.previous_version_id = None
            AgentVersion.objects.filter(pk=fresh.pk).update(stage=S.CANARY)
        locked.canary_version_id, locked.canary_percent = fresh.pk, percent
        _commit(
            locked,
            before,
            verb=Verb.ROLLOUT_CANARY,
            user=user,
            reason=reason,
            version=fresh.number,
            percent=percent,
        )
    _caller_sees(agent, locked)


def rollout_promote(*, agent: Agent, user: User | None, reason: str) -> None:
    """The canary becomes live for every new run; the live version before it is retired
    and kept for a rollback. Runs already started keep their versions."""
    reason_required(reason)
    with transaction.atomic(durable=True):
        locked = _locked(agent)
        if locked.canary_version_id is None:
            raise ServiceError(NO_CANARY.format(agent=agent.name))
        before = _state(locked)
        live_set(locked, locked.canary_version_id, keep_previous=True)
        _commit(locked, before, verb=Verb.ROLLOUT_PROMOTED, user=user, reason=reason)
    _caller_sees(agent, locked)


def rollout_rollback(*, agent: Agent, user: User | None, reason: str) -> None:
    """One step back, for new runs: during a canary, the canary is withdrawn (retired) and
    every new run starts on the live version again; otherwise the previous live version
    is live again and the version rolled back from is retired. Running runs finish on
    the version they started with."""
    reason_required(reason)
    with transaction.atomic(durable=True):
        locked = _locked(agent)
        before = _state(locked)
        if locked.canary_version_id is not None:
            withdrawn = locked.canary_version_id
            _vacate(locked, withdrawn)
            number = AgentVersion.objects.filter(pk=withdrawn).values_list("number", flat=True)
            more = {"withdrawn": number.get()}
        elif locked.previous_version_id is not None:
            live_set(locked, locked.previous_version_id, keep_previous=False)
            more = {}
        else:
            raise ServiceError(NO_PREVIOUS.format(agent=agent.name))
        _commit(locked, before, verb=Verb.ROLLOUT_ROLLED_BACK, user=user, reason=reason, **more)
    _caller_sees(agent, locked)


def rollout_retire(*, agent: Agent, version: AgentVersion, user: User | None, reason: str) -> None:
    """`version` leaves the rollout: out of the shadow or canary place it held (a draft is
    abandoned). The live version is not retired here: promote or roll back instead."""
    reason_required(reason)
    with transaction.atomic(durable=True):
        locked = _locked(agent)
        if version.agent_id != locked.pk:
            raise ServiceError(NOT_THIS_AGENTS.format(version=version.pk, agent=agent.name))
        fresh = AgentVersion.objects.get(pk=version.pk)
        if fresh.pk == locked.live_version_id:
            raise ServiceError(RETIRE_LIVE.format(number=fresh.number))
        if fresh.stage == S.RETIRED:
            raise ServiceError(ALREADY_RETIRED.format(number=fresh.number))
        before = _state(locked)
        _vacate(locked, fresh.pk)
        if locked.previous_version_id == fresh.pk:
            locked.previous_version_id = None
        _commit(
            locked,
            before,
            verb=Verb.ROLLOUT_RETIRED,
            user=user,
            reason=reason,
            version=fresh.number,
        )
    _caller_sees(agent, locked)
