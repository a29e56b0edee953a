"""Postgres: the gateway's hot path in one round trip per write.

baton_admit takes the shared kill-switch locks and then, in fresh snapshots (a VOLATILE
function reads each statement anew), checks the run's lease and the engaged switches.
baton_step_start admits, writes the journal row and appends its audit event;
baton_step_finish records the outcome, fenced by the attempt, with its audit event.
agents/store.py holds the same steps in Python for other databases."""

from __future__ import annotations

from django.db import migrations

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION baton_admit(p_run bigint, p_token uuid, p_team bigint, p_agent bigint)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_status text;
    v_token uuid;
    v_switch record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7701::bigint << 40);
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

CREATE OR REPLACE FUNCTION baton_step_start(
    p_run bigint, p_token uuid, p_team bigint, p_agent bigint, p_seq integer, p_name text,
    p_requested jsonb, p_args jsonb, p_args_hash text, p_rule_index integer, p_rule jsonb,
    p_reason text, p_key text, p_now timestamptz,
    p_canonical bytea, p_actor_type text, p_actor_id bigint, p_actor_label text, p_verb text,
    p_subject_type text, p_subject_id text, p_payload jsonb,
    OUT o_code text, OUT o_action bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    o_code := baton_admit(p_run, p_token, p_team, p_agent);
    IF o_code <> 'ok' THEN RETURN; END IF;
    INSERT INTO agents_action (run_id, seq, kind, name, requested_args, args, args_hash, status,
                               decision, rule_index, rule, reason, result, error, meta,
                               idempotency_key, attempts, created_at, started_at, finished_at)
    VALUES (p_run, p_seq, 'tool', p_name, p_requested, p_args, p_args_hash, 'started', 'allow',
            p_rule_index, p_rule, p_reason, NULL, '', '{}'::jsonb, p_key, 1, p_now, p_now, NULL)
    ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING id INTO o_action;
    IF o_action IS NULL THEN o_code := 'lost'; RETURN; END IF;
    PERFORM baton_audit_append(p_canonical, p_now, p_actor_type, p_actor_id, p_actor_label,
                               p_verb, p_subject_type, p_subject_id, p_agent, p_team, p_run,
                               p_payload);
END $$;

CREATE OR REPLACE FUNCTION baton_step_finish(
    p_action bigint, p_attempts integer, p_status text, p_result jsonb, p_error text,
    p_now timestamptz, p_canonical bytea, p_actor_type text, p_actor_id bigint,
    p_actor_label text, p_verb text, p_subject_type text, p_subject_id text, p_agent bigint,
    p_team bigint, p_run bigint, p_payload jsonb)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE agents_action SET status = p_status, result = p_result, error = p_error,
                             finished_at = p_now
     WHERE id = p_action AND status = 'started' AND attempts = p_attempts;
    IF NOT FOUND THEN RETURN false; END IF;
    PERFORM baton_audit_append(p_canonical, p_now, p_actor_type, p_actor_id, p_actor_label,
                               p_verb, p_subject_type, p_subject_id, p_agent, p_team, p_run,
                               p_payload);
    RETURN true;
END $$;
"""
DROP = """
DROP FUNCTION IF EXISTS baton_step_finish;
DROP FUNCTION IF EXISTS baton_step_start;
DROP FUNCTION IF EXISTS baton_admit;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTIONS)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial"), ("audit", "0003_append_function")]
    operations = [migrations.RunPython(forwards, backwards)]
