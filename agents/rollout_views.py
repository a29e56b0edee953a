"""An agent's rollout screen: its live, shadow, canary and previous versions, what the
shadow and the canary do differently, and the forms that move a version through the
rollout (agents.rollout) or publish one (agents.services.version_publish, or a request
for a second admin's approval where the team wants four-eyes: approvals.publish).

Everyone who may see the agent sees the page; only its admins get the forms, and only
they may post them. Every form names the rollout as it was drawn (`seen`): the rollout
services compare it with the rollout under their lock, so a form drawn before someone
else's change is refused (409) and changes nothing.

This module sits above the approvals app in the layers (pyproject.toml): the rollout's
publish path opens and decides publish requests there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents.models import Agent, AgentVersion
from agents.permissions import agent_for_user, user_can
from agents.rollout import (
    PERCENT_RANGE,
    ROLLOUT_CHANGED,
    rollout_canary,
    rollout_promote,
    rollout_retire,
    rollout_rollback,
    rollout_shadow,
)
from agents.selectors import canary_comparison, shadow_differences
from agents.services import ROLLOUT_FIELDS, Conflict, ServiceError, version_publish
from agents.versions import version_of
from approvals.models import PublishRequest
from approvals.publish import (
    pending_publish_requests,
    publish_request_approve,
    publish_request_open,
    publish_request_reject,
)
from console.http import signed_in

TEMPLATE = "agents/rollout.html"
FORM_INCOMPLETE = "this form is incomplete: reload the page and try again"

S = AgentVersion.Stage


def seen_token(agent: Agent) -> str:
    """The rollout as a form saw it: live, shadow, canary, previous and the share."""
    ids = [getattr(agent, f"{field}_id") for field in ROLLOUT_FIELDS]
    return ".".join("" if i is None else str(i) for i in ids) + f".{agent.canary_percent}"


def _as_seen(agent: Agent, token: str) -> Agent:
    """A copy of `agent` with the rollout the form was drawn with, for the rollout
    services' compare-and-set."""
    parts = token.split(".")
    if len(parts) != len(ROLLOUT_FIELDS) + 1 or not all(p == "" or p.isdigit() for p in parts):
        raise ServiceError(FORM_INCOMPLETE)
    seen = copy.copy(agent)
    for field, part in zip(ROLLOUT_FIELDS, parts, strict=False):
        setattr(seen, f"{field}_id", int(part) if part else None)
    seen.canary_percent = int(parts[-1] or 0)
    return seen


def _context(request: HttpRequest, agent: Agent) -> dict[str, Any]:
    versions = list(agent.versions.select_related("author").order_by("-number"))
    by_pk = {v.pk: v for v in versions}
    placed = {getattr(agent, f"{f}_id") for f in ROLLOUT_FIELDS} - {None}
    requests = list(pending_publish_requests(agent))
    return {
        "agent": agent,
        "team": agent.team,
        "seen": seen_token(agent),
        "can_administer": user_can(request.user, "administer", agent),
        "places": {f: by_pk.get(getattr(agent, f"{f}_id")) for f in ROLLOUT_FIELDS},
        "published": [v for v in versions if v.published_at and v.pk not in placed],
        "drafts": [v for v in versions if v.published_at is None and v.stage == S.DRAFT],
        "shadow": shadow_differences(agent) if agent.shadow_version_id else None,
        "canary": canary_comparison(agent) if agent.canary_version_id else None,
        "publish_requests": requests,
        "waiting": {r.version_id for r in requests},
    }


def _failed(
    request: HttpRequest, agent: Agent, form: str, exc: ServiceError, **more: Any
) -> HttpResponse:
    context = _context(request, agent)
    context.update(error=str(exc), error_form=form, **more)
    # The form it came from shows the message too (forms of one move differ by version).
    context.setdefault("error_version", request.POST.get("version", ""))
    return render(request, TEMPLATE, context, status=409 if isinstance(exc, Conflict) else 400)


