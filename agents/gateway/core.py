"""The gateway's decision on a tool step, one function for hosted and remote agents alike.

`decide_step` takes a step through the journal (replay), the argument schema, the policy
and the rate limit, journals and audits what it decided in one transaction each, and
returns the outcome as a value: Allow (the step is journaled `started`, committed: run it
now), Deny, Shadow, Hold, Delay, Stop, or Recorded (the journal already holds this step's
outcome). Every write is admitted first (kill switches, the run's cancel flag and its
lease: agents.store), inside its transaction.

Hosted and remote agents differ only in who executes the tool and in how a run waits for
people. The caller says which with an `Adapter`: the hosted one (agents.gateway.hosted)
keeps the worker's lease, gives it up when a step waits and resumes what an earlier
execution left open; the remote one (agents.remote) holds no lease, keeps the run running
while a step waits, and leaves open steps to the agent that holds them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import ratelimit, store
from agents.approval_port import approvals
from agents.errors import Divergence, LeaseLost, Stopped
from agents.models import Action, AgentVersion, Run, ShadowDecision
from agents.policy import Policy, Verdict, policy_of
from agents.registry import Tool, ToolCall, UnknownTool, get_tool
from audit.chain import canonical_json_v1
from audit.jsonsafe import plain_json, scrubbed
from audit.services import Actor, audit_append
from audit.verbs import Verb

S = Action.Status


def args_hash(args: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json_v1(args)).hexdigest()


# --- outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allow:
    """The step is admitted and journaled `started` (committed): execute `tool` with
    `action.args` and `action.idempotency_key`, then finish the step."""

    action: Action
    tool: Tool


@dataclass(frozen=True, slots=True)
class Deny:
    """Refused and journaled: `action.status` is `invalid` (arguments) or `denied` (the
    policy, or no such tool); `action.reason` and `action.rule` say why."""

    action: Action


@dataclass(frozen=True, slots=True)
class Shadow:
    """Not executed: `action.result` is the tool's simulated answer."""

    action: Action


@dataclass(frozen=True, slots=True)
class Hold:
    """The step waits for people (`held`, or `unknown` after a lost worker); the run is
    parked as the adapter parks it."""

    action: Action


@dataclass(frozen=True, slots=True)
class Delay:
    """A rate limit: nothing was journaled; ask again after `retry_after` seconds."""

    retry_after: float
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    """A kill switch or a cancel covers the run. mode: 'pause', 'halt' or 'cancel'."""

    mode: str
    reason: str


@dataclass(frozen=True, slots=True)
class Recorded:
    """The journal already holds this step's outcome; `action` is its row, unchanged."""

    action: Action


Outcome = Allow | Deny | Shadow | Hold | Delay | Stop | Recorded


# --- who executes --------------------------------------------------------------------------


class Adapter(Protocol):
    """What differs between hosted and remote agents."""

    # True where a step found open in the journal (started, held, approved, unknown) was
    # left by an execution that has ended, so this call takes it up again (hosted: the
    # program replays after a worker died or the run was parked). False where the agent
    # executing the steps still holds them: only an approved step is taken up (remote).
    resumes_open_steps: bool

    def renew(self) -> None:
        """Keep the run's lease at an admission (hosted), or nothing (remote)."""

    def park(self, gate: Gate) -> None:
        """The run waits for people; inside the step's transaction, before its action row
        (store.LOCK_ORDER)."""

    def parked(self, gate: Gate) -> None:
        """After the step's events: the run's own event, if parking changed its state."""


class Gate:
    """One run's passage through the gateway: its journal, its policy, who executes."""

    __slots__ = (
        "run",
        "agent",
        "token",
        "journal",
        "policy",
        "shadow",
        "actor",
        "adapter",
        "tools",
    )

    def __init__(
        self,
        run: Run,
        token: uuid.UUID,
        journal: dict[int, Action],
        adapter: Adapter,
        tools: Callable[[str], Tool] = get_tool,
    ) -> None:
        self.run = run
        self.agent = run.agent
        self.token = token
        self.journal = journal
        self.policy: Policy = policy_of(run.version)
        self.shadow = shadow_of(run)
        self.actor = Actor.agent(self.agent)
        self.adapter = adapter
        # Where tool names are looked up: the registry, or the agent's own catalogue
        # where its tools are not Baton's code (agents.mcp: an agent's upstream servers).
        self.tools = tools


