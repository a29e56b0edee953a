"""The gateway's durable writes: admitting a step, starting it, finishing it.

On Postgres each is one round trip (the functions in agents/migrations/0007); on other
databases the same steps run through the ORM in one transaction. Both keep one contract:
- admit: refuse if the run was cancelled, its lease belongs to another worker, or a kill
  switch covers the agent — serialised with killswitch_engage;
- start: admit, write the journal row as `started`, append `action.allowed`, commit;
- finish: record the outcome only if the step is still this attempt's, with its event.

Lock order (DESIGN section 10, invariant 8). Every transaction that changes runs,
actions, approval requests and the trail takes its locks in LOCK_ORDER, and only the rows
it must: row locks are `FOR NO KEY UPDATE` of the row itself
(`select_for_update(of=("self",), no_key=True)`) or the implicit lock of an UPDATE, never
`FOR UPDATE`. Postgres checks foreign keys at commit (Django makes them DEFERRABLE
INITIALLY DEFERRED) with `FOR KEY SHARE` on the referenced row, which is after the chain
head was taken; `FOR UPDATE` on an agent, run or version would block that check while its
holder waits for the chain head: a deadlock. `FOR NO KEY UPDATE` does not block it.
The chain head is last because `audit_append` holds it until commit: every row a
transaction will touch is locked (or updated) before its first audit event.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from agents.errors import LeaseLost, Stopped
from agents.killswitches import engaged_for
from agents.models import Action, Agent, Run
from audit.chain import canonical_content
from audit.sequencer import after_append
from audit.services import Actor, audit_append, event_content
from audit.verbs import Verb

LOCK_ORDER = (
    "kill-switch advisory locks: global, team, agent (baton_admit shared, engage exclusive)",
    "alert rule rows (agents.alerts: a transition's compare-and-set, a rule's edit)",
    "agent and version rows (FOR NO KEY UPDATE, only to publish, number or edit a version)",
    "run rows, ascending id",
    "action rows",
    "approval request rows",
    "the audit chain head: last, taken by the first audit event, held until commit",
)


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _refusal(code: str) -> None:
    if code == "ok":
        return
    if code == "cancel":
        raise Stopped("cancel", "the run was cancelled")
    if code == "lost":
        raise LeaseLost()
    mode, target, reason = code.split("\t", 2)
    raise Stopped(mode, f"{mode} by kill switch on {target}: {reason}")


def _admit_code(run_id: int, token: uuid.UUID, agent: Agent) -> str:
    row = Run.objects.filter(pk=run_id).values_list("status", "lease_token").first()
    if row is not None and row[0] == Run.Status.CANCELLED:
        return "cancel"
    if row is None or row[0] != Run.Status.RUNNING or row[1] != token:
        return "lost"
    for switch in engaged_for(agent):
        return f"{switch.mode}\t{switch.target}\t{switch.reason}"
    return "ok"


_ADMIT = (
    "SELECT baton_admit(p_run => %(run)s, p_token => %(token)s, p_team => %(team)s, "
    "p_agent => %(agent)s)"
)


def admit(run_id: int, token: uuid.UUID, agent: Agent) -> None:
    """Inside the step's transaction: raise Stopped or LeaseLost unless the step may go."""
    if _postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                _ADMIT, {"run": run_id, "token": token, "team": agent.team_id, "agent": agent.pk}
            )
            code = cursor.fetchone()[0]
    else:
        code = _admit_code(run_id, token, agent)
    _refusal(code)


def action_event(
    verb: str, actor: Actor, run: Run, agent: Agent, seq: int, payload: dict[str, Any]
) -> dict[str, Any]:
    return event_content(
        verb=verb,
        actor=actor,
        subject_type="action",
        subject_id=f"{run.pk}/{seq}",
        agent_id=agent.pk,
        team_id=agent.team_id,
        run_id=run.pk,
        payload=payload,
        occurred_at=timezone.now(),
    )


