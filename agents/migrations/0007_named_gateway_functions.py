"""Postgres: the gateway's functions are called by parameter name (agents/store.py) and
append their audit event with its canonical bytes alone (audit 0008). Their behaviour is
that of 0002: one round trip per write.

baton_admit's locks and targets are agents.killswitches.admit_locks_sql() and
admit_targets_sql() as they were written here, from KillSwitch.LOCK_CLASS; a test holds
the live function equal to them."""

from __future__ import annotations

import importlib

from django.db import migrations

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION baton_admit(p_run bigint, p_token uuid, p_team bigint, p_agent bigint)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_status text;
    v_token uuid;
    v_switch record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared((7701::bigint << 40));
    PERFORM pg_advisory_xact_lock_shared((7702::bigint << 40) + p_team);
    PERFORM pg_advisory_xact_lock_shared((7703::bigint << 40) + p_agent);
    SELECT r.status, r.lease_token INTO v_status, v_token FROM agents_run r WHERE r.id = p_run;
    IF v_status IS NULL THEN RETURN 'lost'; END IF;
    IF v_status = 'cancelled' THEN RETURN 'cancel'; END IF;
    IF v_status <> 'running' OR v_token IS DISTINCT FROM p_token THEN RETURN 'lost'; END IF;
    SELECT k.mode, k.target, k.reason INTO v_switch FROM agents_killswitch k
     WHERE k.released_at IS NULL AND k.target IN ('global', 'team:' || p_team, 'agent:' || p_agent)
     ORDER BY (k.mode = 'halt') DESC LIMIT 1;
    IF FOUND THEN
        RETURN v_switch.mode || E'\t' || v_switch.target || E'\t' || v_switch.reason;
    END IF;
    RETURN 'ok';
END $$;

CREATE FUNCTION baton_step_start(
    p_run bigint, p_token uuid, p_team bigint, p_agent bigint, p_seq integer, p_name text,
    p_requested jsonb, p_args jsonb, p_args_hash text, p_rule_index integer, p_rule jsonb,
    p_reason text, p_key text, p_now timestamptz, p_canonical bytea,
    OUT o_code text, OUT o_action bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    o_code := baton_admit(p_run => p_run, p_token => p_token, p_team => p_team,
                          p_agent => p_agent);
    IF o_code <> 'ok' THEN RETURN; END IF;
    INSERT INTO agents_action (run_id, seq, kind, name, requested_args, args, args_hash, status,
                               decision, rule_index, rule, reason, result, error, meta,
                               idempotency_key, attempts, created_at, started_at, finished_at)
    VALUES (p_run, p_seq, 'tool', p_name, p_requested, p_args, p_args_hash, 'started', 'allow',
            p_rule_index, p_rule, p_reason, NULL, '', '{}'::jsonb, p_key, 1, p_now, p_now, NULL)
    ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING id INTO o_action;
    IF o_action IS NULL THEN o_code := 'lost'; RETURN; END IF;
    PERFORM baton_audit_append(p_canonical => p_canonical);
END $$;

CREATE FUNCTION baton_step_finish(
    p_action bigint, p_attempts integer, p_status text, p_result jsonb, p_error text,
    p_now timestamptz, p_canonical bytea)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE agents_action SET status = p_status, result = p_result, error = p_error,
                             finished_at = p_now
     WHERE id = p_action AND status = 'started' AND attempts = p_attempts;
    IF NOT FOUND THEN RETURN false; END IF;
    PERFORM baton_audit_append(p_canonical => p_canonical);
    RETURN true;
END $$;
"""
# The forms of 0002 and audit 0003/0005, which nothing calls any more.
DROP_OLD = """
DROP FUNCTION IF EXISTS baton_step_start(bigint, uuid, bigint, bigint, integer, text, jsonb,
    jsonb, text, integer, jsonb, text, text, timestamptz, bytea, text, bigint, text, text, text,
    text, jsonb);
DROP FUNCTION IF EXISTS baton_step_finish(bigint, integer, text, jsonb, text, timestamptz, bytea,
    text, bigint, text, text, text, text, bigint, bigint, bigint, jsonb);
DROP FUNCTION IF EXISTS baton_audit_append(bytea, timestamptz, text, bigint, text, text, text,
    text, bigint, bigint, bigint, jsonb);
"""
DROP_NEW = """
DROP FUNCTION IF EXISTS baton_step_start(bigint, uuid, bigint, bigint, integer, text, jsonb,
    jsonb, text, integer, jsonb, text, text, timestamptz, bytea);
DROP FUNCTION IF EXISTS baton_step_finish(bigint, integer, text, jsonb, text, timestamptz, bytea);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_OLD, params=None)
        schema_editor.execute(FUNCTIONS, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_NEW, params=None)
        # The previous forms, exactly as those migrations wrote them.
        audit = importlib.import_module("audit.migrations.0005_append_only")
        gateway = importlib.import_module("agents.migrations.0002_gateway_functions")
        schema_editor.execute(audit.APPEND, params=None)
        schema_editor.execute(gateway.FUNCTIONS, params=None)


class Migration(migrations.Migration):
    dependencies = [("agents", "0006_worker_heartbeat"), ("audit", "0008_append_takes_the_body")]
    operations = [migrations.RunPython(forwards, backwards)]