def shadow_of(run: Run) -> tuple[int, Policy] | None:
    """The agent's shadow version and its policy, when the run is on the live version and
    the agent has one (agents.rollout): read once per execution, and free without one
    (the agent's row is already loaded)."""
    agent = run.agent
    if agent.shadow_version_id is None or run.version_id != agent.live_version_id:
        return None
    version = AgentVersion.objects.filter(pk=agent.shadow_version_id).first()
    return (version.pk, policy_of(version)) if version is not None else None


# --- the decision --------------------------------------------------------------------------


def decide_step(gate: Gate, seq: int, name: str, args: dict[str, Any]) -> Outcome:
    """Decide tool step `seq`: a new step is checked, journaled and audited; a journaled
    one is replayed. Raises Divergence when the journal holds another call at `seq`, and
    LeaseLost when another worker owns the run."""
    try:
        existing = gate.journal.get(seq)
        if existing is not None:
            return _replay(gate, existing, name, args)
        return _new_step(gate, seq, name, args)
    except Stopped as stopped:  # admission refused (agents.store): nothing was written
        return Stop(stopped.mode, stopped.reason)


def check_same(gate: Gate, existing: Action, kind: str, name: str, args: dict[str, Any]) -> None:
    """Raise Divergence unless the journal's step `existing` is this call."""
    same_call = existing.kind == kind and existing.name == name
    if same_call and args_hash(existing.requested_args) == args_hash(plain_json(args)):
        return
    raise Divergence(
        f"run {gate.run.pk} diverged at step {existing.seq}: the journal holds "
        f"{existing.kind} {existing.name!r} with {existing.requested_args}, but the program "
        f"now asks for {kind} {name!r} with {plain_json(args)}. Agent programs must be "
        "deterministic given their journal: use ctx.now() and ctx.random()."
    )


def _replay(gate: Gate, existing: Action, name: str, args: dict[str, Any]) -> Outcome:
    check_same(gate, existing, Action.Kind.TOOL, name, args)
    status = existing.status
    if status not in Action.OPEN_STATUSES:
        return Recorded(existing)
    if status != S.APPROVED and not gate.adapter.resumes_open_steps:
        return Recorded(existing)  # the agent holds it, or people decide it
    if status in Action.UNDECIDED:
        with transaction.atomic():
            admit(gate)
            gate.adapter.park(gate)
            gate.adapter.parked(gate)
        return Hold(existing)
    tool = gate.tools(name)
    if status == S.APPROVED or tool.idempotent:
        # Approved: run it now. Started but never finished (the worker died): a tool
        # that takes an idempotency key is simply called again with the same key.
        return Allow(_restart(gate, existing), tool)
    return Hold(_hold_unknown(gate, existing))


def _new_step(gate: Gate, seq: int, name: str, args: dict[str, Any]) -> Outcome:
    try:
        requested = plain_json(args)
    except (TypeError, ValueError) as exc:
        requested = _described(args)
        return _refuse(gate, seq, name, requested, S.INVALID, f"arguments are not JSON: {exc}")
    try:
        tool = gate.tools(name)
    except UnknownTool as exc:
        return _refuse(gate, seq, name, requested, S.DENIED, str(exc))
    errors = tool.argument_errors(requested)
    if errors:
        return _refuse(gate, seq, name, requested, S.INVALID, "; ".join(errors))
    verdict = gate.policy.decide(name, requested)
    if verdict.effect == "deny":
        return _refuse(gate, seq, name, requested, S.DENIED, verdict.reason, verdict)
    if verdict.effect == "shadow":
        return _shadow(gate, seq, tool, requested, verdict)
    if verdict.effect == "approve":
        return _hold(gate, seq, tool, requested, verdict)
    limit = gate.policy.rate_limit_for(name)
    if limit is not None:
        wait = ratelimit.take(gate.agent.pk, limit)
        if wait:
            return Delay(wait, f"rate limit {limit.limit}/{limit.per}s for {limit.tool}")
    if gate.shadow is not None:
        with transaction.atomic():  # the shadow decision commits with the step's row
            return Allow(_start(gate, seq, tool, requested, verdict), tool)
    return Allow(_start(gate, seq, tool, requested, verdict), tool)


