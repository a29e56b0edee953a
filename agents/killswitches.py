"""Reading kill switches where actions are admitted.

Admission and engage serialise on the same locks, so once an engage has committed no
admission can miss it (DESIGN section 6). On Postgres the admission takes shared advisory
locks on the global, team and agent targets and an engage takes the exclusive one on its
target; both are transaction-scoped and live only in memory. SQLite takes its single
write lock at BEGIN (IMMEDIATE transactions), which serialises the same way.
"""

from __future__ import annotations

from django.db import connection

from agents.models import Agent, KillSwitch

_GLOBAL, _TEAM, _AGENT = 7701, 7702, 7703


def targets_for(agent: Agent) -> list[str]:
    return ["global", f"team:{agent.team_id}", f"agent:{agent.pk}"]


def _lock_key(target: str) -> tuple[int, int]:
    kind, _, ident = target.partition(":")
    return {"global": _GLOBAL, "team": _TEAM, "agent": _AGENT}[kind], int(ident or 0)


def lock_for_admission(agent: Agent) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, 0), pg_advisory_xact_lock_shared(%s, %s),"
            " pg_advisory_xact_lock_shared(%s, %s)",
            [_GLOBAL, _TEAM, agent.team_id, _AGENT, agent.pk],
        )


def lock_for_engage(target: str) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(_lock_key(target)))


def engaged_for(agent: Agent) -> list[KillSwitch]:
    """Engaged switches covering the agent, halts first."""
    switches = KillSwitch.objects.filter(released_at__isnull=True, target__in=targets_for(agent))
    return sorted(switches, key=lambda s: s.mode != KillSwitch.Mode.HALT)