_START = """SELECT * FROM baton_step_start(
    p_run => %(run)s, p_token => %(token)s, p_team => %(team)s, p_agent => %(agent)s,
    p_seq => %(seq)s, p_name => %(name)s, p_requested => %(requested)s::jsonb,
    p_args => %(args)s::jsonb, p_args_hash => %(args_hash)s, p_rule_index => %(rule_index)s,
    p_rule => %(rule)s::jsonb, p_reason => %(reason)s, p_key => %(idempotency_key)s,
    p_now => %(started_at)s, p_canonical => %(canonical)s)"""


def start_step(
    *,
    run: Run,
    token: uuid.UUID,
    agent: Agent,
    seq: int,
    name: str,
    requested: dict[str, Any],
    args: dict[str, Any],
    args_hash: str,
    rule_index: int | None,
    rule: dict[str, Any] | None,
    reason: str,
    key: str,
    actor: Actor,
    payload: dict[str, Any],
) -> Action:
    """Admit a new allowed step and journal it as `started`, committed before the tool
    runs: admit, record the journal row, audit `action.allowed`, ring the live doorbell.
    On Postgres the first three are one round trip (baton_step_start)."""
    event = action_event(Verb.ACTION_ALLOWED, actor, run, agent, seq, payload)
    action = Action(
        run=run,
        seq=seq,
        kind=Action.Kind.TOOL,
        name=name,
        requested_args=requested,
        args=args,
        args_hash=args_hash,
        status=Action.Status.STARTED,
        decision=Action.Decision.ALLOW,
        rule_index=rule_index,
        rule=rule,
        reason=reason,
        idempotency_key=key,
        attempts=1,
        started_at=event["occurred_at"],
    )
    if _postgres():
        _admit_record_audit(action, token, agent, event)
        _ring(agent)
    else:
        with transaction.atomic():
            admit(run.pk, token, agent)
            # Journaled already (another attempt took this step): as baton_step_start.
            if Action.objects.filter(run_id=run.pk, seq=seq).exists():
                raise LeaseLost()
            action.save(force_insert=True)
            audit_append(event)  # rings the doorbell on commit
    return action


def _admit_record_audit(
    action: Action, token: uuid.UUID, agent: Agent, event: dict[str, Any]
) -> None:
    """Postgres: admit the step, write its journal row and its audit event in one call."""
    params: dict[str, Any] = {
        "run": action.run_id,
        "token": token,
        "team": agent.team_id,
        "agent": agent.pk,
        "seq": action.seq,
        "name": action.name,
        "requested": json.dumps(action.requested_args),
        "args": json.dumps(action.args),
        "args_hash": action.args_hash,
        "rule_index": action.rule_index,
        "rule": json.dumps(action.rule) if action.rule else None,
        "reason": action.reason,
        "idempotency_key": action.idempotency_key,
        "started_at": action.started_at,
        "canonical": canonical_content(event),
    }
    with connection.cursor() as cursor:
        cursor.execute(_START, params)
        code, action.pk = cursor.fetchone()
    _refusal(code)
    action.created_at = event["occurred_at"]


def _ring(agent: Agent) -> None:
    # The step's event is committed: chained already (inline), or queued for the sequencer.
    after_append(agent_id=agent.pk, team_id=agent.team_id)


_RESTART = """SELECT baton_step_restart(
    p_run => %(run)s, p_token => %(token)s, p_team => %(team)s, p_agent => %(agent)s,
    p_action => %(action)s, p_status => %(status)s, p_attempts => %(attempts)s,
    p_now => %(now)s, p_canonical => %(canonical)s)"""


def restart_step(
    *, action: Action, run: Run, token: uuid.UUID, agent: Agent, event: dict[str, Any]
) -> None:
    """Start a journaled step again (approved, or started by an attempt that died), another
    attempt, committed before the tool runs: admit, move the step to `started` only if it is
    still as it was read (LeaseLost otherwise), append `event`. On Postgres one round trip
    (baton_step_restart). Sets the step's new status, attempts and start on `action`."""
    now = event["occurred_at"]
    if _postgres():
        params = {
            "run": run.pk,
            "token": token,
            "team": agent.team_id,
            "agent": agent.pk,
            "action": action.pk,
            "status": action.status,
            "attempts": action.attempts,
            "now": now,
            "canonical": canonical_content(event),
        }
        with connection.cursor() as cursor:
            cursor.execute(_RESTART, params)
            code = cursor.fetchone()[0]
        if code == "ok":
            _ring(agent)
        _refusal(code)
    else:
        with transaction.atomic():
            admit(run.pk, token, agent)
            moved = Action.objects.filter(
                pk=action.pk, status=action.status, attempts=action.attempts
            ).update(status=Action.Status.STARTED, attempts=F("attempts") + 1, started_at=now)
            if moved != 1:
                raise LeaseLost()
            audit_append(event)
    action.status, action.attempts, action.started_at = (
        Action.Status.STARTED,
        action.attempts + 1,
        now,
    )


