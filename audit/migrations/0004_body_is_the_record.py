"""The canonical bytes become the stored record (`body`), and every content column is
generated from them by the database, so the columns shown and filtered on can never drift
from what the chain proves. The chain moves to hashing the content's digest (audit.chain),
so an export can prove an omitted event's place; events written before are rehashed once
here, before the trail becomes append-only (0005)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from django.db import migrations, models
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, NullIf

# Frozen here as audit.chain wrote them when this migration was made (a migration must not
# change with the code): format 1, the canonical form of the time (events written since
# are format 2), and the chain's link over the content's digest.
GENESIS = "0" * 64


def canonical_content_v1(content):
    body = dict(content)
    if isinstance(body["occurred_at"], datetime):
        body["occurred_at"] = body["occurred_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def chain_hash(prev_hash, seq, canonical):
    digest = hashlib.sha256(canonical).hexdigest()
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{digest}".encode()).hexdigest()


OLD_COLUMNS = (
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "verb",
    "subject_type",
    "subject_id",
    "agent_id",
    "team_id",
    "run_id",
    "payload",
)


def _text(key):
    return KeyTextTransform(key, Cast("body", models.JSONField()))


def _id(key):
    # SQLite's text of a JSON null is 'null', Postgres's is NULL: both become NULL.
    return Cast(NullIf(_text(key), models.Value("null")), models.BigIntegerField())


def _generated(name, expression, output_field):
    return migrations.AddField(
        model_name="auditevent",
        name=name,
        field=models.GeneratedField(
            expression=expression, output_field=output_field, db_persist=True
        ),
    )


def rehash(apps, schema_editor):
    event_model = apps.get_model("audit", "AuditEvent")
    head_model = apps.get_model("audit", "ChainHead")
    prev = GENESIS
    seq = 0
    for event in event_model.objects.order_by("seq").iterator(chunk_size=2000):
        seq = event.seq
        body = canonical_content_v1({name: getattr(event, name) for name in OLD_COLUMNS})
        event.body = body.decode("utf-8")
        event.prev_hash = prev
        event.hash = chain_hash(prev, seq, body)
        event.save(update_fields=["body", "prev_hash", "hash"])
        prev = event.hash
    head_model.objects.update_or_create(pk=1, defaults={"seq": seq, "hash": prev})


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_append_function")]

    operations = [
        migrations.AddField(
            model_name="auditevent", name="body", field=models.TextField(default="")
        ),
        migrations.RunPython(rehash, migrations.RunPython.noop),
        migrations.AlterField(model_name="auditevent", name="body", field=models.TextField()),
        migrations.RemoveIndex(model_name="auditevent", name="audit_agent_seq"),
        migrations.RemoveIndex(model_name="auditevent", name="audit_run_seq"),
        migrations.RemoveIndex(model_name="auditevent", name="audit_verb_seq"),
        *(migrations.RemoveField(model_name="auditevent", name=n) for n in OLD_COLUMNS),
        _generated("occurred_at", _text("occurred_at"), models.CharField(max_length=32)),
        _generated("actor_type", _text("actor_type"), models.CharField(max_length=6)),
        _generated("actor_id", _id("actor_id"), models.BigIntegerField()),
        _generated("actor_label", _text("actor_label"), models.CharField(max_length=150)),
        _generated("verb", _text("verb"), models.CharField(max_length=40)),
        _generated("subject_type", _text("subject_type"), models.CharField(max_length=40)),
        _generated("subject_id", _text("subject_id"), models.CharField(max_length=64)),
        _generated("agent_id", _id("agent_id"), models.BigIntegerField()),
        _generated("team_id", _id("team_id"), models.BigIntegerField()),
        _generated("run_id", _id("run_id"), models.BigIntegerField()),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["agent_id", "-seq"], name="audit_agent_seq"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["team_id", "-seq"], name="audit_team_seq"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["run_id", "seq"], name="audit_run_seq"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["verb", "-seq"], name="audit_verb_seq"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["actor_label", "-seq"], name="audit_actor_seq"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["occurred_at"], name="audit_occurred"),
        ),
        migrations.AlterModelOptions(
            name="auditevent",
            options={
                "ordering": ["-seq"],
                "permissions": [("export_auditevent", "Export audit evidence")],
            },
        ),
        migrations.CreateModel(
            name="Checkpoint",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("seq", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
                ("signed_at", models.CharField(max_length=32)),
                ("key_id", models.CharField(max_length=16)),
                ("signature", models.CharField(max_length=128)),
            ],
            options={
                "ordering": ["-seq"],
                "indexes": [models.Index(fields=["seq"], name="audit_checkpoint_seq")],
                "permissions": [("sign_checkpoint", "Sign checkpoints and start verification")],
            },
        ),
        migrations.CreateModel(
            name="Verification",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("started_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField()),
                ("ok", models.BooleanField()),
                ("up_to_seq", models.BigIntegerField()),
                ("first_bad_seq", models.BigIntegerField(blank=True, null=True)),
                ("checkpoints", models.IntegerField(default=0)),
                ("message", models.TextField(blank=True)),
            ],
            options={"ordering": ["-finished_at"]},
        ),
    ]
