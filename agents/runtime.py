"""Running a hosted agent: claim the run, replay its program against the journal, and
settle the run from how the program ended. Every transition is compare-and-set on the
run's lease token and writes its audit event in the same transaction."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Model, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from opentelemetry import trace

from agents.delivery import TASK as RUN_EXECUTE
from agents.errors import (
    TRANSIENT_FAULTS,
    Delayed,
    Divergence,
    GatewayStop,
    LeaseLost,
    Stopped,
    Suspended,
    transient_backoff,
)
from agents.gateway import Context
from agents.killswitches import engaged_for
from agents.models import Agent, AgentVersion, Run, Team
from agents.registry import get_program
from audit.jsonsafe import plain_json, scrubbed
from audit.services import SYSTEM, Actor, audit_run
from audit.verbs import Verb

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("baton.runtime")

ModelT = TypeVar("ModelT", bound=Model)


def enqueue(run_id: int, *, countdown: float | None = None) -> None:
    """Hand the run to a worker once the current transaction commits. Losing this message
    loses nothing: the sweep finds queued runs nobody picked up. Sent by name: the task
    (agents.tasks) imports the runtime, not the other way."""
    task = current_app.signature(RUN_EXECUTE, args=(run_id,))

    def send() -> None:
        if countdown:
            task.apply_async(countdown=countdown)
        else:
            task.apply_async()

    transaction.on_commit(send, robust=True)


def _claim(run_id: int, token: uuid.UUID, worker: str) -> Run | None:
    now = timezone.now()
    until = now + timedelta(seconds=settings.BATON_RUN_LEASE_SECONDS)
    # Durable, as every transition of the run's lease: other workers and the sweep judge
    # the run by what has committed.
    with transaction.atomic(durable=True):
        if connection.vendor == "postgresql":
            run = _claim_returning(run_id, token, worker, now, until)
        else:
            run = _claim_orm(run_id, token, worker, now, until)
        if run is None:
            return None
        audit_run(
            Verb.RUN_STARTED,
            actor=SYSTEM,
            run=run,
            payload={"attempt": run.attempts},
        )
    return run


def _claim_orm(
    run_id: int, token: uuid.UUID, worker: str, now: datetime, until: datetime
) -> Run | None:
    claimed = (
        Run.objects.filter(pk=run_id, status__in=Run.ACTIVE)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .due(now)
        .update(
            status=Run.Status.RUNNING,
            wait_reason="",
            wake_at=None,
            lease_token=token,
            lease_until=until,
            attempts=F("attempts") + 1,
            worker=worker,
            started_at=Coalesce("started_at", now),
        )
    )
    if not claimed:
        return None
    return Run.objects.select_related("agent__team", "version").get(pk=run_id)


def _columns(model: type[Model], alias: str) -> str:
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


# `_claim_orm` as one statement: the UPDATE, and the run as it now is with its agent, team
# and version (what the replay reads), without a second round trip. The same conditions:
# an active run whose lease is free and that no delay holds back.
_CLAIM = f"""
WITH c AS (
    UPDATE agents_run SET status = %(running)s, wait_reason = '', wake_at = NULL,
        lease_token = %(token)s, lease_until = %(until)s, attempts = attempts + 1,
        worker = %(worker)s, started_at = COALESCE(started_at, %(now)s)
    WHERE id = %(run)s AND status = ANY(%(active)s)
      AND (lease_until IS NULL OR lease_until < %(now)s)
      AND (wake_at IS NULL OR wake_at <= %(now)s)
    RETURNING *)
SELECT {_columns(Run, "c")}, {_columns(Agent, "a")}, {_columns(Team, "t")},
       {_columns(AgentVersion, "v")}
  FROM c JOIN agents_agent a ON a.id = c.agent_id JOIN agents_team t ON t.id = a.team_id
  JOIN agents_agentversion v ON v.id = c.version_id"""  # noqa: S608 (names from the models)


def _claim_returning(
    run_id: int, token: uuid.UUID, worker: str, now: datetime, until: datetime
) -> Run | None:
    params: dict[str, Any] = {
        "running": Run.Status.RUNNING,
        "token": token,
        "until": until,
        "worker": worker,
        "now": now,
        "run": run_id,
        "active": [str(status) for status in Run.ACTIVE],
    }
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = iter(row)
    run = _from_row(Run, values)
    agent = _from_row(Agent, values)
    team = _from_row(Team, values)
    version = _from_row(AgentVersion, values)
    agent.team = team
    run.agent, run.version = agent, version
    return run


def _from_row(model: type[ModelT], values: Iterator[Any]) -> ModelT:
    """One model's instance from its columns in a row, as the ORM would load it."""
    fields = model._meta.concrete_fields
    loaded = []
    for field in fields:
        value = next(values)
        convert = getattr(field, "from_db_value", None)
        loaded.append(value if convert is None else convert(value, None, connection))
    return model.from_db(connection.alias, [f.attname for f in fields], loaded)


def _settle(run: Run, token: uuid.UUID, verb: Verb, payload: dict[str, Any], **fields: Any) -> None:
    with transaction.atomic(durable=True):
        moved = Run.objects.filter(pk=run.pk, lease_token=token).update(
            lease_token=None, lease_until=None, **fields
        )
        if moved:
            audit_run(
                verb,
                actor=Actor.agent(run.agent),
                run=run,
                payload=payload,
            )
            if fields.get("status") == Run.Status.QUEUED:
                enqueue(run.pk, countdown=payload.get("countdown"))


