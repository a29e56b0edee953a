# Pages read stored JSON however deep the request's stack is (audit.jsonsafe.StoredJSONDecoder);
# the decoder changes nothing in the database (SQLite copies the tables once).

from django.db import migrations, models

import audit.jsonsafe


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0016_step_restart"),
    ]

    operations = [
        migrations.AlterField(
            model_name="action",
            name="args",
            field=models.JSONField(decoder=audit.jsonsafe.StoredJSONDecoder, default=dict),
        ),
        migrations.AlterField(
            model_name="action",
            name="meta",
            field=models.JSONField(
                blank=True, decoder=audit.jsonsafe.StoredJSONDecoder, default=dict
            ),
        ),
        migrations.AlterField(
            model_name="action",
            name="requested_args",
            field=models.JSONField(decoder=audit.jsonsafe.StoredJSONDecoder, default=dict),
        ),
        migrations.AlterField(
            model_name="action",
            name="result",
            field=models.JSONField(blank=True, decoder=audit.jsonsafe.StoredJSONDecoder, null=True),
        ),
        migrations.AlterField(
            model_name="run",
            name="input",
            field=models.JSONField(decoder=audit.jsonsafe.StoredJSONDecoder, default=dict),
        ),
        migrations.AlterField(
            model_name="run",
            name="output",
            field=models.JSONField(blank=True, decoder=audit.jsonsafe.StoredJSONDecoder, null=True),
        ),
    ]
