from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone

from audit.chain import canonical_content
from audit.jsonsafe import check_text, plain_json
from audit.models import AuditEvent, PendingEvent
from audit.sequencer import after_append, chain_queued, inline
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


@dataclass(frozen=True)
class Actor:
    type: str
    id: int | None
    label: str

    @classmethod
    def user(cls, user: AbstractBaseUser | AnonymousUser) -> Actor:
        return cls(AuditEvent.ActorType.USER, user.pk, user.get_username())

    @classmethod
    def agent(cls, agent: Any) -> Actor:
        return cls(AuditEvent.ActorType.AGENT, agent.pk, agent.slug)

    @classmethod
    def of(cls, user: AbstractBaseUser | AnonymousUser | None) -> Actor:
        """Who made a change: the signed-in person, or Baton itself where nobody did (a
        command, a task, a test's setup)."""
        return SYSTEM if user is None else cls.user(user)


SYSTEM = Actor(AuditEvent.ActorType.SYSTEM, None, "baton")


def _plain(payload: dict[str, Any]) -> dict[str, Any]:
    # The stored payload must hash the same when read back, so it is normalised to plain
    # JSON once here (Decimals and dates become strings, tuples lists). Boundaries refuse
    # what the trail cannot store before they change anything; this is the last check.
    plain: dict[str, Any] = plain_json(payload, "payload")
    return plain


def _verb(verb: str) -> str:
    # The member's plain text: what the trail stores and hashes is the string, never the
    # enum (a Verb is a str already; this also refuses a verb outside the vocabulary).
    try:
        return Verb(verb).value
    except ValueError:
        raise ValueError(f"unknown audit verb {verb!r}") from None


def _column(name: str, value: object) -> str:
    """The text of a content field the pages read from a column of that length."""
    column = getattr(AuditEvent._meta.get_field(name), "output_field", None)
    return check_text(str(value), name, getattr(column, "max_length", None))


