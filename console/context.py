from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def console(request: HttpRequest) -> dict[str, Any]:
    """What every page shows: engaged kill switches, to everyone who is logged in."""
    from agents.models import KillSwitch

    switches: list[KillSwitch] = []
    if getattr(request, "user", None) is not None and request.user.is_authenticated:
        from console.permissions import team_can, user_can

        switches = list(
            KillSwitch.objects.filter(released_at__isnull=True).select_related(
                "agent__team", "team", "engaged_by"
            )
        )
        for switch in switches:
            if switch.agent is not None:
                switch.can_release = user_can(request.user, "supervise", switch.agent)
            elif switch.team is not None:
                switch.can_release = team_can(request.user, "supervise", switch.team)
            else:
                switch.can_release = request.user.has_perm("agents.engage_global")
    return {"baton_embedded": settings.EMBEDDED, "engaged_switches": switches}