def execute_run(run_id: int, *, worker: str = "") -> None:
    """Execute (or resume) a run. Safe to call any number of times for the same run.

    A transient fault (agents.errors.TRANSIENT_FAULTS) never fails the run: it is queued
    again with back-off, audited as delayed; where even that cannot be written, the fault
    is raised for the task to retry, and the run's lease runs out for the sweep."""
    token = uuid.uuid4()
    run = _claim(run_id, token, worker)
    if run is None:
        return  # finished, waiting, owned by a live worker, or not due yet
    # Every line logged while the run executes carries its ids (JSON logs: console.logs),
    # and its steps are spans of one trace (OpenTelemetry, where a provider is installed).
    ids: dict[str, int | str] = {
        "run_id": run.pk,
        "agent_id": run.agent_id,
        "agent": run.agent.slug,
    }
    with (
        structlog.contextvars.bound_contextvars(**ids),
        _tracer.start_as_current_span(
            "baton.run", attributes={f"baton.{k}": v for k, v in ids.items()}
        ),
    ):
        try:
            _drive(run, token)
        except TRANSIENT_FAULTS as fault:
            log.warning("run %s: transient fault, retrying: %r", run_id, fault)
            _retry_later(run, token, fault)


def _retry_later(run: Run, token: uuid.UUID, fault: BaseException) -> None:
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()  # a dropped connection is opened anew
    countdown = transient_backoff(run.attempts)
    reason = f"transient fault: {type(fault).__name__}: {str(fault).strip()[:200]}"
    try:
        _settle(
            run,
            token,
            Verb.RUN_DELAYED,
            {"reason": reason, "countdown": countdown},
            status=Run.Status.QUEUED,
            wait_reason="",
            wake_at=timezone.now() + timedelta(seconds=countdown),
            enqueued_at=timezone.now(),
        )
    except TRANSIENT_FAULTS:
        raise fault from None


def _drive(run: Run, token: uuid.UUID) -> None:
    """Replay the run's program, then settle the run from how the program ended."""
    try:
        output = _replay(run, token)
    except Suspended:
        return  # the run waits for people: the gateway parked it in the step's transaction
    except LeaseLost:
        log.info("run %s: lease lost to another worker", run.pk)
        return
    except Delayed as d:
        _delay(run, token, d)
    except Stopped as s:
        _stop(run, token, s)
    except Divergence as d:
        _fail(run, token, str(d))
    except GatewayStop:
        raise
    except TRANSIENT_FAULTS:
        raise
    except Exception as exc:
        log.exception("run %s failed", run.pk)
        _fail(run, token, scrubbed(f"{type(exc).__name__}: {exc}"))
    else:
        _succeed(run, token, output)


def _replay(run: Run, token: uuid.UUID) -> Any:
    """Run the program against the run's journal: steps it already took are answered from
    the journal, new ones go through the gateway. Returns the program's output, or raises
    how the run stops (agents.errors)."""
    for switch in engaged_for(run.agent):
        raise Stopped(switch.mode, f"{switch.mode} by kill switch on {switch.target}")
    program = get_program(run.version.program)
    journal = {a.seq: a for a in run.actions.all()}
    ctx = Context(run, token, journal)
    try:
        return program(ctx, run.input)
    finally:
        ctx.close()


def _delay(run: Run, token: uuid.UUID, delayed: Delayed) -> None:
    """A rate limit: queued again, due once the countdown has passed."""
    _settle(
        run,
        token,
        Verb.RUN_DELAYED,
        {"reason": delayed.reason, "countdown": delayed.countdown},
        status=Run.Status.QUEUED,
        wait_reason=Run.WaitReason.RATE_LIMIT,
        wake_at=timezone.now() + timedelta(seconds=delayed.countdown),
        enqueued_at=timezone.now(),
    )


def _stop(run: Run, token: uuid.UUID, stopped: Stopped) -> None:
    """A kill switch: a pause parks the run, a halt cancels it. A cancel was settled by
    whoever cancelled the run."""
    if stopped.mode == "pause":
        _settle(
            run,
            token,
            Verb.RUN_PAUSED,
            {"reason": stopped.reason},
            status=Run.Status.WAITING,
            wait_reason=Run.WaitReason.PAUSED,
        )
    elif stopped.mode == "halt":
        _settle(
            run,
            token,
            Verb.RUN_CANCELLED,
            {"reason": stopped.reason},
            status=Run.Status.CANCELLED,
            error=stopped.reason,
            finished_at=timezone.now(),
        )


def _succeed(run: Run, token: uuid.UUID, output: Any) -> None:
    try:
        result = plain_json(output)
    except (TypeError, ValueError):
        _fail(run, token, "the program returned a value that is not JSON")
        return
    _settle(
        run,
        token,
        Verb.RUN_SUCCEEDED,
        {"output": result},
        status=Run.Status.SUCCEEDED,
        output=result,
        finished_at=timezone.now(),
    )


def _fail(run: Run, token: uuid.UUID, error: str) -> None:
    _settle(
        run,
        token,
        Verb.RUN_FAILED,
        {"error": error},
        status=Run.Status.FAILED,
        error=error,
        finished_at=timezone.now(),
    )
