"""Live frames: the HTML a socket (or the catch-up endpoint) sends for audit events —
the same partials the pages render, marked for htmx out-of-band swaps. Every frame says
which event it carries (data-seq) and which one came before it (data-after), so the
browser can tell a gap and fetch what it missed."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.template.loader import render_to_string

from agents import selectors as agent_selectors
from approvals.selectors import decidable_count
from audit.models import AuditEvent
from audit.selectors import Scope, audit_scope, events_for_user
from console import live
from console.context import switch_banners

BATCH = 200


def visible_scope(user: Any) -> Scope:
    """What the person may see: the audit trail's one rule (audit.selectors.Scope)."""
    return audit_scope(user)


def visible_events(
    user: Any, after: int, upto: int | None = None, scope: Scope | None = None
) -> list[AuditEvent]:
    """The next events after `after` the person may see, oldest first, at most BATCH."""
    scope = scope or visible_scope(user)
    if scope.nothing:
        return []
    events = AuditEvent.objects.filter(scope.condition(), seq__gt=after)
    if upto is not None:
        events = events.filter(seq__lte=upto)
    return list(events.order_by("seq")[:BATCH])


def recent_events(user: Any, count: int = 30) -> list[AuditEvent]:
    """The newest events the person may see, newest first (the page's starting stream)."""
    return list(events_for_user(user)[:count])


def groups_for(scope: Scope) -> list[str]:
    """The channel-layer groups a socket joins: every group a doorbell for an event it may
    see rings (console.live.event_groups), and no other."""
    if scope.nothing:
        return []
    if scope.everything:
        return [live.EVERYTHING]
    return (
        [live.EVERYONE]
        + [live.team_group(t) for t in scope.teams]
        + [live.agent_group(a) for a in scope.agents]
        + [live.team_level_group(t) for t in scope.team_level]
    )


def _stub_request(user: Any, csrf_cookie: str) -> HttpRequest:
    # Fragments hold forms: render them with the person and the CSRF secret of their socket.
    request = HttpRequest()
    request.user = user
    request.path = "/"
    request.META["CSRF_COOKIE"] = csrf_cookie
    return request


def render_frames(
    user: Any, events: list[AuditEvent], after: int, csrf_cookie: str = ""
) -> tuple[str, int]:
    """HTML for the events, in order, and the last seq carried."""
    if not events:
        return "", after
    # Only what these events change is rendered again: the stream always; the badge on
    # approvals; the cards of agents whose runs moved; everything a switch touches.
    request = _stub_request(user, csrf_cookie)
    kinds = {e.verb.split(".")[0] for e in events}
    context: dict[str, Any] = {"events": events, "after": after, "request": request, "user": user}
    if "approval" in kinds or "killswitch" in kinds:
        context["pending_count"] = decidable_count(user)
    if "killswitch" in kinds:
        context["agents"] = agent_selectors.agent_cards(user)
        context["engaged_switches"] = switch_banners(user)
        context["show_banners"] = True
    else:
        moved = {e.agent_id for e in events if e.verb.startswith("run.") and e.agent_id}
        if moved:
            context["agents"] = agent_selectors.agent_cards(user, moved)
    html = render_to_string("console/frames.html", context, request=request)
    return html, events[-1].seq


def hello_frame(seq: int) -> str:
    return (
        f'<div id="live-frame" hidden hx-swap-oob="outerHTML" data-seq="{seq}" '
        f'data-after="{seq}" data-hello="1"></div>'
    )
