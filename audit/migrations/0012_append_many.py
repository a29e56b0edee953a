"""Postgres: many events of one transaction queued by one INSERT (audit.services
audit_append_bodies; a halt appends one `run.cancelled` event per run it cancels, hundreds
at once). Its events are queued in the order given, as baton_audit_append queues each
alone, and chained at once in the same transaction where the session chains inline
(`baton.audit_inline = on`, as 0009's baton_audit_append).

The bodies come as one text, one body a line: canonical JSON has no raw line break (a
string's control characters are escaped), and one text is sent as it is, where an array of
hundreds of bodies full of quotes is quoted element by element on its way."""

from __future__ import annotations

from django.db import migrations

FUNCTION = r"""
CREATE OR REPLACE FUNCTION baton_audit_append_many(p_bodies text, OUT o_count integer)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO audit_pendingevent (body, queued_at)
    SELECT u.body, clock_timestamp()
      FROM string_to_table(p_bodies, E'\n') WITH ORDINALITY AS u(body, n)
     ORDER BY u.n;
    GET DIAGNOSTICS o_count = ROW_COUNT;
    IF current_setting('baton.audit_inline', true) = 'on' THEN
        PERFORM baton_audit_sequence(p_limit => NULL);
    END IF;
END $$;
"""
DROP = "DROP FUNCTION IF EXISTS baton_audit_append_many(text);"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0011_partitioned_trail")]
    operations = [migrations.RunPython(forwards, backwards)]
