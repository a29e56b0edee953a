"""Reading kill switches where actions are admitted.

Admission and engage serialise on the same locks, so once an engage has committed no
admission can miss it (DESIGN section 6). On Postgres the admission takes shared advisory
locks on the global, team and agent targets (in baton_admit, agents/migrations/0007) and
an engage takes the exclusive one on its target; both are transaction-scoped and live
only in memory. SQLite takes its single write lock at BEGIN (IMMEDIATE transactions),
which serialises the same way. These advisory locks come first in every transaction that
takes them (agents.store.LOCK_ORDER): before any run, action or request row, and long
before the audit chain head.
"""

from __future__ import annotations

from django.db import connection

from agents.models import Agent, KillSwitch

Scope = KillSwitch.Scope
# The id a scope's target and lock key carry, named as baton_admit's parameters.
_SQL_ID: dict[str, str | None] = {Scope.GLOBAL: None, Scope.TEAM: "p_team", Scope.AGENT: "p_agent"}


def target(scope: str, ident: int | None = None) -> str:
    """A switch's target: "global", "team:<id>" or "agent:<id>" (one engaged per target)."""
    if scope not in KillSwitch.LOCK_CLASS:
        raise KeyError(scope)
    return scope if _SQL_ID[scope] is None else f"{scope}:{'' if ident is None else ident}"


def targets_for(agent: Agent) -> list[str]:
    """The targets whose switches cover the agent, in lock order."""
    ids: dict[str, int | None] = {
        Scope.GLOBAL: None,
        Scope.TEAM: agent.team_id,
        Scope.AGENT: agent.pk,
    }
    return [target(scope, ids[scope]) for scope in KillSwitch.LOCK_CLASS]


def lock_key(target: str) -> int:
    scope, _, ident = target.partition(":")
    return (KillSwitch.LOCK_CLASS[scope] << 40) + int(ident or 0)


def admit_locks_sql() -> str:
    """baton_admit's shared locks, one statement a scope, in lock order."""
    keys = (
        f"({lock_class}::bigint << 40)" + (f" + {_SQL_ID[scope]}" if _SQL_ID[scope] else "")
        for scope, lock_class in KillSwitch.LOCK_CLASS.items()
    )
    return "\n".join(f"    PERFORM pg_advisory_xact_lock_shared({key});" for key in keys)


def admit_targets_sql() -> str:
    """The SQL list of the targets covering p_team's p_agent, as targets_for writes them."""
    return ", ".join(
        f"'{scope}:' || {_SQL_ID[scope]}" if _SQL_ID[scope] else f"'{scope}'"
        for scope in KillSwitch.LOCK_CLASS
    )


def lock_for_engage(target: str) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(target)])


def engaged_for(agent: Agent) -> list[KillSwitch]:
    """Engaged switches covering the agent, halts first."""
    switches = KillSwitch.objects.filter(released_at__isnull=True, target__in=targets_for(agent))
    return sorted(switches, key=lambda s: s.mode != KillSwitch.Mode.HALT)
