"""Postgres: append an audit event in one round trip. The function takes the canonical
bytes computed by audit.chain in Python and hashes them exactly as audit.chain does, under
the same lock on the chain-head row. Other databases use the Python path."""

from __future__ import annotations

from django.db import migrations

APPEND = r"""
CREATE OR REPLACE FUNCTION baton_audit_append(
    p_canonical bytea, p_occurred timestamptz, p_actor_type text, p_actor_id bigint,
    p_actor_label text, p_verb text, p_subject_type text, p_subject_id text,
    p_agent bigint, p_team bigint, p_run bigint, p_payload jsonb,
    OUT o_id bigint, OUT o_seq bigint, OUT o_hash text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_prev text;
BEGIN
    SELECT h.seq, h.hash INTO o_seq, v_prev FROM audit_chainhead h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_chainhead (id, seq, hash) VALUES (1, 0, repeat('0', 64))
            ON CONFLICT (id) DO NOTHING;
        SELECT h.seq, h.hash INTO o_seq, v_prev FROM audit_chainhead h WHERE h.id = 1 FOR UPDATE;
    END IF;
    o_seq := o_seq + 1;
    o_hash := encode(sha256(convert_to(v_prev || E'\n' || o_seq::text || E'\n', 'UTF8')
                            || p_canonical), 'hex');
    INSERT INTO audit_auditevent (seq, occurred_at, actor_type, actor_id, actor_label, verb,
                                  subject_type, subject_id, agent_id, team_id, run_id,
                                  payload, prev_hash, hash)
    VALUES (o_seq, p_occurred, p_actor_type, p_actor_id, p_actor_label, p_verb,
            p_subject_type, p_subject_id, p_agent, p_team, p_run, p_payload, v_prev, o_hash)
    RETURNING id INTO o_id;
    UPDATE audit_chainhead SET seq = o_seq, hash = o_hash WHERE id = 1;
END $$;
"""
DROP = "DROP FUNCTION IF EXISTS baton_audit_append"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_genesis")]
    operations = [migrations.RunPython(forwards, backwards)]
