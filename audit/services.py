from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, canonical_content, chain_hash
from audit.jsonsafe import check_text, plain_json
from audit.models import AuditEvent, ChainHead
from audit.verbs import Verb
from console.live import ring_on_commit

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


# One round trip on Postgres (audit migration 0008): the function stores the canonical
# bytes and hashes them as audit.chain does, under the same lock on the chain head.
APPEND_SQL = "SELECT * FROM baton_audit_append(p_canonical => %(canonical)s)"


def audit_append(content: dict[str, Any]) -> int:
    """Append prepared content to the chain; returns its sequence number. Call it last in
    the transaction of the change it records: it holds the chain head until commit."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("an audit event is written inside the transaction of its change")
    ring_on_commit(agent_id=content["agent_id"], team_id=content["team_id"])
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(APPEND_SQL, {"canonical": canonical_content(content)})
            return int(cursor.fetchone()[1])
    head = ChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        ChainHead.objects.create(pk=1, seq=0, hash=GENESIS)
        head = ChainHead.objects.select_for_update().get(pk=1)
    seq = head.seq + 1
    body = canonical_content(content)
    digest = chain_hash(head.hash, seq, body)
    AuditEvent.objects.create(seq=seq, body=body.decode("utf-8"), prev_hash=head.hash, hash=digest)
    ChainHead.objects.filter(pk=1).update(seq=seq, hash=digest)
    return seq


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
) -> int:
    """Record one state change in the audit trail; returns the event's sequence number.
    The event belongs to the agent's team, or to `team` for changes to a team itself
    (that is whose supervisors see it)."""
    return audit_append(
        event_content(
            verb=verb,
            actor=actor,
            subject_type=subject_type,
            subject_id=subject_id,
            agent_id=agent.pk if agent is not None else None,
            team_id=agent.team_id if agent is not None else (team.pk if team else None),
            run_id=run.pk if run is not None else None,
            payload=payload,
        )
    )


def audit_run(verb: Verb, *, actor: Actor, run: Any, payload: dict[str, Any] | None = None) -> int:
    """Record a change of a run (queued, started, waiting, finished, …): the run is the
    subject and its agent's team sees it."""
    return audit_record(
        verb=verb,
        actor=actor,
        subject_type="run",
        subject_id=run.pk,
        agent=run.agent,
        run=run,
        payload=payload,
    )
