"""Services for remote agents: agents that run anywhere and call Baton's HTTP API with an
API key. They pass the same gateway as hosted agents (DESIGN section 4) — same kill
switches, journal, policy, rate limits, approvals and audit — but execute their own tools:
an allowed step is admitted and journaled as `started`, the agent runs it, then reports.

Steps are numbered by the agent (1, 2, …) so a resubmitted step after a network failure
is recognised instead of run twice.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from agents import store
from agents.errors import Divergence, LeaseLost, Stopped
from agents.gateway.core import (
    Allow,
    Delay,
    Deny,
    Gate,
    Hold,
    Recorded,
    Shadow,
    Stop,
    admit,
    audit_action,
    check_same,
    decide_step,
    journal_row,
)
from agents.killswitches import engaged_for
from agents.models import Action, Agent, ApiKey, KillSwitch, Run
from agents.registry import Tool, get_tool
from agents.services import (
    AGENT_ARCHIVED,
    REASON_REQUIRED,
    Conflict,
    NotFound,
    ServiceError,
    Unauthorized,
    run_start_check,
    run_version_choose,
    storable,
)
from audit.jsonsafe import plain_json
from audit.services import Actor, audit_record, audit_run
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User

S = Action.Status

KEY_INVALID = "invalid API key"
KEY_EXPIRED = "this API key has expired"
KEY_REVOKED = "this API key was revoked"
KEY_AGENT_ARCHIVED = "this API key's agent is archived"
NOT_REMOTE = "{agent} runs in Baton's workers; only remote agents take API keys"
RUN_NOT_RUNNING = "run {run} is {status}"
STEP_OUT_OF_ORDER = "step {seq} is out of order: the next step of this run is {expected}"
STEP_NOT_OPEN = "step {seq} is {status}, not running: nothing to report"
STEPS_STILL_OPEN = "step {seq} is still {status}: report or resolve it before finishing"
SAME_STEP_DIFFERENT_CALL = "step {seq} was submitted before as a different call"
START_KEY_REUSED = "Idempotency-Key {key!r} started a run with another input"
LAST_USE_RESOLUTION = timedelta(minutes=1)
ROTATE_OVERLAP_MAX_HOURS = 7 * 24
OVERLAP_RANGE = "the overlap is a whole number of hours from 0 to {max}"
KEY_NOT_LIVE = "bk_{prefix}… is revoked or expired: only a live key is rotated"


# --- keys ------------------------------------------------------------------------------


def _hash(secret: str) -> str:
    # The secret is 32 random bytes: a fast hash is enough, nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def apikey_create(
    *, agent: Agent, name: str, user: User | None, days: int = 90
) -> tuple[ApiKey, str]:
    """Returns the key and its plain text, which is shown once and never stored."""
    if agent.kind != Agent.Kind.REMOTE:
        raise ServiceError(NOT_REMOTE.format(agent=agent.name))
    if agent.archived_at is not None:
        raise Conflict(AGENT_ARCHIVED.format(agent=agent.name))
    storable(name, "name")
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    with transaction.atomic():
        key = ApiKey.objects.create(
            agent=agent,
            name=name,
            prefix=prefix,
            secret_hash=_hash(secret),
            created_by=user,
            expires_at=timezone.now() + timedelta(days=days),
        )
        audit_record(
            verb=Verb.APIKEY_CREATED,
            actor=Actor.of(user),
            subject_type="apikey",
            subject_id=key.pk,
            agent=agent,
            payload={"prefix": prefix, "name": name, "expires_at": key.expires_at},
        )
    return key, f"bk_{prefix}.{secret}"


def apikey_revoke(*, key: ApiKey, user: User | None, reason: str) -> None:
    if not storable(reason, "reason").strip():
        raise ServiceError(REASON_REQUIRED)
    with transaction.atomic():
        if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        ):
            audit_record(
                verb=Verb.APIKEY_REVOKED,
                actor=Actor.of(user),
                subject_type="apikey",
                subject_id=key.pk,
                agent=key.agent,
                payload={"prefix": key.prefix, "reason": reason},
            )


def apikey_rotate(
    *, key: ApiKey, user: User | None, overlap_hours: int, days: int = 90
) -> tuple[ApiKey, str]:
    """A new key with the old one's name; the old key keeps working `overlap_hours` more
    (at most a week, never past its own expiry), so the agent switches without a gap.
    Returns the new key and its plain text, shown once and never stored."""
    if not 0 <= overlap_hours <= ROTATE_OVERLAP_MAX_HOURS:
        raise ServiceError(OVERLAP_RANGE.format(max=ROTATE_OVERLAP_MAX_HOURS))
    with transaction.atomic(durable=True):
        # Locked before the first audit event takes the chain head (store.LOCK_ORDER).
        old = ApiKey.objects.select_for_update(no_key=True).select_related("agent").get(pk=key.pk)
        now = timezone.now()
        if old.revoked_at is not None or old.expires_at <= now:
            raise Conflict(KEY_NOT_LIVE.format(prefix=old.prefix))
        before = old.expires_at
        old.expires_at = min(before, now + timedelta(hours=overlap_hours))
        old.save(update_fields=["expires_at"])
        new, plaintext = apikey_create(agent=old.agent, name=old.name, user=user, days=days)
        audit_record(
            verb=Verb.APIKEY_ROTATED,
            actor=Actor.of(user),
            subject_type="apikey",
            subject_id=old.pk,
            agent=old.agent,
            payload={
                "prefix": old.prefix,
                "name": old.name,
                "overlap_hours": overlap_hours,
                "before": {"expires_at": before},
                "after": {"expires_at": old.expires_at, "replaced_by": new.prefix},
            },
        )
    return new, plaintext


def apikey_authenticate(presented: str) -> ApiKey:
    """The live key for `bk_<prefix>.<secret>`, or Unauthorized saying why not."""
    body = presented.removeprefix("bk_")
    prefix, _, secret = body.partition(".")
    # A key is printable ASCII; anything else (a NUL the database cannot even compare)
    # is no key, and is not looked up.
    key = (
        ApiKey.objects.select_related("agent__team", "agent__live_version")
        .filter(prefix=prefix)
        .first()
        if prefix and secret and presented.isascii() and presented.isprintable()
        else None
    )
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(secret)):
        raise Unauthorized(KEY_INVALID)
    now = timezone.now()
    if key.revoked_at is not None:
        raise Unauthorized(KEY_REVOKED)
    if key.expires_at <= now:
        raise Unauthorized(KEY_EXPIRED)
    if key.agent.archived_at is not None:
        raise Unauthorized(KEY_AGENT_ARCHIVED)
    if key.last_used_at is None or now - key.last_used_at > LAST_USE_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


# --- runs and steps ----------------------------------------------------------------------


class Remote:
    """The gateway adapter of a remote run (agents.gateway.core.Adapter): the agent executes
    its own tools and holds no worker lease; while a step waits for people the run stays
    `running` (the agent is alive and polling) with a wait reason, and a step the journal
    holds open is the agent's to report, not the gateway's to take up again."""

    resumes_open_steps = False

    def renew(self) -> None:
        pass  # a remote run holds no worker lease

    def park(self, gate: Gate) -> None:
        Run.objects.filter(pk=gate.run.pk).update(wait_reason=Run.WaitReason.APPROVAL)

    def parked(self, gate: Gate) -> None:
        pass  # the run did not change state


REMOTE = Remote()


def _gate(run: Run, tools: Callable[[str], Tool] = get_tool) -> Gate:
    journal = {a.seq: a for a in run.actions.all()}
    return Gate(run, run.lease_token or uuid.uuid4(), journal, REMOTE, tools)


def remote_run_start(*, key: ApiKey, input: dict[str, Any], start_key: str = "") -> Run:
    return remote_run_begin(key=key, input=input, start_key=start_key)[0]


def remote_run_begin(
    *, key: ApiKey, input: dict[str, Any], start_key: str = ""
) -> tuple[Run, bool]:
    """Start a run; returns it and whether it is new. With a `start_key` (the agent's
    Idempotency-Key) a repeated start returns the run the key started, once for all: the
    unique (agent, start_key) constraint settles two concurrent starts."""
    agent = key.agent
    if start_key:
        storable(start_key, "Idempotency-Key")
        existing = _started_by(agent, start_key, input)
        if existing is not None:
            return existing, False
    try:
        return _run_start(key, input, start_key), True
    except IntegrityError:
        if not start_key:
            raise
    # Another request with the same key committed first: its run is the answer.
    existing = _started_by(agent, start_key, input)
    if existing is None:  # pragma: no cover - the constraint named a run that is gone
        raise Conflict(START_KEY_REUSED.format(key=start_key))
    return existing, False


def _started_by(agent: Agent, start_key: str, input: dict[str, Any]) -> Run | None:
    run = (
        Run.objects.select_related("agent", "version")
        .filter(agent=agent, start_key=start_key)
        .first()
    )
    if run is not None and run.input != plain_json(input):
        raise Conflict(START_KEY_REUSED.format(key=start_key))
    return run


def _run_start(key: ApiKey, input: dict[str, Any], start_key: str) -> Run:
    agent = key.agent
    with transaction.atomic():
        input, version_id = run_start_check(agent=agent, input=input)
        now = timezone.now()
        run = Run.objects.create(
            agent=agent,
            version_id=version_id,
            input=input,
            status=Run.Status.RUNNING,
            started_at=now,
            attempts=1,
            # The run's own token: every step's admission checks it, as for hosted runs.
            lease_token=uuid.uuid4(),
            start_key=start_key,
        )
        canary = run_version_choose(agent=agent, run=run)
        audit_run(
            Verb.RUN_STARTED,
            actor=Actor.agent(agent),
            run=run,
            payload={
                "input": input,
                "via": "api",
                "key": key.prefix,
                **({"idempotency_key": start_key} if start_key else {}),
                **({"version": run.version_id, "canary": True} if canary else {}),
            },
        )
    return run


def remote_run(key: ApiKey, run_id: int) -> Run:
    run = (
        Run.objects.select_related("agent__team", "version")
        .filter(pk=run_id, agent=key.agent)
        .first()
        if 0 < run_id < 2**63
        else None
    )
    if run is None:
        raise NotFound(f"no run {run_id} for this agent")
    return run


def describe(action: Action) -> dict[str, Any]:
    """What the agent should do about a step, from its journal row."""
    base: dict[str, Any] = {"seq": action.seq, "tool": action.name, "status": action.status}
    if action.status == S.STARTED:
        return {
            **base,
            "decision": "allow",
            "args": action.args,
            "idempotency_key": action.idempotency_key,
        }
    if action.status in Action.AWAITING:
        return {**base, "decision": "pending"}
    if action.status == S.SHADOWED:
        return {**base, "decision": "shadow", "result": action.result}
    if action.status in (S.SUCCEEDED, S.FAILED):
        return {**base, "decision": "done", "result": action.result, "error": action.error}
    if action.status in (S.DENIED, S.INVALID):
        return {**base, "decision": "deny", "reason": action.reason}
    return {**base, "decision": "rejected", "reason": action.error or action.reason}


def _decide(
    gate: Gate, seq: int, tool: str, args: dict[str, Any], *, again: bool = True
) -> dict[str, Any]:
    """The gateway's decision on step `seq`, as the API answers it."""
    try:
        outcome = decide_step(gate, seq, tool, args)
    except LeaseLost:
        if again and _moved(gate, seq):
            # The same step sent (or an approved one polled) twice at once: the other
            # request journaled or admitted it first. Answered as a resubmission is: the
            # step's state, or 409 for another call.
            return _decide(_gate(gate.run, gate.tools), seq, tool, args, again=False)
        raise Conflict(RUN_NOT_RUNNING.format(run=gate.run.pk, status=_status(gate.run))) from None
    except Divergence:
        raise Conflict(SAME_STEP_DIFFERENT_CALL.format(seq=seq)) from None
    match outcome:
        case Allow(action) | Deny(action) | Hold(action) | Recorded(action):
            return describe(action)
        case Shadow(action):
            return describe(action)
        case Delay(retry_after, reason):
            return {
                "seq": seq,
                "decision": "retry",
                "retry_after": round(retry_after, 2),
                "reason": reason,
            }
        case Stop(mode, reason):
            return _stop_answer(seq, mode, reason)
    raise AssertionError(f"unexpected outcome {outcome!r}")