def _described(args: dict[str, Any]) -> dict[str, str]:
    """Arguments that are not JSON, as the journal of their refusal holds them: each name
    as text and each value by its repr, escaped (a NUL or a lone surrogate, in a name too,
    would make the journal row itself unstorable) and cut to 200 characters."""
    return {
        scrubbed(k if isinstance(k, str) else repr(k))[:200]: scrubbed(repr(v))[:200]
        for k, v in args.items()
    }


def shadow_record(gate: Gate, action: Action) -> None:
    """Inside the step's transaction, after its journal row: what the shadow version's
    policy decides for the same call, recorded beside the step and never executed. Only
    steps the live policy decided get one (not invalid arguments or unknown tools)."""
    if gate.shadow is None:
        return
    version_id, policy = gate.shadow
    verdict = policy.decide(action.name, action.requested_args)
    rule = verdict.rule
    ShadowDecision.objects.create(
        action=action,
        agent=gate.agent,
        version_id=version_id,
        effect=verdict.effect,
        rule_index=rule.index if rule else None,
        rule=rule.describe() if rule else None,
        reason=verdict.reason,
    )


# --- what each outcome writes ----------------------------------------------------------------


def _refuse(
    gate: Gate,
    seq: int,
    name: str,
    args: dict[str, Any],
    status: str,
    reason: str,
    verdict: Verdict | None = None,
) -> Deny:
    with transaction.atomic():
        admit(gate)
        action = journal_row(
            gate,
            seq,
            Action.Kind.TOOL,
            name,
            args,
            status=status,
            reason=reason,
            decision=Action.Decision.DENY,
            verdict=verdict,
            finished_at=timezone.now(),
        )
        if verdict is not None:
            shadow_record(gate, action)
        verb = Verb.ACTION_INVALID if status == S.INVALID else Verb.ACTION_DENIED
        audit_action(gate, verb, action, args=args, reason=reason, rule=action.rule)
    return Deny(action)


def _shadow(gate: Gate, seq: int, tool: Tool, args: dict[str, Any], verdict: Verdict) -> Shadow:
    call = ToolCall(args, idempotency_key(gate, seq), gate.run.pk, gate.agent.slug)
    simulated = tool.simulate(call) if tool.simulate else {"simulated": True}
    with transaction.atomic():
        admit(gate)
        action = journal_row(
            gate,
            seq,
            Action.Kind.TOOL,
            tool.name,
            args,
            status=S.SHADOWED,
            decision=Action.Decision.SHADOW,
            verdict=verdict,
            result=plain_json(simulated),
            finished_at=timezone.now(),
        )
        shadow_record(gate, action)
        audit_action(
            gate, Verb.ACTION_SHADOWED, action, args=args, result=action.result, rule=action.rule
        )
    return Shadow(action)


def _hold(gate: Gate, seq: int, tool: Tool, args: dict[str, Any], verdict: Verdict) -> Hold:
    with transaction.atomic():
        admit(gate)
        # The run is parked first: its row comes before the chain head (store.LOCK_ORDER).
        gate.adapter.park(gate)
        action = journal_row(
            gate,
            seq,
            Action.Kind.TOOL,
            tool.name,
            args,
            status=S.HELD,
            decision=Action.Decision.APPROVE,
            verdict=verdict,
        )
        shadow_record(gate, action)
        audit_action(gate, Verb.ACTION_HELD, action, args=args, rule=action.rule)
        approvals().open(action=action, tool=tool, rule=verdict.rule)
        gate.adapter.parked(gate)
    return Hold(action)


