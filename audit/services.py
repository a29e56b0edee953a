from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from audit import verbs
from audit.chain import GENESIS, event_hash
from audit.models import AuditEvent, ChainHead

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


SYSTEM = Actor(AuditEvent.ActorType.SYSTEM, None, "baton")


def _plain(payload: dict[str, Any]) -> dict[str, Any]:
    # The stored payload must hash the same when read back, so it is normalised through
    # JSON once here (Decimals and dates become strings, tuples lists).
    return json.loads(json.dumps(payload, default=str))


def audit_record(
    *,
    verb: str,
    actor: Actor,
    subject_type: str,
    subject_id: object,
    agent: Any = None,
    run: Any = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain. Call it last in the transaction of the change it
    records: it locks the chain head until that transaction commits."""
    if verb not in verbs.ALL:
        raise ValueError(f"unknown audit verb {verb!r}")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of its change")
    content: dict[str, Any] = {
        "occurred_at": timezone.now(),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_label": actor.label,
        "verb": verb,
        "subject_type": subject_type,
        "subject_id": str(subject_id),
        "agent_id": agent.pk if agent is not None else None,
        "team_id": agent.team_id if agent is not None else None,
        "run_id": run.pk if run is not None else None,
        "payload": _plain(payload or {}),
    }
    head = ChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        head = ChainHead.objects.create(pk=1, seq=0, hash=GENESIS)
        head = ChainHead.objects.select_for_update().get(pk=1)
    seq = head.seq + 1
    digest = event_hash(head.hash, seq, content)
    event = AuditEvent.objects.create(seq=seq, prev_hash=head.hash, hash=digest, **content)
    ChainHead.objects.filter(pk=1).update(seq=seq, hash=digest)
    return event
