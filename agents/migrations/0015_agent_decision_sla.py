from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("agents", "0014_run_status_finished")]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="decision_sla_minutes",
            field=models.PositiveIntegerField(default=60),
        ),
    ]
