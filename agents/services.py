"""Every state change of agents, versions, runs and kill switches (STYLE: services)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db import transaction
from django.utils import timezone

from agents import store
from agents.approval_port import approvals
from agents.delivery import runs_with_messages
from agents.errors import TRANSIENT_FAULTS
from agents.killswitches import engaged_for, lock_for_engage
from agents.killswitches import target as switch_target
from agents.models import Agent, AgentVersion, KillSwitch, Run, Team
from agents.policy import PolicyError, parse_policy
from agents.registry import UnknownProgram, get_program
from agents.runtime import enqueue
from agents.stepwait import ring_runs
from audit import jsonsafe
from audit.services import (
    SYSTEM,
    Actor,
    audit_append_bodies,
    audit_record,
    audit_run,
    run_bodies,
)
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; the message is shown to the user as it is."""


class Unstorable(ServiceError):
    """Input the audit trail cannot store (audit.jsonsafe); nothing was changed."""


class Conflict(ServiceError):
    """The request is well formed but the thing it is about is not in a state that allows
    it (a run that cannot start, a step that is not open, a request that changed)."""


class NotFound(ServiceError):
    """No such thing, or none the caller may see."""


class Unauthorized(ServiceError):
    """The caller's credentials are missing, wrong, expired or revoked."""


AGENT_HALTED = "{agent} is halted: release the kill switch before starting runs"
NO_LIVE_VERSION = "{agent} has no live version to run"
AGENT_ARCHIVED = "{agent} is archived: it starts no new runs"
SWITCH_ALREADY_ENGAGED = "a kill switch is already engaged on {target}"
SWITCH_NOT_ENGAGED = "this kill switch was already released"
REASON_REQUIRED = "a reason is required"
RUN_ALREADY_FINISHED = "run {run} has already finished"
RUN_INPUT_TOO_LARGE = "a run's input is at most {limit} bytes of JSON; this one is {size}"
RUN_INPUT_NOT_JSON = "a run's input must be JSON"


def storable(value: Any, where: str) -> Any:
    """`value` as plain JSON the audit trail can store (audit.jsonsafe), or a ServiceError
    naming what is wrong: every service that takes outside input calls it before it
    changes anything."""
    try:
        return jsonsafe.plain_json(value, where)
    except jsonsafe.Unstorable as exc:
        raise Unstorable(str(exc)) from None


def team_create(*, slug: str, name: str) -> Team:
    """A bare team, unrecorded: for seeds, fixtures and benchmarks. People create teams
    with agents.catalog.team_create, which checks, validates and records the change."""
    return Team.objects.create(slug=slug, name=name)


def agent_create(
    *,
    slug: str,
    name: str,
    team: Team,
    kind: str = Agent.Kind.HOSTED,
    description: str = "",
    owner: User | None = None,
    user: User | None = None,
) -> Agent:
    storable({"slug": slug, "name": name, "description": description}, "agent")
    with transaction.atomic(durable=True):
        agent = Agent.objects.create(
            slug=slug, name=name, team=team, kind=kind, description=description, owner=owner
        )
        audit_record(
            verb=Verb.AGENT_CREATED,
            actor=Actor.of(user),
            subject_type="agent",
            subject_id=agent.pk,
            agent=agent,
            payload={"slug": slug, "name": name},
        )
    return agent


def version_create(
    *,
    agent: Agent,
    program: str,
    policy: dict[str, Any],
    config: dict[str, Any] | None = None,
    note: str = "",
    user: User | None = None,
) -> AgentVersion:
    """A new draft version. A draft may be edited until it is published
    (agents.drafts.version_draft_save); a published version never changes: a change to
    it is a new version."""
    policy, config = storable(policy, "policy"), storable(config or {}, "config")
    note = storable(note, "note")
    try:
        parse_policy(policy)
        if agent.kind == Agent.Kind.HOSTED:
            get_program(program)
    except (PolicyError, UnknownProgram) as exc:
        raise ServiceError(str(exc)) from exc
    with transaction.atomic(durable=True):
        last = (
            # FOR NO KEY UPDATE: numbers are taken one at a time, and a run inserted
            # meanwhile may still check its foreign key to a version (store.LOCK_ORDER).
            AgentVersion.objects.select_for_update(no_key=True)
            .filter(agent=agent)
            .order_by("-number")
            .values_list("number", flat=True)
            .first()
        )
        version = AgentVersion.objects.create(
            agent=agent,
            number=(last or 0) + 1,
            program=program,
            policy=policy,
            config=config or {},
            note=note,
            author=user,
        )
        audit_record(
            verb=Verb.VERSION_CREATED,
            actor=Actor.of(user),
            subject_type="version",
            subject_id=version.pk,
            agent=agent,
            payload={"number": version.number, "program": program, "policy": policy},
        )
    return version


