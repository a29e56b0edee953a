"""Reading kill switches where actions are admitted.

Admission and engage serialise on the same locks, so once an engage has committed no
admission can miss it (DESIGN section 6). On Postgres the admission takes shared advisory
locks on the global, team and agent targets (in baton_admit, agents/migrations/0002) and
an engage takes the exclusive one on its target; both are transaction-scoped and live
only in memory. SQLite takes its single write lock at BEGIN (IMMEDIATE transactions),
which serialises the same way. These advisory locks come first in every transaction that
takes them (agents.store.LOCK_ORDER): before any run, action or request row, and long
before the audit chain head.
"""

from __future__ import annotations

from django.db import connection

from agents.models import Agent, KillSwitch

# Lock keys: a class in the high bits, the team or agent id in the low 40 (as baton_admit).
_CLASS = {"global": 7701, "team": 7702, "agent": 7703}


def targets_for(agent: Agent) -> list[str]:
    return ["global", f"team:{agent.team_id}", f"agent:{agent.pk}"]


def lock_key(target: str) -> int:
    kind, _, ident = target.partition(":")
    return (_CLASS[kind] << 40) + int(ident or 0)


def lock_for_engage(target: str) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(target)])


def engaged_for(agent: Agent) -> list[KillSwitch]:
    """Engaged switches covering the agent, halts first."""
    switches = KillSwitch.objects.filter(released_at__isnull=True, target__in=targets_for(agent))
    return sorted(switches, key=lambda s: s.mode != KillSwitch.Mode.HALT)
