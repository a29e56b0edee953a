"""A verification's outcome is signed with the audit signing key and bound to the hash it
verified up to, and its rows become append-only like the trail: a row anyone can insert
(or a failure anyone can delete) must not decide what the integrity badge shows."""

from __future__ import annotations

from django.db import migrations, models

PG_TRIGGERS = r"""
CREATE TRIGGER audit_verification_append_only BEFORE UPDATE OR DELETE ON audit_verification
    FOR EACH ROW EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER audit_verification_no_truncate BEFORE TRUNCATE ON audit_verification
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
"""
PG_DROP = r"""
DROP TRIGGER IF EXISTS audit_verification_append_only ON audit_verification;
DROP TRIGGER IF EXISTS audit_verification_no_truncate ON audit_verification;
"""
SQLITE_OPS = ("UPDATE", "DELETE")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGERS, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for op in SQLITE_OPS:
            schema_editor.execute(
                f"CREATE TRIGGER audit_verification_{op.lower()}_refused BEFORE {op} "
                "ON audit_verification BEGIN SELECT RAISE(ABORT, "
                f"'the audit trail is append-only: {op} on audit_verification refused'); END"
            )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for op in SQLITE_OPS:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS audit_verification_{op.lower()}_refused")


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_append_only")]

    operations = [
        migrations.AddField(
            model_name="verification",
            name="up_to_hash",
            field=models.CharField(blank=True, db_default="", max_length=64),
        ),
        migrations.AddField(
            model_name="verification",
            name="key_id",
            field=models.CharField(blank=True, db_default="", max_length=16),
        ),
        migrations.AddField(
            model_name="verification",
            name="signature",
            field=models.CharField(blank=True, db_default="", max_length=128),
        ),
        migrations.RunPython(forwards, backwards),
    ]