def _moved(gate: Gate, seq: int) -> bool:
    """Whether another request wrote step `seq` since `gate` read the journal."""
    read = gate.journal.get(seq)
    now = Action.objects.filter(run=gate.run, seq=seq).values_list("status", "attempts").first()
    return now is not None and (read is None or (read.status, read.attempts) != now)


def _status(run: Run) -> str:
    return Run.objects.filter(pk=run.pk).values_list("status", flat=True).first() or "gone"


def remote_action_submit(
    *,
    run: Run,
    seq: int,
    tool: str,
    args: dict[str, Any],
    tools: Callable[[str], Tool] = get_tool,
) -> dict[str, Any]:
    """The gateway's decision on step `seq`: allow (run it now), deny, shadow (here is the
    simulated result), pending (wait for people), retry (rate limit), paused or halted.
    Submitting the same step again returns its current state. `tools` looks tool names
    up where they are not in the registry (agents.mcp)."""
    gate = _gate(run, tools)
    if seq not in gate.journal:
        expected = max(gate.journal, default=0) + 1
        if seq != expected:
            raise Conflict(STEP_OUT_OF_ORDER.format(seq=seq, expected=expected))
    return _decide(gate, seq, tool, args)


def remote_action_poll(
    *, run: Run, seq: int, tools: Callable[[str], Tool] = get_tool
) -> dict[str, Any]:
    """The current state of a step; an approved step is admitted here, once."""
    gate = _gate(run, tools)
    action = gate.journal.get(seq)
    if action is None:
        raise NotFound(f"run {run.pk} has no step {seq}")
    return _decide(gate, seq, action.name, action.requested_args)


