"""Shared by the role migrations (the migration loader skips modules starting with _)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.management import create_permissions


def create_roles(apps: Any) -> None:
    # Permissions are normally created after all migrations; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from agents.roles import roles_ensure

    roles_ensure(apps)
