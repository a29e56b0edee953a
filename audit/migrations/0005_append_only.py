"""The trail becomes append-only in the database itself, and the Postgres writer stores
the canonical bytes and hashes their digest (audit.chain).

Postgres: triggers refuse UPDATE and DELETE of an event or a checkpoint, and TRUNCATE of
either table. The one exception is the test suite's flush between transactional tests,
which sets `baton.test_flush` on its own connections; production sessions never do, and
the README shows how to run the application's role with INSERT and SELECT only, which no
setting can widen. SQLite: triggers abort UPDATE and DELETE (it has no TRUNCATE).
"""

from __future__ import annotations

from django.db import migrations

APPEND = r"""
CREATE OR REPLACE FUNCTION baton_audit_append(
    p_canonical bytea, p_occurred timestamptz, p_actor_type text, p_actor_id bigint,
    p_actor_label text, p_verb text, p_subject_type text, p_subject_id text,
    p_agent bigint, p_team bigint, p_run bigint, p_payload jsonb,
    OUT o_id bigint, OUT o_seq bigint, OUT o_hash text)
LANGUAGE plpgsql VOLATILE AS $$
-- Only p_canonical is stored: the content columns are generated from it. The other
-- arguments stay so the gateway's functions keep their one-round-trip call.
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

PG_TRIGGERS = r"""
CREATE OR REPLACE FUNCTION baton_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND current_setting('baton.test_flush', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
"""
PG_DROP = r"""
DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON audit_checkpoint;
DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON audit_checkpoint;
DROP FUNCTION IF EXISTS baton_audit_refuse();
"""

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER {table}_{op.lower()}_refused BEFORE {op} ON {table}
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: {op} on {table} refused'); END"""
    for table in ("audit_auditevent", "audit_checkpoint")
    for op in ("UPDATE", "DELETE")
]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND, params=None)
        schema_editor.execute(PG_TRIGGERS, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_TRIGGERS:
            schema_editor.execute(statement)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP)
    elif schema_editor.connection.vendor == "sqlite":
        for table in ("audit_auditevent", "audit_checkpoint"):
            for op in ("update", "delete"):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_{op}_refused")


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_body_is_the_record")]
    operations = [migrations.RunPython(forwards, backwards)]