def remote_action_report(
    *, run: Run, seq: int, ok: bool, result: Any = None, error: str = ""
) -> dict[str, Any]:
    action = Action.objects.filter(run=run, seq=seq).first()
    if action is None:
        raise NotFound(f"run {run.pk} has no step {seq}")
    if action.status != S.STARTED:
        return _reported(action, ok, result, error)
    status, verb = (S.SUCCEEDED, Verb.ACTION_SUCCEEDED) if ok else (S.FAILED, Verb.ACTION_FAILED)
    value = plain_json(result) if ok else None
    try:
        store.finish_step(
            action=action,
            run=run,
            agent=run.agent,
            status=status,
            verb=verb,
            result=value,
            error="" if ok else error,
            actor=Actor.agent(run.agent),
            payload={
                "seq": seq,
                "tool": action.name,
                "status": status,
                "result": value,
                "error": error,
                "via": "api",
            },
        )
    except LeaseLost:
        # Another report of the step committed first (the same one, sent twice at once?).
        action.refresh_from_db()
        return _reported(action, ok, result, error)
    return describe(action)


def _reported(action: Action, ok: bool, result: Any, error: str) -> dict[str, Any]:
    """A report of a step that is no longer running: the same report again (after a lost
    answer, or sent twice at once) answers the step; another is 409."""
    same = (action.status == S.SUCCEEDED and ok and action.result == plain_json(result)) or (
        action.status == S.FAILED and not ok and action.error == error
    )
    if same:
        return describe(action)
    raise Conflict(STEP_NOT_OPEN.format(seq=action.seq, status=action.status))


