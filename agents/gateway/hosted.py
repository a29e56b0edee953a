"""Hosted agents: the `ctx` a program in Baton's workers calls (DESIGN section 4).

A tool step is decided by agents.gateway.core; here the worker executes an allowed tool
and finishes its step. A tool runs only after its action row is committed as `started`, so
a worker killed mid-step leaves a trace the next attempt follows instead of guessing. The
worker holds the run under a lease, renewed while it works and given up when a step waits
for people (the run goes `waiting` until a decision resumes it).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from opentelemetry import trace

from agents import store
from agents.errors import (
    TRANSIENT_FAULTS,
    ActionError,
    ActionRejected,
    ArgumentsInvalid,
    Delayed,
    LeaseLost,
    PolicyDenied,
    Stopped,
    Suspended,
    ToolFailed,
)
from agents.gateway.core import (
    Allow,
    Delay,
    Deny,
    Gate,
    Hold,
    Outcome,
    Recorded,
    Shadow,
    Stop,
    admit,
    audit_action,
    check_same,
    decide_step,
    journal_row,
    step_payload,
)
from agents.llm import get_model
from agents.models import Action, Run
from agents.policy import Policy
from agents.registry import ToolCall
from audit.jsonsafe import plain_json, scrubbed
from audit.services import audit_run
from audit.verbs import Verb

S = Action.Status


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


class Hosted:
    """The gateway adapter of a hosted run (agents.gateway.core.Adapter): Baton's worker
    executes the tools under the run's lease, a step that waits for people gives the lease
    up, and a replay takes up what an earlier execution left open."""

    resumes_open_steps = True

    def __init__(self, run_id: int, token: uuid.UUID) -> None:
        self.run_id, self.token = run_id, token
        self.lease = settings.BATON_RUN_LEASE_SECONDS
        self.renew_at = time.monotonic() + self.lease / 2
        self.heartbeat: LeaseHeartbeat | None = None

    def renew(self) -> None:
        if time.monotonic() >= self.renew_at:
            until = timezone.now() + timedelta(seconds=self.lease)
            if not Run.objects.filter(pk=self.run_id, lease_token=self.token).update(
                lease_until=until
            ):
                raise LeaseLost()
            self.renew_at = time.monotonic() + self.lease / 2

    def park(self, gate: Gate) -> None:
        """The run waits for people: its lease is given up (inside the step's transaction)."""
        parked = Run.objects.filter(pk=self.run_id, lease_token=self.token).update(
            status=Run.Status.WAITING,
            wait_reason=Run.WaitReason.APPROVAL,
            lease_token=None,
            lease_until=None,
        )
        if parked != 1:
            raise LeaseLost()
        gate.run.status = Run.Status.WAITING

    def parked(self, gate: Gate) -> None:
        audit_run(
            Verb.RUN_WAITING,
            actor=gate.actor,
            run=gate.run,
            payload={"why": "an action waits for approval"},
        )

    def executing(self) -> None:
        """A step (a tool or a model call) starts running: the lease is renewed while it
        runs, so no step outlives it and a second worker never takes over a run whose
        worker is alive and busy. Renewal stops at the task's hard time limit: past it the
        step is hung (Celery kills it in a prefork worker), the lease runs out and the
        sweep hands the run on.

        One heartbeat thread serves the whole execution, started at its first step and
        stopped by `close()`: a thread started and joined around every step cost more
        than the rest of a governed step (bench/gateway.py)."""
        if self.heartbeat is None:
            self.heartbeat = LeaseHeartbeat(self.run_id, self.token, self.lease)
            self.heartbeat.start()

    def executed(self) -> None:
        self.renew_at = time.monotonic() + self.lease / 2

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None


# OpenTelemetry spans of a run's steps: no-ops until the process installs an SDK tracer
# provider (README "Operations"). A held or refused step is an outcome, not an error: only
# a tool that raised marks its span failed.
_tracer = trace.get_tracer("baton.runtime")


def _step_span(seq: int, name: str) -> Any:
    return _tracer.start_as_current_span(
        "baton.step",
        attributes={"baton.step.seq": seq, "baton.step.name": name},
        record_exception=False,
        set_status_on_exception=False,
    )


class Context:
    """What a hosted agent program sees. Everything non-deterministic goes through it."""

    def __init__(self, run: Run, token: uuid.UUID, journal: dict[int, Action]) -> None:
        self.run = run
        self.agent = run.agent
        self.version = run.version
        self._hosted = Hosted(run.pk, token)
        self._gate = Gate(run, token, journal, self._hosted)
        self.policy: Policy = self._gate.policy
        self._seq = 0

    @property
    def config(self) -> dict[str, Any]:
        return self.version.config

    # --- the calls a program makes ----------------------------------------------------

    def tool(self, name: str, /, **args: Any) -> Any:
        self._seq += 1
        with _step_span(self._seq, name) as span:
            outcome = decide_step(self._gate, self._seq, name, args)
            span.set_attribute("baton.step.outcome", type(outcome).__name__.lower())
            if type(outcome) is Allow:
                try:
                    return self._execute(outcome)
                except Exception:
                    span.set_status(trace.StatusCode.ERROR)
                    raise
            return _answer(outcome)

    def model(self, prompt: str, *, purpose: str = "") -> Any:
        with _step_span(self._seq + 1, "model"):
            return self._model(prompt, purpose)

    def _model(self, prompt: str, purpose: str) -> Any:
        self._seq += 1
        seq = self._seq
        request = {"prompt": prompt, "purpose": purpose}
        existing = self._gate.journal.get(seq)
        if existing is not None:
            check_same(self._gate, existing, Action.Kind.MODEL, existing.name, request)
            return existing.result
        client = get_model(self.config.get("model", "scripted"))
        with transaction.atomic():
            admit(self._gate)  # a stopped run, or one another worker owns, calls no model
        started = timezone.now()
        self._hosted.executing()
        reply = client.complete(prompt=prompt, purpose=purpose, config=self.config)
        self._hosted.executed()
        meta = {k: reply.get(k) for k in ("tokens_in", "tokens_out", "cost_eur")}
        meta["rationale"] = reply.get("rationale", "")
        with transaction.atomic():
            admit(self._gate)
            action = journal_row(
                self._gate,
                seq,
                Action.Kind.MODEL,
                client.name,
                request,
                status=S.SUCCEEDED,
                result=plain_json(reply["output"]),
                meta=meta,
                started_at=started,
                finished_at=timezone.now(),
            )
            # The prompt and the answer go into the trail: what the agent was told is evidence.
            audit_action(
                self._gate,
                Verb.MODEL_CALLED,
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

    def close(self) -> None:
        """The execution is over (finished, parked or failed): stop renewing its lease."""
        self._hosted.close()

    # --- execution --------------------------------------------------------------------

    def _execute(self, allowed: Allow) -> Any:
        action, tool = allowed.action, allowed.tool
        call = ToolCall(action.args, action.idempotency_key, self.run.pk, self.agent.slug)
        try:
            self._hosted.executing()
            result = plain_json(tool.fn(call))
            self._hosted.executed()
        except TRANSIENT_FAULTS:
            # Not the tool's answer but the infrastructure's: the step stays `started` and
            # the run's retry follows the tool's idempotency, as after a worker's death.
            raise
        except Exception as exc:
            error = scrubbed(f"{type(exc).__name__}: {exc}")
            self._finish(action, S.FAILED, Verb.ACTION_FAILED, error=error)
            raise ToolFailed(tool.name, error) from exc
        self._finish(action, S.SUCCEEDED, Verb.ACTION_SUCCEEDED, result=result)
        return result

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
            actor=self._gate.actor,
            payload=step_payload(action.seq, action.name, status, result=result, error=error),
        )

    def _value(self, name: str, make: Any) -> Any:
        self._seq += 1
        existing = self._gate.journal.get(self._seq)
        if existing is not None:
            check_same(self._gate, existing, Action.Kind.VALUE, name, {})
            return existing.result
        value = make()
        with transaction.atomic():
            admit(self._gate)  # a value is a step: switches and the lease hold for it too
            action = journal_row(
                self._gate,
                self._seq,
                Action.Kind.VALUE,
                name,
                {},
                status=S.SUCCEEDED,
                result=value,
                finished_at=timezone.now(),
            )
            audit_action(self._gate, Verb.VALUE_RECORDED, action, value=value)
        return value


def _answer(outcome: Outcome) -> Any:
    """A step decided without executing it, as a program sees it: its value, or the
    exception the program's API raises."""
    match outcome:
        case Shadow(action):
            return action.result
        case Recorded(action) if action.status in (S.SUCCEEDED, S.SHADOWED):
            return action.result
        case Deny(action) | Recorded(action):
            raise _refusal(action)
        case Hold():
            raise Suspended()
        case Delay(retry_after, reason):
            raise Delayed(retry_after, reason)
        case Stop(mode, reason):
            raise Stopped(mode, reason)
    raise AssertionError(f"unexpected outcome {outcome!r}")


def _refusal(action: Action) -> ActionError:
    """The exception for a step that was refused, failed or rejected."""
    if action.status == S.FAILED:
        return ToolFailed(action.name, action.error)
    if action.status == S.INVALID:
        return ArgumentsInvalid(action.name, action.reason)
    if action.status == S.DENIED:
        return PolicyDenied(action.name, action.reason)
    return ActionRejected(action.name, action.error or action.reason)  # rejected, cancelled
