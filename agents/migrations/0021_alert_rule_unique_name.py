# One alert rule of a name (whatever its case) on an agent or a team: a form sent twice
# adds one rule. Rules already doubled keep their first; each later one is renamed with
# its id, so nothing is lost and the constraint holds.

import django.db.models.functions.text
from django.conf import settings
from django.db import migrations, models


def rename_doubles(apps, schema_editor):
    AlertRule = apps.get_model("agents", "AlertRule")
    seen = set()
    for rule in AlertRule.objects.order_by("pk"):
        key = (rule.agent_id, rule.team_id, rule.name.lower())
        if key in seen:
            suffix = f" (#{rule.pk})"
            rule.name = rule.name[: 100 - len(suffix)] + suffix
            rule.save(update_fields=["name"])
        seen.add(key)


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0020_run_history_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(rename_doubles, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="alertrule",
            constraint=models.UniqueConstraint(
                django.db.models.functions.text.Lower("name"),
                models.F("agent"),
                condition=models.Q(("agent__isnull", False)),
                name="alert_rule_name_per_agent",
            ),
        ),
        migrations.AddConstraint(
            model_name="alertrule",
            constraint=models.UniqueConstraint(
                django.db.models.functions.text.Lower("name"),
                models.F("team"),
                condition=models.Q(("team__isnull", False)),
                name="alert_rule_name_per_team",
            ),
        ),
    ]
