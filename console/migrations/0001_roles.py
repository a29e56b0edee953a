from __future__ import annotations

from django.db import migrations


def create_roles(apps, schema_editor):
    from console.migrations import _roles

    _roles.create_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("agents", "0001_initial"),
        ("approvals", "0001_initial"),
        ("audit", "0001_initial"),
    ]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
