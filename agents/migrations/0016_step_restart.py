"""Postgres: restarting a journaled step (an approved one, or a started one whose tool is
idempotent) in one round trip, as baton_step_start starts a new one: admit, move the
step to `started` for another attempt if it is still as the worker read it, append its
audit event (agents/store.py restart_step; other databases take the ORM path there)."""

from __future__ import annotations

from django.db import migrations

FUNCTION = r"""
CREATE OR REPLACE FUNCTION baton_step_restart(
    p_run bigint, p_token uuid, p_team bigint, p_agent bigint, p_action bigint,
    p_status text, p_attempts integer, p_now timestamptz, p_canonical bytea)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_code text;
BEGIN
    v_code := baton_admit(p_run => p_run, p_token => p_token, p_team => p_team,
                          p_agent => p_agent);
    IF v_code <> 'ok' THEN RETURN v_code; END IF;
    UPDATE agents_action SET status = 'started', attempts = attempts + 1, started_at = p_now
     WHERE id = p_action AND status = p_status AND attempts = p_attempts;
    IF NOT FOUND THEN RETURN 'lost'; END IF;
    PERFORM baton_audit_append(p_canonical => p_canonical);
    RETURN 'ok';
END $$;
"""
DROP = """
DROP FUNCTION IF EXISTS baton_step_restart(bigint, uuid, bigint, bigint, bigint, text, integer,
    timestamptz, bytea);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("agents", "0015_agent_decision_sla"), ("audit", "0009_sequencer")]
    operations = [migrations.RunPython(forwards, backwards)]