def _hold_unknown(gate: Gate, existing: Action) -> Action:
    with transaction.atomic():
        admit(gate)
        gate.adapter.park(gate)  # the run's row before the action's (store.LOCK_ORDER)
        moved = Action.objects.filter(
            pk=existing.pk, status=S.STARTED, attempts=existing.attempts
        ).update(status=S.UNKNOWN, reason="the worker stopped mid-step; outcome unknown")
        if moved != 1:
            raise LeaseLost()
        existing.status = S.UNKNOWN
        audit_action(gate, Verb.ACTION_UNKNOWN, existing, args=existing.args)
        approvals().open(action=existing, tool=gate.tools(existing.name), rule=None)
        gate.adapter.parked(gate)
    return existing


def _start(gate: Gate, seq: int, tool: Tool, args: dict[str, Any], verdict: Verdict) -> Action:
    """Admit a new step and journal it as `started`, committed before anything runs."""
    rule = verdict.rule
    gate.adapter.renew()
    action = store.start_step(
        run=gate.run,
        token=gate.token,
        agent=gate.agent,
        seq=seq,
        name=tool.name,
        requested=args,
        args=args,
        args_hash=args_hash(args),
        rule_index=rule.index if rule else None,
        rule=rule.describe() if rule else None,
        reason=verdict.reason,
        key=idempotency_key(gate, seq),
        actor=gate.actor,
        payload=step_payload(
            seq,
            tool.name,
            Action.Status.STARTED,
            args=args,
            rule=rule.describe() if rule else None,
            attempt=1,
        ),
    )
    shadow_record(gate, action)
    gate.journal[seq] = action
    return action


def _restart(gate: Gate, action: Action) -> Action:
    """An approved step, or a started one whose tool is idempotent: `started` again,
    another attempt, committed before anything runs (one round trip on Postgres)."""
    verb = Verb.ACTION_ALLOWED if action.status == S.APPROVED else Verb.ACTION_RETRIED
    attempt = action.attempts + 1
    payload = step_payload(
        action.seq, action.name, S.STARTED, args=action.args, rule=action.rule, attempt=attempt
    )
    event = store.action_event(verb, gate.actor, gate.run, gate.agent, action.seq, payload)
    gate.adapter.renew()
    store.restart_step(action=action, run=gate.run, token=gate.token, agent=gate.agent, event=event)
    return action


# --- the run's admission and journal rows (also for hosted model calls and values) -----------


def admit(gate: Gate) -> None:
    """Inside the step's transaction: refuse (Stopped, LeaseLost) if the run was cancelled,
    another worker owns it, or a kill switch covers it. Serialises with engage
    (agents.killswitches)."""
    store.admit(gate.run.pk, gate.token, gate.agent)
    gate.adapter.renew()


def idempotency_key(gate: Gate, seq: int) -> str:
    return f"baton-run{gate.run.pk}-step{seq}"


def journal_row(
    gate: Gate,
    seq: int,
    kind: str,
    name: str,
    args: dict[str, Any],
    *,
    status: str,
    verdict: Verdict | None = None,
    **fields: Any,
) -> Action:
    """Journal a step decided here (its requested and its arguments are the same)."""
    rule = verdict.rule.describe() if verdict and verdict.rule else None
    if verdict is not None:
        fields.setdefault("reason", verdict.reason)
    try:
        action = Action.objects.create(
            run=gate.run,
            seq=seq,
            kind=kind,
            name=name,
            requested_args=args,
            args=args,
            args_hash=args_hash(args),
            status=status,
            rule_index=verdict.rule.index if verdict and verdict.rule else None,
            rule=rule,
            idempotency_key=idempotency_key(gate, seq),
            **fields,
        )
    except IntegrityError:
        # Another worker wrote this step first: it owns the run now.
        raise LeaseLost() from None
    gate.journal[seq] = action
    return action


def step_payload(seq: int, name: str, status: str, **details: Any) -> dict[str, Any]:
    return {"seq": seq, "tool": name, "status": status, **details}


def audit_action(gate: Gate, verb: str, action: Action, **details: Any) -> None:
    payload = step_payload(action.seq, action.name, action.status, **details)
    audit_append(store.action_event(verb, gate.actor, gate.run, gate.agent, action.seq, payload))
