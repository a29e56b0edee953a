from __future__ import annotations

from django.db import migrations


def update_roles(apps, schema_editor):
    from console.migrations import _roles

    _roles.create_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0001_roles"),
        ("agents", "0005_global_switch_permission"),
    ]
    operations = [migrations.RunPython(update_roles, migrations.RunPython.noop)]
