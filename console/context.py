from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from agents.models import KillSwitch
from agents.permissions import grants_prefetch, team_can, user_can
from audit.selectors import audit_scope, latest_seq


def switch_banners(user: Any) -> list[Any]:
    """The engaged kill switches this person may see (the rule for who sees which event:
    the global switch to everyone, a team or agent switch, with its reason and who engaged
    it, only to those who see that team or agent), each marked with whether they may
    release it."""
    scope = audit_scope(user)
    switches = [
        switch
        for switch in KillSwitch.objects.filter(released_at__isnull=True).select_related(
            "agent__team", "team", "engaged_by"
        )
        if scope.sees_switch(
            switch.agent_id, switch.agent.team_id if switch.agent else switch.team_id
        )
    ]
    # The grants on every switch's agent and team at once: no query per switch.
    grants_prefetch(
        user,
        [s.agent for s in switches if s.agent is not None],
        [s.team for s in switches if s.team is not None],
    )
    for switch in switches:
        if switch.agent is not None:
            switch.can_release = user_can(user, "supervise", switch.agent)
        elif switch.team is not None:
            switch.can_release = team_can(user, "supervise", switch.team)
        else:
            switch.can_release = user.has_perm("agents.engage_global")
    return switches


def console(request: HttpRequest) -> dict[str, Any]:
    """What every page shows: the engaged kill switches the person may see, and
    the sequence number the page was rendered at (where its live stream starts)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"baton_embedded": settings.EMBEDDED, "engaged_switches": []}
    return {
        "baton_embedded": settings.EMBEDDED,
        # Read when a template shows the banners, once: a page does, an htmx fragment
        # (a decision's panel, a queue's rows) mostly does not, and the banners are the
        # larger part of what this costs (the person's visibility, grants, the switches).
        "engaged_switches": functools.cache(lambda: switch_banners(user)),
        "live_seq": latest_seq(),
    }
