from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexOnline(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on Postgres: the steps table takes a write a step of every
    run, and a plain CREATE INDEX would hold those writes for the whole build over its
    history. A plain index on the embedded default's SQLite (nothing writes during its
    migrations)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_forwards(
                self, app_label, schema_editor, from_state, to_state
            )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_backwards(
                self, app_label, schema_editor, from_state, to_state
            )


class Migration(migrations.Migration):
    # CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("agents", "0024_kpi_rollup_generation"),
    ]

    operations = [
        AddIndexOnline(
            model_name="action",
            index=models.Index(
                condition=models.Q(("kind", "tool"), ("status", "denied")),
                fields=["-created_at"],
                include=["run"],
                name="action_denied_recent",
            ),
        ),
    ]