REAUTH_REQUIRED = "enter your password again to publish"
REAUTH_FAILED = "that is not your password; repeated failures lock you out of Baton"
ALREADY_PUBLISHED = "v{number} is already published"
SECOND_ADMIN_REQUIRED = "{team} publishes only with a second admin's approval: ask for one instead"


def password_reconfirm(*, request: HttpRequest | None, user: User, password: str) -> None:
    """The person proves it is them again: their password, checked by the same backends
    as signing in (django-axes first, so guessing is counted and locked out like a login).
    Called before the caller's transaction, so a failure axes records is not rolled back."""
    if not password:
        raise ServiceError(REAUTH_REQUIRED)
    if request is None:
        raise ServiceError(REAUTH_FAILED)
    confirmed = authenticate(request, username=user.get_username(), password=password)
    if confirmed is None or confirmed.pk != user.pk or not confirmed.is_active:
        raise ServiceError(REAUTH_FAILED)


def version_publish(
    *,
    version: AgentVersion,
    user: User | None,
    reason: str,
    live: bool = True,
    password: str = "",
    request: HttpRequest | None = None,
) -> None:
    """Publish the version: its content is final and it may enter the agent's rollout
    (agents.rollout: shadow, canary, live). With `live` it also becomes the live version
    for new runs at once, the one before it kept for a rollback.

    Always with a reason. A person (`user`) also gives their password again, checked here
    so no caller can leave it out (`request` is the one it came with, for axes); only the
    system (`user` None: seeds, set-up commands) publishes without one. A team that wants
    a second admin on every publish (Team.publish_needs_second_admin) publishes through
    approvals.publish instead, which calls `version_publish_locked` once approved."""
    reason_required(reason)
    if user is not None:
        password_reconfirm(request=request, user=user, password=password)
    with transaction.atomic(durable=True):
        agent = (
            Agent.objects.select_for_update(no_key=True)
            .select_related("team")
            .get(pk=version.agent_id)
        )
        if user is not None and agent.team.publish_needs_second_admin:
            raise ServiceError(SECOND_ADMIN_REQUIRED.format(team=agent.team.name))
        version_publish_locked(agent, version, user=user, reason=reason, live=live)
    if live:
        version.stage = AgentVersion.Stage.LIVE


def version_publish_locked(
    agent: Agent,
    version: AgentVersion,
    *,
    user: User | None,
    reason: str,
    live: bool,
    **more: Any,
) -> None:
    """The publish itself, inside the caller's transaction with `agent`'s row locked and
    every check done (version_publish; approvals.publish once a second admin approved)."""
    first = AgentVersion.objects.filter(pk=version.pk, published_at__isnull=True).update(
        published_at=timezone.now()
    )
    # Compare-and-set: publishing twice (a double submit) changes nothing the second time,
    # but an already published version may still be made live.
    if not first and (not live or agent.live_version_id == version.pk):
        raise Conflict(ALREADY_PUBLISHED.format(number=version.number))
    if live:
        live_set(agent, version.pk, keep_previous=True)
    audit_record(
        verb=Verb.POLICY_PUBLISHED,
        actor=Actor.of(user),
        subject_type="version",
        subject_id=version.pk,
        agent=agent,
        payload={"number": version.number, "reason": reason, "live": live, **more},
    )


ROLLOUT_FIELDS = ("live_version", "shadow_version", "canary_version", "previous_version")