def _after(
    request: HttpRequest, agent: Agent, form: str, change: Callable[[], str], **more: Any
) -> HttpResponse:
    """Run a change; back to the rollout page with what happened, or the page again with
    why nothing did, next to the form that asked (400; 409 when it was stale)."""
    try:
        done = change()
    except ServiceError as exc:
        return _failed(request, agent, form, exc, **more)
    messages.success(request, done)
    return redirect("agent-rollout", slug=agent.slug)


@require_GET
@login_required
def rollout(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug)
    return render(request, TEMPLATE, _context(request, agent))


def _percent(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise ServiceError(PERCENT_RANGE)
    return int(text)


def _moved(move: str, seen: Agent, post: Any, user: User) -> str:
    reason = post.get("reason", "")
    if move == "promote":
        rollout_promote(agent=seen, user=user, reason=reason)
        return "The canary is live for every new run."
    if move == "rollback":
        rollout_rollback(agent=seen, user=user, reason=reason)
        return "The previous version is live again for new runs."
    version = version_of(seen, post.get("version", ""))
    if move == "shadow":
        rollout_shadow(agent=seen, version=version, user=user, reason=reason)
        return f"v{version.number} is now the shadow version."
    if move == "canary":
        percent = _percent(post.get("percent", ""))
        rollout_canary(agent=seen, version=version, percent=percent, user=user, reason=reason)
        return f"v{version.number} is the canary for {percent} % of new runs."
    rollout_retire(agent=seen, version=version, user=user, reason=reason)
    return f"v{version.number} is retired."


MOVES = ("shadow", "canary", "promote", "rollback", "retire")


@require_POST
@login_required
def change(request: HttpRequest, slug: str, move: str) -> HttpResponse:
    """Shadow, canary, promote, rollback or retire: one of agents.rollout's services."""
    assert move in MOVES  # fixed by the URLconf
    agent = agent_for_user(request.user, slug, "administer")
    user = signed_in(request)
    return _after(
        request,
        agent,
        move,
        lambda: _moved(move, _as_seen(agent, request.POST.get("seen", "")), request.POST, user),
    )


@require_POST
@login_required
def publish(request: HttpRequest, slug: str) -> HttpResponse:
    """Publish a draft (to live, or only published so it may enter shadow or canary), with
    a reason and the admin's password; where the team wants four-eyes, ask for a second
    admin's approval instead."""
    agent = agent_for_user(request.user, slug, "administer")
    post = request.POST
    live = post.get("live") == "1"
    kwargs: dict[str, Any] = {
        "user": signed_in(request),
        "reason": post.get("reason", ""),
        "live": live,
        "password": post.get("password", ""),
        "request": request,
    }

    def apply() -> str:
        seen = _as_seen(agent, post.get("seen", ""))
        if seen_token(seen) != seen_token(agent):
            raise Conflict(ROLLOUT_CHANGED.format(agent=agent.name))
        version = version_of(agent, post.get("version", ""))
        if agent.team.publish_needs_second_admin:
            publish_request_open(version=version, **kwargs)
            return f"v{version.number} waits for a second admin of {agent.team.name}."
        version_publish(version=version, **kwargs)
        return f"v{version.number} is published" + (" and live." if live else ".")

    return _after(request, agent, "publish", apply)


@require_POST
@login_required
def publish_decide(request: HttpRequest, slug: str, publish_id: int, verdict: str) -> HttpResponse:
    """A second admin approves (with their password again) or rejects (with a reason) one
    of the agent's publish requests."""
    agent = agent_for_user(request.user, slug, "administer")
    get_object_or_404(PublishRequest, pk=publish_id, agent=agent)
    user, post = signed_in(request), request.POST

    def apply() -> str:
        if verdict == "approve":
            done = publish_request_approve(
                publish_id=publish_id,
                user=user,
                password=post.get("password", ""),
                request=request,
            )
            return f"v{done.version.number} is published."
        publish_request_reject(publish_id=publish_id, user=user, reason=post.get("reason", ""))
        return "The publish request is rejected; nothing was published."

    return _after(request, agent, "request", apply, error_request=publish_id)
