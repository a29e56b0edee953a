"""Shared by the role migrations (the migration loader skips modules starting with _).

Self-contained: the role groups and their model-wide permissions are frozen here as
agents.roles defined them when the last role migration was made, so migrating an empty
database never runs today's application code. A change to the roles' permissions is a new
migration that calls create_roles with the new table."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.management import create_permissions

GROUP_PERMISSIONS: dict[str, list[str]] = {
    "Supervisor": ["agents.engage_global"],
    "Agent admin": ["agents.add_agent", "agents.add_team"],
    "Compliance": [
        "agents.view_agent",
        "agents.view_team",
        "agents.view_run",
        "agents.view_action",
        "approvals.view_approvalrequest",
        "audit.view_auditevent",
        "audit.export_auditevent",
        "audit.sign_checkpoint",
    ],
}


def create_roles(apps: Any, group_permissions: dict[str, list[str]] = GROUP_PERMISSIONS) -> None:
    # Permissions are normally created after all migrations; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    perm_model = apps.get_model("auth", "Permission")
    for name, perms in group_permissions.items():
        group, _ = group_model.objects.get_or_create(name=name)
        for dotted in perms:
            app_label, codename = dotted.split(".")
            # A permission added by a later migration does not exist yet when an earlier
            # one runs; the later migration calls this again.
            found = perm_model.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if found is not None:
                group.permissions.add(found)
