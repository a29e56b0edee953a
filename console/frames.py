"""Live frames: the HTML a socket (or the catch-up endpoint) sends for audit events —
the same partials the pages render, marked for htmx out-of-band swaps. Every frame says
which event it carries (data-seq) and which one came before it (data-after), so the
browser can tell a gap and fetch what it missed."""

from __future__ import annotations

from typing import Any

from django.db.models import Q
from django.http import HttpRequest
from django.template.loader import render_to_string

from agents import selectors as agent_selectors
from approvals.selectors import decidable_count
from audit.models import AuditEvent
from console.context import switch_banners
from console.permissions import agents_for_user

BATCH = 200


def visible_scope(user: Any) -> tuple[set[int], set[int]]:
    agents = agents_for_user(user).values_list("pk", "team_id")
    return {a for a, _ in agents}, {t for _, t in agents}


def _visible(agent_ids: set[int], team_ids: set[int]) -> Q:
    return (
        Q(agent_id__in=agent_ids)
        | Q(agent_id__isnull=True, team_id__in=team_ids)
        # Events about no agent or team that everyone is shown: the global switch.
        | Q(agent_id__isnull=True, team_id__isnull=True, subject_type="killswitch")
    )


def visible_events(
    user: Any, after: int, upto: int | None = None, scope: tuple[set[int], set[int]] | None = None
) -> list[AuditEvent]:
    events = AuditEvent.objects.filter(seq__gt=after).filter(
        _visible(*(scope or visible_scope(user)))
    )
    if upto is not None:
        events = events.filter(seq__lte=upto)
    return list(events.order_by("seq")[:BATCH])


def recent_events(user: Any, count: int = 30) -> list[AuditEvent]:
    """The newest events the person may see, newest first (the page's starting stream)."""
    return list(AuditEvent.objects.filter(_visible(*visible_scope(user))).order_by("-seq")[:count])


def latest_seq() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


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