def live_set(agent: Agent, version_id: int, *, keep_previous: bool) -> None:
    """The one place an agent's live version changes (publish, promote, rollback): inside
    the caller's transaction, with the agent's row locked and `agent` read under the lock.
    The version leaves any other place it held (shadow, canary); the live version before
    it is retired and, with `keep_previous`, kept as the one a rollback restores."""
    old = agent.live_version_id
    if old is not None and old != version_id:
        AgentVersion.objects.filter(pk=old).update(stage=AgentVersion.Stage.RETIRED)
        agent.previous_version_id = old if keep_previous else None
    elif not keep_previous:
        agent.previous_version_id = None
    AgentVersion.objects.filter(pk=version_id).update(stage=AgentVersion.Stage.LIVE)
    if agent.shadow_version_id == version_id:
        agent.shadow_version_id = None
    if agent.canary_version_id == version_id:
        agent.canary_version_id, agent.canary_percent = None, 0
    if agent.previous_version_id == version_id:
        agent.previous_version_id = None
    agent.live_version_id = version_id
    agent.save(update_fields=[*ROLLOUT_FIELDS, "canary_percent"])


def run_input_check(input: Any) -> None:
    """A run's input is stored in its row and its audit event, and replayed on every
    resume: bounded by BATON_RUN_INPUT_MAX_BYTES of JSON (UTF-8)."""
    try:
        size = len(json.dumps(input, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        raise ServiceError(RUN_INPUT_NOT_JSON) from None
    limit = settings.BATON_RUN_INPUT_MAX_BYTES
    if size > limit:
        raise ServiceError(RUN_INPUT_TOO_LARGE.format(limit=limit, size=size))


def run_start_check(*, agent: Agent, input: Any) -> tuple[dict[str, Any], int]:
    """What every run start requires, hosted or remote: input the trail can store, within
    the size limit; a live version; no halt switch covering the agent. Returns the input
    as it is stored and the live version, which the run is inserted with before
    run_version_choose settles it. Called inside the start's transaction, so a halt
    engaged meanwhile is seen (agents.killswitches), and the agent's rollout is read
    there too: a run started after a rollout change commits gets the new state, however
    old the caller's `agent` is."""
    input = storable(input, "input")
    run_input_check(input)
    *rollout, archived_at = (
        Agent.objects.filter(pk=agent.pk)
        .values_list("live_version_id", "canary_version_id", "canary_percent", "archived_at")
        .get()
    )
    agent.live_version_id, agent.canary_version_id, agent.canary_percent = rollout
    if archived_at is not None:
        raise Conflict(AGENT_ARCHIVED.format(agent=agent.name))
    if agent.live_version_id is None:
        raise Conflict(NO_LIVE_VERSION.format(agent=agent.name))
    if any(s.mode == KillSwitch.Mode.HALT for s in engaged_for(agent)):
        raise Conflict(AGENT_HALTED.format(agent=agent.name))
    return input, agent.live_version_id


def run_version_choose(*, agent: Agent, run: Run) -> bool:
    """Right after a new run's insert, in its start's transaction (hosted and remote): the
    version it starts on, by its id (Agent.version_for_run, with the rollout
    run_start_check read). Replay and every later step use run.version, which never
    changes again. Returns whether the run is a canary run."""
    chosen = agent.version_for_run(run.pk)
    if chosen is not None and chosen != run.version_id:
        Run.objects.filter(pk=run.pk).update(version_id=chosen)
        run.version_id = chosen
    return chosen is not None and chosen == agent.canary_version_id


def run_start(*, agent: Agent, input: dict[str, Any], user: User | None = None) -> Run:
    with transaction.atomic(durable=True):
        input, version_id = run_start_check(agent=agent, input=input)
        run = Run.objects.create(
            agent=agent,
            version_id=version_id,
            input=input,
            launched_by=user,
            enqueued_at=timezone.now(),
        )
        canary = run_version_choose(agent=agent, run=run)
        audit_run(
            Verb.RUN_QUEUED,
            actor=Actor.of(user),
            run=run,
            payload={
                "input": input,
                "version": run.version_id,
                **({"canary": True} if canary else {}),
            },
        )
        enqueue(run.pk)
    return run


def _cancel_runs(
    *,
    reason: str,
    actor: Actor,
    team: int | None = None,
    agent: int | None = None,
    run: int | None = None,
) -> int:
    """Cancel the unfinished runs of a scope (a team, an agent, one run, or every run),
    their held actions and pending approvals, each run with its `run.cancelled` event in
    this transaction. The statement count does not grow with the runs (an engage may stop
    hundreds, and every statement it makes holds the switch lock longer): the runs and
    actions in one call (store.runs_cancel), the approvals, then every run's event in one
    statement, its bytes written from one content (audit.services.run_bodies)."""
    cancelled = store.runs_cancel(reason=reason, team=team, agent=agent, run=run)
    if not cancelled:
        return 0
    # The requests are locked before the runs' events are appended (LOCK_ORDER).
    approvals().cancel_for_runs(run_ids=[pk for pk, _, _ in cancelled], reason=reason, actor=actor)
    audit_append_bodies(
        run_bodies(Verb.RUN_CANCELLED, actor=actor, runs=cancelled, payload={"reason": reason}),
        owners=[(agent_id, team_id) for _, agent_id, team_id in cancelled],
    )
    return len(cancelled)


def reason_required(reason: str) -> None:
    if not storable(reason, "reason").strip():
        raise ServiceError(REASON_REQUIRED)


def run_cancel(*, run: Run, user: User | None, reason: str) -> None:
    reason_required(reason)
    with transaction.atomic(durable=True):
        lock_for_engage(switch_target(KillSwitch.Scope.AGENT, run.agent_id))
        if not _cancel_runs(run=run.pk, reason=reason, actor=Actor.of(user)):
            raise ServiceError(RUN_ALREADY_FINISHED.format(run=run.pk))


def _scope_runs(switch: KillSwitch) -> Any:
    if switch.scope == KillSwitch.Scope.AGENT:
        return Run.objects.filter(agent=switch.agent)
    if switch.scope == KillSwitch.Scope.TEAM:
        return Run.objects.filter(agent__team=switch.team)
    return Run.objects.all()


def killswitch_engage(
    *,
    scope: str,
    mode: str,
    reason: str,
    user: User | None,
    team: Team | None = None,
    agent: Agent | None = None,
) -> KillSwitch:
    """Stop an agent, a team or everything. Once this commits no covered action is admitted:
    the gateway's admission takes the same lock (agents.killswitches)."""
    reason_required(reason)
    with transaction.atomic(durable=True):
        return killswitch_engage_within(
            scope=scope, mode=mode, reason=reason, user=user, team=team, agent=agent
        )


def killswitch_engage_within(
    *,
    scope: str,
    mode: str,
    reason: str,
    user: User | None,
    team: Team | None = None,
    agent: Agent | None = None,
) -> KillSwitch:
    """killswitch_engage inside the caller's transaction: for a change that engages a
    switch as part of itself (a circuit breaker firing, agents.alerts). The caller takes
    the target's engage lock before any row lock (agents.store.LOCK_ORDER); taking it
    again here is free. ServiceError if a switch is already engaged on the target."""
    reason_required(reason)
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("killswitch_engage_within runs inside its caller's transaction")
    owner = team if scope == KillSwitch.Scope.TEAM else agent
    target = switch_target(scope, owner.pk if owner else None)
    lock_for_engage(target)
    _not_engaged_check(target)
    switch = KillSwitch.objects.create(
        scope=scope,
        team=team,
        agent=agent,
        target=target,
        mode=mode,
        reason=reason,
        engaged_by=user,
    )
    # Remote agents waiting on a step of a covered run hear of it at once.
    ring_runs(
        list(
            _scope_runs(switch)
            .filter(status=Run.Status.RUNNING, agent__kind=Agent.Kind.REMOTE)
            .values_list("pk", flat=True)
        )
    )
    cancelled = _halt_runs(switch, user=user) if mode == KillSwitch.Mode.HALT else 0
    _engage_audit(switch, user=user, cancelled=cancelled)
    return switch


def _not_engaged_check(target: str) -> None:
    # Under the target's lock: two engages of one target cannot both pass.
    if KillSwitch.objects.filter(target=target, released_at__isnull=True).exists():
        raise ServiceError(SWITCH_ALREADY_ENGAGED.format(target=target))


def _halt_runs(switch: KillSwitch, *, user: User | None) -> int:
    """A halt cancels every unfinished run it covers; returns how many."""
    return _cancel_runs(
        reason=f"halted: {switch.reason}",
        actor=Actor.of(user),
        team=switch.team_id if switch.scope == KillSwitch.Scope.TEAM else None,
        agent=switch.agent_id if switch.scope == KillSwitch.Scope.AGENT else None,
    )


def _engage_audit(switch: KillSwitch, *, user: User | None, cancelled: int) -> None:
    audit_record(
        verb=Verb.KILLSWITCH_ENGAGED,
        actor=Actor.of(user),
        subject_type="killswitch",
        subject_id=switch.pk,
        agent=switch.agent,
        team=switch.team,
        payload={
            "target": switch.target,
            "mode": switch.mode,
            "reason": switch.reason,
            "runs_cancelled": cancelled,
        },
    )


def killswitch_release(*, switch: KillSwitch, user: User | None, reason: str) -> int:
    """Release a switch; runs a pause parked are queued again unless another switch still
    covers them. A halt's runs stay cancelled. Returns how many runs were re-queued."""
    reason_required(reason)
    with transaction.atomic(durable=True):
        lock_for_engage(switch.target)
        released = KillSwitch.objects.filter(pk=switch.pk, released_at__isnull=True).update(
            released_at=timezone.now(), released_by=user, release_reason=reason
        )
        if not released:
            raise ServiceError(SWITCH_NOT_ENGAGED)
        requeued = 0
        # Every parked run is locked before the first audit event takes the chain head.
        parked = list(
            _scope_runs(switch)
            .filter(status=Run.Status.WAITING, wait_reason=Run.WaitReason.PAUSED)
            .select_for_update(of=("self",), no_key=True)
            .select_related("agent__team")
            .order_by("pk")
        )
        for run in parked:
            if engaged_for(run.agent):
                continue
            if Run.objects.filter(
                pk=run.pk, status=Run.Status.WAITING, wait_reason=Run.WaitReason.PAUSED
            ).update(status=Run.Status.QUEUED, wait_reason="", enqueued_at=timezone.now()):
                audit_run(
                    Verb.RUN_QUEUED,
                    actor=Actor.of(user),
                    run=run,
                    payload={"why": "the pause was released"},
                )
                requeued += 1
                enqueue(run.pk)
        audit_record(
            verb=Verb.KILLSWITCH_RELEASED,
            actor=Actor.of(user),
            subject_type="killswitch",
            subject_id=switch.pk,
            agent=switch.agent,
            team=switch.team,
            payload={"target": switch.target, "reason": reason, "runs_requeued": requeued},
        )
    return requeued


def runs_sweep() -> int:
    """Re-enqueue runs nobody is working on: queued but never picked up, or running under
    a lease that expired because its worker died. Duplicates are harmless (runs replay)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.BATON_REQUEUE_AFTER_SECONDS)
    count = 0
    orphaned = Run.objects.filter(status=Run.Status.RUNNING, lease_until__lt=now)
    for run in orphaned.select_related("agent__team")[:500]:
        with transaction.atomic(durable=True):
            if Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, lease_until__lt=now).update(
                status=Run.Status.QUEUED, lease_token=None, lease_until=None, enqueued_at=now
            ):
                audit_run(
                    Verb.RUN_REQUEUED,
                    actor=SYSTEM,
                    run=run,
                    payload={"why": "lease expired: its worker stopped"},
                )
                enqueue(run.pk)
                count += 1
    forgotten = Run.objects.filter(status=Run.Status.QUEUED).unsent_since(stale).due(now)
    candidates = list(forgotten.values_list("pk", flat=True)[:500])
    try:
        # Only runs whose message is gone; a run still waiting in a backlog keeps its turn.
        in_broker = runs_with_messages(candidates) or set()
    except TRANSIENT_FAULTS:
        log.warning("sweep: the broker cannot be read; re-enqueuing no waiting run this time")
        return count
    for run_id in candidates:
        if run_id in in_broker:
            continue
        with transaction.atomic(durable=True):
            if (
                Run.objects.filter(pk=run_id, status=Run.Status.QUEUED)
                .unsent_since(stale)
                .update(enqueued_at=now)
            ):
                enqueue(run_id)
                count += 1
    return count
