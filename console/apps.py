from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class BatonAdminConfig(admin_apps.AdminConfig):
    """The Django admin, on a site open to superusers only (console.admin)."""

    default = False  # named in INSTALLED_APPS; ConsoleConfig stays this app's own
    default_site = "console.admin_site.SuperuserAdminSite"


class ConsoleConfig(AppConfig):
    name = "console"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from console import telemetry  # noqa: F401 - registers the deployment check of /metrics

        user_logged_out.connect(_close_sockets, dispatch_uid="baton-live-logout")

        from axes.signals import user_locked_out

        from console.security import on_locked_out

        user_locked_out.connect(on_locked_out, dispatch_uid="baton-audit-lockout")


def _close_sockets(sender: object, request: object, user: object, **_: object) -> None:
    # A logged-out person's open pages stop receiving at once, not at the next re-check.
    from console.live import say_to_user

    if user is not None:
        say_to_user(user.pk, {"type": "live.logout"})  # type: ignore[attr-defined]
