"""Live frames: the HTML a socket (or the catch-up endpoint) sends for audit events —
the same partial the pages render for an event, marked for an htmx out-of-band swap.
Every frame says which event it carries last (data-seq) and which one came before it
(data-after), so the browser can tell a gap and fetch what it missed.

A frame holds nothing of one person: it is rendered once per process for every socket
of a visibility class (console.fanout). What does differ per person — the approvals
badge, the agents' cards and the switch banners with their forms — the frame only names
(data-changed, data-agents), and the page fetches it over HTTP (console.views.live_parts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.template.loader import get_template

from agents import alerts as agent_alerts
from agents import selectors as agent_selectors
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


def new_events(after: int) -> list[AuditEvent]:
    """Every event after `after`, oldest first, at most BATCH: what a process's live
    renderer reads once per doorbell, for all its sockets (it sorts them by Scope.sees)."""
    return list(AuditEvent.objects.filter(seq__gt=after).order_by("seq")[:BATCH])


def recent_events(user: Any, count: int = 30) -> list[AuditEvent]:
    """The newest events the person may see, newest first (the page's starting stream)."""
    return list(events_for_user(user)[:count])


def groups_for(scope: Scope) -> list[str]:
    """The channel-layer groups a doorbell for an event of this scope rings
    (console.live.event_groups), and no other."""
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


def render_event(event: AuditEvent) -> str:
    """One event's line of the stream, the partial the pages use (no person in it)."""
    return get_template("console/event.html").render({"e": event})


def changes(events: Iterable[AuditEvent]) -> tuple[list[str], list[int]]:
    """What else on a page these events may have changed, for the page to fetch: the
    approvals (badge and queue), the switch banners, the firing alerts, and the cards of
    agents whose runs moved (all cards on a kill switch)."""
    kinds = {e.verb.split(".")[0] for e in events}
    changed = []
    if "alert" in kinds:
        changed.append("alerts")
    if "approval" in kinds or "killswitch" in kinds:
        changed.append("approvals")
    if "killswitch" in kinds:
        changed += ["switches", "agents"]
        return changed, []
    moved = sorted({e.agent_id for e in events if e.verb.startswith("run.") and e.agent_id})
    if moved:
        changed.append("agents")
    return changed, moved


def frame(events: list[AuditEvent], after: int, fragments: dict[int, str]) -> str:
    """A frame for these events (oldest first, all of one visibility class), from their
    rendered lines; the same bytes for everyone who may see exactly these events."""
    return frame_of_lines(events, after, "".join(fragments[e.seq] for e in reversed(events)))


def frame_of_lines(events: list[AuditEvent], after: int, lines: str) -> str:
    """The frame for these events (oldest first) from their lines, already joined newest
    first: also how frames waiting for one socket are joined into one (console.fanout)."""
    changed, agents = changes(events)
    hints = f' data-changed="{" ".join(changed)}"' if changed else ""
    if agents:
        hints += f' data-agents="{",".join(map(str, agents))}"'
    return (
        f'<div id="live-frame" hidden hx-swap-oob="outerHTML" data-seq="{events[-1].seq}" '
        f'data-after="{after}"{hints}></div>'
        f'<ol hx-swap-oob="afterbegin:#event-stream">{lines}</ol>'
    )


def render_frames(events: list[AuditEvent], after: int) -> tuple[str, int]:
    """HTML for the events, in order, and the last seq carried (the catch-up endpoint)."""
    if not events:
        return "", after
    return frame(events, after, {e.seq: render_event(e) for e in events}), events[-1].seq


def hello_frame(seq: int) -> str:
    return (
        f'<div id="live-frame" hidden hx-swap-oob="outerHTML" data-seq="{seq}" '
        f'data-after="{seq}" data-hello="1"></div>'
    )


def parts_context(
    user: Any, agents: set[int], cards: bool, switches: bool, alerts: bool = False
) -> dict[str, Any]:
    """The per-person parts a frame said changed, for the page that asked: the cards of
    these agents (those of them the person may see), the switch banners and the firing
    alerts, each if asked."""
    context: dict[str, Any] = {"agents": agent_selectors.agent_cards(user, agents) if cards else []}
    if switches:
        context["engaged_switches"] = switch_banners(user)
        context["show_banners"] = True
    if alerts:
        context["firing_alerts"] = agent_alerts.firing_for_user(user)
        context["show_alerts"] = True
    return context
