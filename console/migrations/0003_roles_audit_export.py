from __future__ import annotations

from django.db import migrations


def update_roles(apps, schema_editor):
    from console.migrations import _roles

    _roles.create_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0002_roles_global_switch"),
        ("audit", "0005_append_only"),
    ]
    operations = [migrations.RunPython(update_roles, migrations.RunPython.noop)]