_FINISH = """SELECT baton_step_finish(
    p_action => %(action)s, p_attempts => %(attempts)s, p_status => %(status)s,
    p_result => %(result)s::jsonb, p_error => %(error)s, p_now => %(finished_at)s,
    p_canonical => %(canonical)s)"""


def finish_step(
    *,
    action: Action,
    run: Run,
    agent: Agent,
    status: str,
    verb: str,
    result: Any,
    error: str,
    actor: Actor,
    payload: dict[str, Any],
) -> None:
    """Record a started step's outcome. Fenced by the attempt: a worker that lost the step
    to another (its lease expired) writes nothing and gets LeaseLost."""
    content = action_event(verb, actor, run, agent, action.seq, payload)
    now = content["occurred_at"]
    if _postgres():
        params = {
            "action": action.pk,
            "attempts": action.attempts,
            "status": status,
            "result": None if result is None else json.dumps(result),
            "error": error,
            "finished_at": now,
            "canonical": canonical_content(content),
        }
        with connection.cursor() as cursor:
            cursor.execute(_FINISH, params)
            moved = cursor.fetchone()[0]
        if moved:
            _ring(agent)
    else:
        with transaction.atomic():
            moved = Action.objects.filter(
                pk=action.pk, status=Action.Status.STARTED, attempts=action.attempts
            ).update(status=status, result=result, error=error, finished_at=now)
            if moved:
                audit_append(content)
    if not moved:
        raise LeaseLost()
    action.status, action.result, action.error, action.finished_at = status, result, error, now


_RUNS_CANCEL = (
    "SELECT o_run, o_agent, o_team FROM baton_runs_cancel(p_team => %(team)s, "
    "p_agent => %(agent)s, p_run => %(run)s, p_reason => %(reason)s, p_now => %(now)s)"
)


def runs_cancel(
    *, reason: str, team: int | None = None, agent: int | None = None, run: int | None = None
) -> list[tuple[int, int, int | None]]:
    """Cancel every unfinished run of the scope (a team, an agent, one run, or every run
    when none is given) and their held actions; return (run, agent, team) of each, in id
    order. The caller holds the scope's kill-switch lock and appends the runs' events.
    One round trip on Postgres (baton_runs_cancel, agents/migrations/0018)."""
    now = timezone.now()
    if _postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                _RUNS_CANCEL,
                {"team": team, "agent": agent, "run": run, "reason": reason, "now": now},
            )
            return [(int(r), int(a), None if t is None else int(t)) for r, a, t in cursor]
    runs = Run.objects.exclude(status__in=Run.FINAL)
    if run is not None:
        runs = runs.filter(pk=run)
    if agent is not None:
        runs = runs.filter(agent_id=agent)
    if team is not None:
        runs = runs.filter(agent__team_id=team)
    # Locked first, so the set updated is exactly the set answered.
    locked: list[tuple[int, int, int | None]] = list(
        runs.select_for_update(of=("self",), no_key=True)
        .order_by("pk")
        .values_list("pk", "agent_id", "agent__team_id")
    )
    ids = [pk for pk, _, _ in locked]
    if ids:
        Run.objects.filter(pk__in=ids).update(
            status=Run.Status.CANCELLED,
            error=reason,
            finished_at=now,
            lease_token=None,
            lease_until=None,
            wait_reason="",
        )
        Action.objects.filter(run_id__in=ids, status__in=Action.AWAITING).update(
            status=Action.Status.CANCELLED, error=reason
        )
    return locked
