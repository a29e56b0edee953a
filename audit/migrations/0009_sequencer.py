"""The audit sequencer (DESIGN section 7, issue 13): an event is queued in its state
change's transaction and chained afterwards, in batches, by one holder at a time, so the
writers of the fleet no longer wait for one another on the chain head.

`baton_audit_append(canonical)` keeps its signature (the gateway's functions call it) and
now only queues the bytes in audit_pendingevent — unless the session says
`baton.audit_inline = on` (audit.sequencer: the embedded console and the test suite), when
it chains them at once in the same transaction, through the same function the sequencer
calls. `baton_audit_sequence(limit)` locks the chain head, takes the oldest committed
queued events, hashes them as audit.chain does, moves them into the trail and moves the
head, in the caller's transaction; it returns the (agent, team) pairs of the batch for
the live view's doorbells.

baton_audit_sequence runs as the schema's owner (SECURITY DEFINER), so the application's
role needs no right to write the trail or move the head: it queues, and only this function
chains (the README's role SQL). Postgres refuses UPDATE and TRUNCATE of queued events (TRUNCATE is allowed to the test
suite's flush, as in 0005), and DELETE except inside baton_audit_sequence. SQLite refuses
UPDATE; it chains inline only.
"""

from __future__ import annotations

from django.db import migrations, models

FUNCTIONS = r"""
CREATE FUNCTION baton_audit_pending_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('baton.sequencing', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' AND current_setting('baton.test_flush', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'queued audit events are chained, never changed: % on % refused',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_pending_guard BEFORE UPDATE OR DELETE ON audit_pendingevent
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_pending_guard();
CREATE TRIGGER audit_pending_no_truncate BEFORE TRUNCATE ON audit_pendingevent
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_pending_guard();

CREATE FUNCTION baton_audit_sequence(p_limit integer,
    OUT o_count integer, OUT o_last_seq bigint, OUT o_last_hash text, OUT o_pairs jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    v_ids bigint[];
    v_bodies text[];
    v_seqs bigint[] := '{}';
    v_prevs text[] := '{}';
    v_hashes text[] := '{}';
    v_seq bigint;
    v_prev text;
BEGIN
    o_count := 0;
    o_pairs := '[]'::jsonb;
    SELECT h.seq, h.hash INTO v_seq, v_prev FROM audit_chainhead h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_chainhead (id, seq, hash) VALUES (1, 0, repeat('0', 64))
            ON CONFLICT (id) DO NOTHING;
        SELECT h.seq, h.hash INTO v_seq, v_prev FROM audit_chainhead h WHERE h.id = 1 FOR UPDATE;
    END IF;
    o_last_seq := v_seq;
    o_last_hash := v_prev;
    SELECT array_agg(q.id ORDER BY q.id), array_agg(q.body ORDER BY q.id) INTO v_ids, v_bodies
      FROM (SELECT p.id, p.body FROM audit_pendingevent p ORDER BY p.id LIMIT p_limit
            FOR UPDATE) q;
    IF v_ids IS NULL THEN RETURN; END IF;
    o_count := cardinality(v_ids);
    FOR i IN 1 .. o_count LOOP
        v_seq := v_seq + 1;
        v_seqs := v_seqs || v_seq;
        v_prevs := v_prevs || v_prev;
        v_prev := encode(sha256(convert_to(
            v_prev || E'\n' || v_seq::text || E'\n'
                || encode(sha256(convert_to(v_bodies[i], 'UTF8')), 'hex'),
            'UTF8')), 'hex');
        v_hashes := v_hashes || v_prev;
    END LOOP;
    PERFORM set_config('baton.sequencing', 'on', true);
    DELETE FROM audit_pendingevent WHERE id = ANY (v_ids);
    PERFORM set_config('baton.sequencing', 'off', true);
    WITH added AS (
        INSERT INTO audit_auditevent (seq, body, prev_hash, hash)
        SELECT * FROM unnest(v_seqs, v_bodies, v_prevs, v_hashes)
        RETURNING agent_id, team_id)
    SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_array(a.agent_id, a.team_id)), '[]'::jsonb)
      INTO o_pairs FROM added a;
    UPDATE audit_chainhead SET seq = v_seq, hash = v_prev WHERE id = 1;
    o_last_seq := v_seq;
    o_last_hash := v_prev;
END $$;

CREATE OR REPLACE FUNCTION baton_audit_append(p_canonical bytea, OUT o_id bigint,
                                              OUT o_seq bigint, OUT o_hash text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO audit_pendingevent (body, queued_at)
    VALUES (convert_from(p_canonical, 'UTF8'), clock_timestamp())
    RETURNING id INTO o_id;
    IF current_setting('baton.audit_inline', true) = 'on' THEN
        SELECT s.o_last_seq, s.o_last_hash INTO o_seq, o_hash
          FROM baton_audit_sequence(p_limit => NULL) s;
    END IF;
END $$;
"""

# 0008's function, which chained every event in its writer's transaction.
APPEND_0008 = r"""
CREATE OR REPLACE FUNCTION baton_audit_append(p_canonical bytea, OUT o_id bigint,
                                              OUT o_seq bigint, OUT o_hash text)
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
DROP FUNCTION IF EXISTS baton_audit_sequence(integer);
DROP TRIGGER IF EXISTS audit_pending_guard ON audit_pendingevent;
DROP TRIGGER IF EXISTS audit_pending_no_truncate ON audit_pendingevent;
DROP FUNCTION IF EXISTS baton_audit_pending_guard();
"""

SQLITE_TRIGGER = """CREATE TRIGGER audit_pendingevent_update_refused
    BEFORE UPDATE ON audit_pendingevent
    BEGIN SELECT RAISE(ABORT, 'queued audit events are chained, never changed: UPDATE refused');
    END"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTIONS, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_TRIGGER)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_0008, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS audit_pendingevent_update_refused")


class Migration(migrations.Migration):
    dependencies = [("audit", "0008_append_takes_the_body")]
    operations = [
        migrations.CreateModel(
            name="PendingEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("body", models.TextField()),
                ("queued_at", models.DateTimeField()),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
