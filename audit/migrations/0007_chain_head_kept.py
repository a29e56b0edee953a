"""The chain head row can be moved but never removed: deleted, every later append restarted
the chain at #0 and failed on #1, and verification said nothing. It moves with every
event, so UPDATE stays; DELETE and TRUNCATE are refused like the trail's (0005)."""

from __future__ import annotations

from django.db import migrations

PG_TRIGGERS = r"""
CREATE TRIGGER audit_chainhead_kept BEFORE DELETE ON audit_chainhead
    FOR EACH ROW EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER audit_chainhead_no_truncate BEFORE TRUNCATE ON audit_chainhead
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
"""
PG_DROP = r"""
DROP TRIGGER IF EXISTS audit_chainhead_kept ON audit_chainhead;
DROP TRIGGER IF EXISTS audit_chainhead_no_truncate ON audit_chainhead;
"""
SQLITE_TRIGGER = """CREATE TRIGGER audit_chainhead_delete_refused BEFORE DELETE ON audit_chainhead
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE on audit_chainhead refused');
    END"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGERS, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_TRIGGER)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS audit_chainhead_delete_refused")


class Migration(migrations.Migration):
    dependencies = [("audit", "0006_signed_verifications")]
    operations = [migrations.RunPython(forwards, backwards)]