def event_content(
    *,
    verb: str,
    actor: Actor,
    subject_type: str,
    subject_id: object,
    agent_id: int | None = None,
    team_id: int | None = None,
    run_id: int | None = None,
    payload: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """An event's content fields, as hashed (see audit.chain)."""
    return {
        "occurred_at": occurred_at or timezone.now(),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_label": _column("actor_label", actor.label),
        "verb": _verb(verb),
        "subject_type": _column("subject_type", subject_type),
        "subject_id": _column("subject_id", subject_id),
        "agent_id": agent_id,
        "team_id": team_id,
        "run_id": run_id,
        "payload": _plain(payload or {}),
    }


# One round trip on Postgres (audit migrations 0008, 0009): the function queues the
# canonical bytes for the sequencer, or chains them at once when the session chains inline.
APPEND_SQL = "SELECT * FROM baton_audit_append(p_canonical => %(canonical)s)"


def audit_append(content: dict[str, Any]) -> int | None:
    """Write prepared content to the trail in the current transaction: queued for the
    sequencer (audit.sequencer), which chains it after commit — returns None — or, where
    writers chain inline, chained at once: returns its sequence number, and the writer
    holds the chain head until commit, so call it last in the transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("an audit event is written inside the transaction of its change")
    after_append(agent_id=content["agent_id"], team_id=content["team_id"])
    body = canonical_content(content)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(APPEND_SQL, {"canonical": body})
            seq = cursor.fetchone()[1]
        return None if seq is None else int(seq)
    return _append_sqlite(body)


def _append_sqlite(body: bytes) -> int | None:
    PendingEvent.objects.create(body=body.decode("utf-8"), queued_at=timezone.now())
    if inline():
        return chain_queued(limit=None).last_seq
    return None


def audit_flush() -> int:
    """Chain every committed queued event now, and return the head's sequence number: for
    a reader that must see its own event in the chain (an export ends on it). Serialised
    with the sequencer by the chain head's lock."""
    with transaction.atomic():
        batch = chain_queued(limit=None)
    return batch.last_seq


def record_content(
    *,
    verb: Verb,
    actor: Actor,
    subject_type: str,
    subject_id: object,
    agent: Any = None,
    team: Any = None,
    run: Any = None,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of one state change's event. It belongs to the agent's team, or to
    `team` for changes to a team itself (that is whose supervisors see it)."""
    return event_content(
        verb=verb,
        actor=actor,
        subject_type=subject_type,
        subject_id=subject_id,
        agent_id=agent.pk if agent is not None else None,
        team_id=agent.team_id if agent is not None else (team.pk if team else None),
        run_id=run.pk if run is not None else None,
        payload=payload,
    )


def audit_record(
    *,
    verb: Verb,
    actor: Actor,
    subject_type: str,
    subject_id: object,
    agent: Any = None,
    team: Any = None,
    run: Any = None,
    payload: dict[str, Any] | None = None,
) -> int | None:
    """Record one state change in the audit trail; returns the event's sequence number
    when it is chained at once (see audit_append)."""
    return audit_append(
        record_content(
            verb=verb,
            actor=actor,
            subject_type=subject_type,
            subject_id=subject_id,
            agent=agent,
            team=team,
            run=run,
            payload=payload,
        )
    )


def run_content(
    verb: Verb, *, actor: Actor, run: Any, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The content of a change of a run (queued, started, waiting, finished, …): the run
    is the subject and its agent's team sees it."""
    return record_content(
        verb=verb,
        actor=actor,
        subject_type="run",
        subject_id=run.pk,
        agent=run.agent,
        run=run,
        payload=payload,
    )


def audit_run(
    verb: Verb, *, actor: Actor, run: Any, payload: dict[str, Any] | None = None
) -> int | None:
    """Record a change of a run."""
    return audit_append(run_content(verb, actor=actor, run=run, payload=payload))


# Many events in one round trip and one INSERT, in order (a halt cancels hundreds of runs
# at once; audit migration 0012): one text, a body a line (canonical JSON has no raw line
# break: audit.chain escapes every control character in a string).
APPEND_MANY_SQL = "SELECT baton_audit_append_many(p_bodies => %(bodies)s)"


def audit_append_many(contents: list[dict[str, Any]]) -> None:
    """audit_append for many events of one transaction, in their order: one statement on
    Postgres however many there are."""
    audit_append_bodies(
        [canonical_content(content) for content in contents],
        owners=[(c["agent_id"], c["team_id"]) for c in contents],
    )


def audit_append_bodies(
    bodies: list[bytes], *, owners: Iterable[tuple[int | None, int | None]]
) -> None:
    """audit_append_many for events whose canonical bytes are made already (run_bodies):
    `owners` are the (agent_id, team_id) pairs of their content, for the doorbells."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("an audit event is written inside the transaction of its change")
    if not bodies:
        return
    if connection.vendor != "postgresql":
        for body in bodies:
            _append_sqlite(body)
    else:
        with connection.cursor() as cursor:
            lines = b"\n".join(bodies)
            if lines.count(b"\n") != len(bodies) - 1:
                raise ValueError("a canonical body holds a line break")
            cursor.execute(APPEND_MANY_SQL, {"bodies": lines.decode()})
    for agent_id, team_id in dict.fromkeys(owners):
        after_append(agent_id=agent_id, team_id=team_id)


# Marks standing for a run's ids in run_bodies' one content: integers a double holds
# exactly (so the canonical form writes them as they are), distinct in their last digits,
# and longer than any id, so one cannot be found inside another's text.
_MARKS: dict[str, int | str] = {
    "agent_id": 9_007_199_254_740_881,
    "team_id": 9_007_199_254_740_882,
    "run_id": 9_007_199_254_740_883,
    "subject_id": "9007199254740884",
}


def run_bodies(
    verb: Verb,
    *,
    actor: Actor,
    runs: Sequence[tuple[int, int, int | None]],
    payload: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> list[bytes]:
    """The canonical bytes of one event per run, (run id, agent id, team id), that differ
    in those ids alone: the bytes of audit_run's content for each run, with one time.

    The content is made and checked once and the ids written into its canonical bytes, so
    a halt of hundreds of runs does not build hundreds of contents inside its transaction
    (tests/audit/test_run_bodies.py holds the two ways equal)."""
    occurred_at = occurred_at or timezone.now()
    template = canonical_content(
        event_content(
            verb=verb,
            actor=actor,
            subject_type="run",
            subject_id=_MARKS["subject_id"],
            agent_id=int(_MARKS["agent_id"]),
            team_id=int(_MARKS["team_id"]),
            run_id=int(_MARKS["run_id"]),
            payload=payload,
            occurred_at=occurred_at,
        )
    )
    found = sorted((template.find(str(mark).encode()), field) for field, mark in _MARKS.items())
    if any(template.count(str(mark).encode()) != 1 for mark in _MARKS.values()):
        # The payload holds a mark's digits: each event the long way.
        return [
            canonical_content(
                event_content(
                    verb=verb,
                    actor=actor,
                    subject_type="run",
                    subject_id=run_id,
                    agent_id=agent_id,
                    team_id=team_id,
                    run_id=run_id,
                    payload=payload,
                    occurred_at=occurred_at,
                )
            )
            for run_id, agent_id, team_id in runs
        ]
    pieces, start = [], 0
    for at, field in found:
        pieces.append(template[start:at])
        start = at + len(str(_MARKS[field]))
    pieces.append(template[start:])
    order = [field for _, field in found]
    bodies = []
    for run_id, agent_id, team_id in runs:
        ids = {
            "agent_id": str(agent_id).encode(),
            "team_id": b"null" if team_id is None else str(team_id).encode(),
            "run_id": str(run_id).encode(),
            "subject_id": str(run_id).encode(),
        }
        body = [pieces[0]]
        for field, piece in zip(order, pieces[1:], strict=True):
            body += (ids[field], piece)
        bodies.append(b"".join(body))
    return bodies
