"""Where SQL or a migration repeats a Python rule, the copy equals the rule.

Migrations embed their SQL and values as they were when written (a migration must not
change with the code); these tests hold the live database functions and the frozen
values equal to the one Python definition, so a change to one without the other fails."""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime

import pytest
from django.db import connection

from agents import roles
from agents.killswitches import admit_locks_sql, admit_targets_sql, lock_key, targets_for
from agents.models import Action, Agent, KillSwitch, Run
from audit import chain

pytestmark = pytest.mark.django_db


def function_definition(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef(%s::regproc)", [name])
        return str(cursor.fetchone()[0])


def test_baton_admit_takes_the_locks_and_targets_of_the_python_table() -> None:
    sql = function_definition("baton_admit")
    assert admit_locks_sql() in sql, "the live baton_admit locks as agents.killswitches does"
    assert admit_targets_sql() in sql
    # The literals themselves, read out of the live function.
    classes = [int(c) for c in re.findall(r"pg_advisory_xact_lock_shared\(\((\d+)::bigint", sql)]
    assert classes == list(KillSwitch.LOCK_CLASS.values())
    in_list = sql[sql.index("k.target IN (") : sql.index(")", sql.index("k.target IN ("))]
    assert re.findall(r"'(\w+):?'", in_list) == list(KillSwitch.Scope.values)
    assert list(KillSwitch.LOCK_CLASS) == list(KillSwitch.Scope.values)


def test_a_lock_key_is_the_scope_class_with_the_id_in_the_low_bits() -> None:
    agent = Agent(pk=42, team_id=7)
    assert targets_for(agent) == ["global", "team:7", "agent:42"]
    assert [lock_key(t) for t in targets_for(agent)] == [
        7701 << 40,
        (7702 << 40) + 7,
        (7703 << 40) + 42,
    ]


def test_the_audit_append_takes_only_what_it_stores() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oid::regprocedure::text, pg_get_function_identity_arguments(oid) "
            "FROM pg_proc WHERE proname LIKE 'baton_%%' ORDER BY proname"
        )
        functions = dict(cursor.fetchall())
    assert "baton_audit_append(bytea)" in functions, "one form, no unused parameters"
    assert [f for f in functions if f.startswith("baton_audit_append")] == [
        "baton_audit_append(bytea)",
        "baton_audit_append_many(text)",  # many events of one change, a body a line
    ]
    # The gateway's functions append with the bytes alone.
    for name in ("baton_step_start", "baton_step_finish"):
        assert "baton_audit_append(p_canonical => p_canonical)" in function_definition(name)


def test_baton_runs_cancel_reads_the_statuses_of_the_python_models() -> None:
    sql = function_definition("baton_runs_cancel")

    def listed(after: str) -> list[str]:
        at = sql.index(after) + len(after)
        return re.findall(r"'(\w+)'", sql[at : sql.index(")", at)])

    assert listed("r.status NOT IN (") == list(Run.FINAL), "an unfinished run is cancelled"
    assert listed("AND status IN (") == list(Action.AWAITING), "its held steps with it"
    assert "SET status = 'cancelled'" in sql and Run.Status.CANCELLED == "cancelled"
    assert Action.Status.CANCELLED == "cancelled"
    # The held steps are found by the partial index of exactly those statuses.
    (index,) = [i for i in Action._meta.indexes if i.name == "action_awaiting"]
    assert index.condition is not None
    assert index.condition.children == [("status__in", list(Action.AWAITING))]


def test_the_rehash_migration_froze_format_1_and_the_chain_link_as_they_are() -> None:
    migration = importlib.import_module("audit.migrations.0004_body_is_the_record")
    content = {
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=UTC),
        "actor_type": "agent",
        "actor_id": 3,
        "actor_label": "clerk é",
        "verb": "action.allowed",
        "subject_type": "action",
        "subject_id": "9/1",
        "agent_id": 3,
        "team_id": 1,
        "run_id": 9,
        "payload": {"b": [1, 2.5, None], "a": "\U0001f600"},
    }
    body = migration.canonical_content_v1(content)
    assert body == chain.canonical_content_v1(content)
    assert migration.chain_hash(chain.GENESIS, 1, body) == chain.chain_hash(chain.GENESIS, 1, body)
    assert migration.GENESIS == chain.GENESIS
    assert migration.OLD_COLUMNS == chain.CONTENT_FIELDS


def test_the_role_migrations_froze_the_roles_as_they_are() -> None:
    """A change to the roles' permissions needs a migration that grants it."""
    frozen = importlib.import_module("console.migrations._roles")
    assert frozen.GROUP_PERMISSIONS == roles.GROUP_PERMISSIONS
