"""The gateway: every call a hosted agent makes through `ctx` passes here (DESIGN section 4).

Order of a tool step: kill switches and the run's own cancel flag, the journal (replay),
the policy, the rate limit; then the outcome is journaled and audited in one transaction.
A tool runs only after its action row is committed as `started`, so a worker killed
mid-step leaves a trace the next attempt follows instead of guessing.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from agents import ratelimit, store
from agents.approval_port import approvals
from agents.errors import (
    TRANSIENT_FAULTS,
    ActionRejected,
    ArgumentsInvalid,
    Delayed,
    Divergence,
    LeaseLost,
    PolicyDenied,
    Suspended,
    ToolFailed,
)
from agents.llm import get_model
from agents.models import Action, Run
from agents.policy import Policy, Verdict, policy_for_version
from agents.registry import Tool, ToolCall, UnknownTool, get_tool
from audit import verbs
from audit.chain import canonical_json_v1
from audit.jsonsafe import plain_json, scrubbed
from audit.services import Actor, audit_append, audit_run

S = Action.Status


def args_hash(args: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json_v1(args)).hexdigest()


def _jsonable(value: Any) -> Any:
    # Plain JSON the trail can store, or Unstorable (a ValueError) saying what is wrong.
    return plain_json(value)


class LeaseHeartbeat(threading.Thread):
    """Keeps a run's lease: every third of the lease, compare-and-set on the lease token,
    on a database connection of its own. Stops when told, when the lease is lost, or at
    the task's hard time limit."""

    def __init__(self, run_id: int, token: uuid.UUID, lease: float) -> None:
        super().__init__(name=f"lease-run-{run_id}", daemon=True)
        self.run_id, self.token, self.lease = run_id, token, lease
        self.until = time.monotonic() + float(settings.CELERY_TASK_TIME_LIMIT or 3600)
        self.halt = threading.Event()
        self.renewals = 0

    def run(self) -> None:
        try:
            while not self.halt.wait(self.lease / 3) and time.monotonic() < self.until:
                until = timezone.now() + timedelta(seconds=self.lease)
                try:
                    kept = Run.objects.filter(pk=self.run_id, lease_token=self.token).update(
                        lease_until=until
                    )
                except TRANSIENT_FAULTS:
                    connection.close()  # try again on a fresh connection next beat
                    continue
                if not kept:
                    return  # another worker owns the run; the step's outcome is fenced
                self.renewals += 1
        finally:
            connection.close()

    def stop(self) -> None:
        self.halt.set()
        self.join()


