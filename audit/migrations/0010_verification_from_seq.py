"""A verification records where it began: NULL for a full run from the genesis, or the
head of an earlier signed outcome it went on from (the scheduled, incremental run). The
column is nullable so SQLite adds it in place and keeps the table's append-only
triggers; every row written before it was a full run, which NULL says."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0009_sequencer")]

    operations = [
        migrations.AddField(
            model_name="verification",
            name="from_seq",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="verification",
            index=models.Index(fields=["-finished_at", "-id"], name="audit_verification_newest"),
        ),
    ]
