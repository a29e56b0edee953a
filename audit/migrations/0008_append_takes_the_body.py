"""baton_audit_append takes the one argument it uses: the canonical bytes. The content
columns are generated from them (0004), so the other eleven arguments were never read.

The twelve-argument form stays beside it until its last callers, the gateway's
functions, are re-created (agents 0007), which then drops it."""

from __future__ import annotations

from django.db import migrations

APPEND = r"""
CREATE FUNCTION baton_audit_append(p_canonical bytea, OUT o_id bigint, OUT o_seq bigint,
                                   OUT o_hash text)
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
    o_hash := encode(sha256(convert_to(
        v_prev || E'\n' || o_seq::text || E'\n' || encode(sha256(p_canonical), 'hex'),
        'UTF8')), 'hex');
    INSERT INTO audit_auditevent (seq, body, prev_hash, hash)
    VALUES (o_seq, convert_from(p_canonical, 'UTF8'), v_prev, o_hash)
    RETURNING id INTO o_id;
    UPDATE audit_chainhead SET seq = o_seq, hash = o_hash WHERE id = 1;
END $$;
"""
DROP = "DROP FUNCTION IF EXISTS baton_audit_append(bytea)"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0007_chain_head_kept")]
    operations = [migrations.RunPython(forwards, backwards)]