class Context:
    """What a hosted agent program sees. Everything non-deterministic goes through it."""

    def __init__(self, run: Run, token: uuid.UUID, journal: dict[int, Action]) -> None:
        self.run = run
        self.agent = run.agent
        self.version = run.version
        self.policy: Policy = policy_for_version(
            self.version.pk, json.dumps(self.version.policy, sort_keys=True)
        )
        self._token = token
        self._journal = journal
        self._seq = 0
        self._lease = settings.BATON_RUN_LEASE_SECONDS
        self._renew_at = time.monotonic() + self._lease / 2
        self._actor = Actor.agent(self.agent)
        self._heartbeat: LeaseHeartbeat | None = None

    @property
    def config(self) -> dict[str, Any]:
        return self.version.config

    # --- the calls a program makes ----------------------------------------------------

    def tool(self, name: str, /, **args: Any) -> Any:
        self._seq += 1
        existing = self._journal.get(self._seq)
        if existing is not None:
            return self._replay(existing, name, args)
        return self._new_tool_step(self._seq, name, args)

    def model(self, prompt: str, *, purpose: str = "") -> Any:
        self._seq += 1
        seq = self._seq
        request = {"prompt": prompt, "purpose": purpose}
        existing = self._journal.get(seq)
        if existing is not None:
            self._check_same(existing, Action.Kind.MODEL, existing.name, request)
            return existing.result
        client = get_model(self.config.get("model", "scripted"))
        with transaction.atomic():
            self._admit()  # a stopped run, or one another worker owns, calls no model
        started = timezone.now()
        with self._lease_held():
            reply = client.complete(prompt=prompt, purpose=purpose, config=self.config)
        meta = {k: reply.get(k) for k in ("tokens_in", "tokens_out", "cost_eur")}
        meta["rationale"] = reply.get("rationale", "")
        with transaction.atomic():
            self._admit()
            action = self._create(
                seq,
                Action.Kind.MODEL,
                client.name,
                request,
                request,
                status=S.SUCCEEDED,
                result=_jsonable(reply["output"]),
                meta=meta,
                started_at=started,
                finished_at=timezone.now(),
            )
            # The prompt and the answer go into the trail: what the agent was told is evidence.
            self._audit(
                verbs.MODEL_CALLED,
                action,
                model=client.name,
                purpose=purpose,
                prompt=prompt,
                output=action.result,
                **meta,
            )
        return action.result

    def now(self) -> datetime:
        value = self._value("now", lambda: timezone.now().isoformat())
        return datetime.fromisoformat(value)

    def random(self) -> float:
        return float(self._value("random", lambda: random.random()))  # noqa: S311  (not a secret)

    # --- replay -----------------------------------------------------------------------

    def _check_same(self, existing: Action, kind: str, name: str, args: dict[str, Any]) -> None:
        same_call = existing.kind == kind and existing.name == name
        if same_call and args_hash(existing.requested_args) == args_hash(_jsonable(args)):
            return
        raise Divergence(
            f"run {self.run.pk} diverged at step {existing.seq}: the journal holds "
            f"{existing.kind} {existing.name!r} with {existing.requested_args}, but the program "
            f"now asks for {kind} {name!r} with {_jsonable(args)}. Agent programs must be "
            "deterministic given their journal: use ctx.now() and ctx.random()."
        )

    def _replay(self, existing: Action, name: str, args: dict[str, Any]) -> Any:
        self._check_same(existing, Action.Kind.TOOL, name, args)
        status = existing.status
        if status in (S.SUCCEEDED, S.SHADOWED):
            return existing.result
        if status == S.FAILED:
            raise ToolFailed(name, existing.error)
        if status == S.INVALID:
            raise ArgumentsInvalid(name, existing.reason)
        if status == S.DENIED:
            raise PolicyDenied(name, existing.reason)
        if status in (S.REJECTED, S.CANCELLED):
            raise ActionRejected(name, existing.error or existing.reason)
        if status in (S.HELD, S.UNKNOWN):
            with transaction.atomic():
                self._admit()
                self._park_for_approval()
            raise Suspended()
        tool = get_tool(name)
        if status == S.APPROVED or tool.idempotent:
            # Approved: run it now. Started but never finished (the worker died): a tool
            # that takes an idempotency key is simply called again with the same key.
            return self._execute(
                existing.seq, tool, existing.args, existing.requested_args, None, existing
            )
        self._hold_unknown(existing)
        raise Suspended()

    # --- a new step -------------------------------------------------------------------

    def _new_tool_step(self, seq: int, name: str, args: dict[str, Any]) -> Any:
        try:
            requested = _jsonable(args)
        except (TypeError, ValueError) as exc:
            requested = {k: repr(v)[:200] for k, v in args.items()}
            return self._refuse(seq, name, requested, S.INVALID, f"arguments are not JSON: {exc}")
        try:
            tool = get_tool(name)
        except UnknownTool as exc:
            return self._refuse(seq, name, requested, S.DENIED, str(exc))
        errors = tool.argument_errors(requested)
        if errors:
            return self._refuse(seq, name, requested, S.INVALID, "; ".join(errors))
        verdict = self.policy.decide(name, requested)
        if verdict.effect == "deny":
            return self._refuse(seq, name, requested, S.DENIED, verdict.reason, verdict)
        if verdict.effect == "shadow":
            return self._shadow(seq, tool, requested, verdict)
        if verdict.effect == "approve":
            self._hold(seq, tool, requested, verdict)
            raise Suspended()
        limit = self.policy.rate_limit_for(name)
        if limit is not None:
            wait = ratelimit.take(self.agent.pk, limit)
            if wait:
                raise Delayed(wait, f"rate limit {limit.limit}/{limit.per}s for {limit.tool}")
        return self._execute(seq, tool, requested, requested, verdict, None)

    def _refuse(
        self,
        seq: int,
        name: str,
        args: dict[str, Any],
        status: str,
        reason: str,
        verdict: Verdict | None = None,
    ) -> Any:
        with transaction.atomic():
            self._admit()
            action = self._create(
                seq,
                Action.Kind.TOOL,
                name,
                args,
                args,
                status=status,
                reason=reason,
                decision=Action.Decision.DENY,
                verdict=verdict,
                finished_at=timezone.now(),
            )
            verb = verbs.ACTION_INVALID if status == S.INVALID else verbs.ACTION_DENIED
            self._audit(verb, action, args=args, reason=reason, rule=action.rule)
        if status == S.INVALID:
            raise ArgumentsInvalid(name, reason)
        raise PolicyDenied(name, reason)

    def _shadow(self, seq: int, tool: Tool, args: dict[str, Any], verdict: Verdict) -> Any:
        call = ToolCall(args, self._key(seq), self.run.pk, self.agent.slug)
        simulated = tool.simulate(call) if tool.simulate else {"simulated": True}
        with transaction.atomic():
            self._admit()
            action = self._create(
                seq,
                Action.Kind.TOOL,
                tool.name,
                args,
                args,
                status=S.SHADOWED,
                decision=Action.Decision.SHADOW,
                verdict=verdict,
                result=_jsonable(simulated),
                finished_at=timezone.now(),
            )
            self._audit(
                verbs.ACTION_SHADOWED, action, args=args, result=action.result, rule=action.rule
            )
        return action.result

    def _hold(self, seq: int, tool: Tool, args: dict[str, Any], verdict: Verdict) -> None:
        with transaction.atomic():
            self._admit()
            # The run is parked first: its row comes before the chain head (store.LOCK_ORDER).
            self._park()
            action = self._create(
                seq,
                Action.Kind.TOOL,
                tool.name,
                args,
                args,
                status=S.HELD,
                decision=Action.Decision.APPROVE,
                verdict=verdict,
            )
            self._audit(verbs.ACTION_HELD, action, args=args, rule=action.rule)
            approvals().open(action=action, tool=tool, rule=verdict.rule)
            self._audit_waiting()

    def _hold_unknown(self, existing: Action) -> None:
        with transaction.atomic():
            self._admit()
            self._park()  # the run's row before the action's (store.LOCK_ORDER)
            moved = Action.objects.filter(
                pk=existing.pk, status=S.STARTED, attempts=existing.attempts
            ).update(status=S.UNKNOWN, reason="the worker stopped mid-step; outcome unknown")
            if moved != 1:
                raise LeaseLost()
            existing.status = S.UNKNOWN
            self._audit(verbs.ACTION_UNKNOWN, existing, args=existing.args)
            approvals().open(action=existing, tool=get_tool(existing.name), rule=None)
            self._audit_waiting()

    # --- execution --------------------------------------------------------------------

    def _execute(
        self,
        seq: int,
        tool: Tool,
        args: dict[str, Any],
        requested: dict[str, Any],
        verdict: Verdict | None,
        existing: Action | None,
    ) -> Any:
        action = self._start(seq, tool, args, requested, verdict, existing)
        call = ToolCall(args, action.idempotency_key, self.run.pk, self.agent.slug)
        try:
            with self._lease_held():
                result = _jsonable(tool.fn(call))
        except TRANSIENT_FAULTS:
            # Not the tool's answer but the infrastructure's: the step stays `started` and
            # the run's retry follows the tool's idempotency, as after a worker's death.
            raise
        except Exception as exc:
            error = scrubbed(f"{type(exc).__name__}: {exc}")
            self._finish(action, S.FAILED, verbs.ACTION_FAILED, error=error)
            raise ToolFailed(tool.name, error) from exc
        self._finish(action, S.SUCCEEDED, verbs.ACTION_SUCCEEDED, result=result)
        return result

    def _start(
        self,
        seq: int,
        tool: Tool,
        args: dict[str, Any],
        requested: dict[str, Any],
        verdict: Verdict | None,
        existing: Action | None,
    ) -> Action:
        """Admit the step and journal it as `started`, committed before anything runs."""
        if existing is None:
            rule = verdict.rule if verdict else None
            self._maybe_renew()
            action = store.start_step(
                run=self.run,
                token=self._token,
                agent=self.agent,
                seq=seq,
                name=tool.name,
                requested=requested,
                args=args,
                args_hash=args_hash(args),
                rule_index=rule.index if rule else None,
                rule=rule.describe() if rule else None,
                reason=verdict.reason if verdict else "",
                key=self._key(seq),
                actor=self._actor,
                payload=self._payload(
                    seq,
                    tool.name,
                    Action.Status.STARTED,
                    args=args,
                    rule=rule.describe() if rule else None,
                    attempt=1,
                ),
            )
            self._journal[seq] = action
        else:
            action = existing
            with transaction.atomic():
                self._admit()
                moved = Action.objects.filter(
                    pk=action.pk, status=action.status, attempts=action.attempts
                ).update(status=S.STARTED, attempts=F("attempts") + 1, started_at=timezone.now())
                if moved != 1:
                    raise LeaseLost()
                verb = verbs.ACTION_ALLOWED if action.status == S.APPROVED else verbs.ACTION_RETRIED
                action.status, action.attempts = S.STARTED, action.attempts + 1
                self._audit(verb, action, args=args, rule=action.rule, attempt=action.attempts)
        return action

    def _finish(
        self, action: Action, status: str, verb: str, *, result: Any = None, error: str = ""
    ) -> None:
        store.finish_step(
            action=action,
            run=self.run,
            agent=self.agent,
            status=status,
            verb=verb,
            result=result,
            error=error,
            actor=self._actor,
            payload=self._payload(action.seq, action.name, status, result=result, error=error),
        )

    # --- the run's lease, switches and journal rows ------------------------------------

    def _admit(self) -> None:
        """Inside the step's transaction: refuse if the run was cancelled, another worker
        owns it, or a kill switch covers it. Serialises with engage (agents.killswitches)."""
        store.admit(self.run.pk, self._token, self.agent)
        self._maybe_renew()

    def _maybe_renew(self) -> None:
        if time.monotonic() >= self._renew_at:
            until = timezone.now() + timedelta(seconds=self._lease)
            if not Run.objects.filter(pk=self.run.pk, lease_token=self._token).update(
                lease_until=until
            ):
                raise LeaseLost()
            self._renew_at = time.monotonic() + self._lease / 2

    @contextmanager
    def _lease_held(self) -> Iterator[None]:
        """Renew the run's lease while a step (a tool or a model call) runs, so no step
        outlives it: a second worker never takes over a run whose worker is alive and busy.
        Renewal stops at the task's hard time limit: past it the step is hung (Celery kills
        it in a prefork worker), the lease runs out and the sweep hands the run on.

        One heartbeat thread serves the whole execution, started at its first step and
        stopped by `close()`: a thread started and joined around every step cost more
        than the rest of a governed step (bench/gateway.py)."""
        if self._heartbeat is None:
            self._heartbeat = LeaseHeartbeat(self.run.pk, self._token, self._lease)
            self._heartbeat.start()
        yield
        self._renew_at = time.monotonic() + self._lease / 2

    def close(self) -> None:
        """The execution is over (finished, parked or failed): stop renewing its lease."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _park_for_approval(self) -> None:
        self._park()
        self._audit_waiting()

    def _park(self) -> None:
        """The run waits for people: its lease is given up (inside the step's transaction)."""
        parked = Run.objects.filter(pk=self.run.pk, lease_token=self._token).update(
            status=Run.Status.WAITING,
            wait_reason=Run.WaitReason.APPROVAL,
            lease_token=None,
            lease_until=None,
        )
        if parked != 1:
            raise LeaseLost()
        self.run.status = Run.Status.WAITING

    def _audit_waiting(self) -> None:
        audit_run(
            verbs.RUN_WAITING,
            actor=self._actor,
            run=self.run,
            payload={"why": "an action waits for approval"},
        )

    def _key(self, seq: int) -> str:
        return f"baton-run{self.run.pk}-step{seq}"

    def _create(
        self,
        seq: int,
        kind: str,
        name: str,
        requested: dict[str, Any],
        args: dict[str, Any],
        *,
        status: str,
        verdict: Verdict | None = None,
        **fields: Any,
    ) -> Action:
        rule = verdict.rule.describe() if verdict and verdict.rule else None
        if verdict is not None:
            fields.setdefault("reason", verdict.reason)
        try:
            action = Action.objects.create(
                run=self.run,
                seq=seq,
                kind=kind,
                name=name,
                requested_args=requested,
                args=args,
                args_hash=args_hash(args),
                status=status,
                rule_index=verdict.rule.index if verdict and verdict.rule else None,
                rule=rule,
                idempotency_key=self._key(seq),
                **fields,
            )
        except IntegrityError:
            # Another worker wrote this step first: it owns the run now.
            raise LeaseLost() from None
        self._journal[seq] = action
        return action

    def _value(self, name: str, make: Any) -> Any:
        self._seq += 1
        existing = self._journal.get(self._seq)
        if existing is not None:
            self._check_same(existing, Action.Kind.VALUE, name, {})
            return existing.result
        value = make()
        with transaction.atomic():
            self._admit()  # a value is a step: switches and the lease hold for it too
            action = self._create(
                self._seq,
                Action.Kind.VALUE,
                name,
                {},
                {},
                status=S.SUCCEEDED,
                result=value,
                finished_at=timezone.now(),
            )
            self._audit(verbs.VALUE_RECORDED, action, value=value)
        return value

    def _payload(self, seq: int, name: str, status: str, **details: Any) -> dict[str, Any]:
        return {"seq": seq, "tool": name, "status": status, **details}

    def _audit(self, verb: str, action: Action, **details: Any) -> None:
        payload = self._payload(action.seq, action.name, action.status, **details)
        audit_append(
            store.action_event(verb, self._actor, self.run, self.agent, action.seq, payload)
        )