def remote_run_finish(*, run: Run, output: Any = None, error: str = "") -> Run:
    open_step = run.actions.filter(status__in=Action.OPEN_STATUSES).first()
    if open_step is not None:
        raise Conflict(STEPS_STILL_OPEN.format(seq=open_step.seq, status=open_step.status))
    status = Run.Status.FAILED if error else Run.Status.SUCCEEDED
    with transaction.atomic():
        moved = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=status,
            output=None if error else plain_json(output),
            error=error,
            finished_at=timezone.now(),
            lease_token=None,
            wait_reason="",
            attempts=F("attempts"),
        )
        if not moved:
            raise Conflict(RUN_NOT_RUNNING.format(run=run.pk, status=_status(run)))
        audit_run(
            Verb.RUN_FAILED if error else Verb.RUN_SUCCEEDED,
            actor=Actor.agent(run.agent),
            run=run,
            payload={"error": error, "via": "api"}
            if error
            else {"output": plain_json(output), "via": "api"},
        )
    run.refresh_from_db()
    return run


# --- model calls, heartbeat, the agent's state ---------------------------------------------


def remote_model_record(
    *,
    run: Run,
    seq: int,
    model: str,
    purpose: str = "",
    tokens_in: int,
    tokens_out: int,
    cost_eur: float | None = None,
    output: Any = None,
) -> tuple[dict[str, Any], bool]:
    """Journal a model call the agent made itself as step `seq`, as a hosted agent's
    `ctx.model` journals its own (admitted first: a stopped run records nothing). Returns
    the step and whether it is new; the same call again returns the same step."""
    gate = _gate(run)
    request = {"purpose": purpose, "tokens_in": tokens_in, "tokens_out": tokens_out}
    existing = gate.journal.get(seq)
    if existing is not None:
        return _same_model_call(gate, existing, model, request, output), False
    expected = max(gate.journal, default=0) + 1
    if seq != expected:
        raise Conflict(STEP_OUT_OF_ORDER.format(seq=seq, expected=expected))
    storable(model, "model")
    meta = {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost_eur": cost_eur}
    now = timezone.now()
    try:
        with transaction.atomic():
            admit(gate)
            action = journal_row(
                gate,
                seq,
                Action.Kind.MODEL,
                model,
                request,
                status=S.SUCCEEDED,
                result=plain_json(output),
                meta=meta,
                started_at=now,
                finished_at=now,
            )
            audit_action(
                gate,
                Verb.MODEL_CALLED,
                action,
                model=model,
                purpose=purpose,
                output=action.result,
                via="api",
                **meta,
            )
    except Stopped as stopped:
        return _stop_answer(seq, stopped.mode, stopped.reason), False
    except LeaseLost:
        existing = Action.objects.filter(run=run, seq=seq).first()
        if existing is None:
            raise Conflict(RUN_NOT_RUNNING.format(run=run.pk, status=_status(run))) from None
        # The same call, sent twice at once: the other request journaled it first.
        return _same_model_call(gate, existing, model, request, output), False
    return describe(action), True


def _same_model_call(
    gate: Gate, existing: Action, model: str, request: dict[str, Any], output: Any
) -> dict[str, Any]:
    """The journal's step `existing` if it is this model call; 409 if it is another."""
    try:
        check_same(gate, existing, Action.Kind.MODEL, model, request)
    except Divergence:
        raise Conflict(SAME_STEP_DIFFERENT_CALL.format(seq=existing.seq)) from None
    if plain_json(output) != existing.result:
        raise Conflict(SAME_STEP_DIFFERENT_CALL.format(seq=existing.seq))
    return describe(existing)


def _stop_answer(seq: int, mode: str, reason: str) -> dict[str, Any]:
    return {"seq": seq, "decision": "paused" if mode == "pause" else "halted", "reason": reason}


def agent_state(agent: Agent) -> str:
    """active, paused or halted: the strongest kill switch covering the agent now."""
    modes = {switch.mode for switch in engaged_for(agent)}
    if KillSwitch.Mode.HALT in modes:
        return "halted"
    return "paused" if modes else "active"


def remote_heartbeat(*, run: Run) -> dict[str, Any]:
    """What a remote agent checks between steps: is its run still running, and may it go
    on (no pause or halt covering it). A read: nothing is written."""
    return {"run": run.pk, "status": _status(run), "agent_state": agent_state(run.agent)}


def remote_agent(key: ApiKey) -> dict[str, Any]:
    agent = key.agent
    live = agent.live_version.number if agent.live_version is not None else None
    return {
        "agent": agent.slug,
        "name": agent.name,
        "state": agent_state(agent),
        "live_version": live,
    }
