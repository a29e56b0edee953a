"""The policy editor's pages: start a draft, edit it (issue 11, point 3). For the agent's
admins only; a published version opens read-only, and a save posted to one is refused
(409) and changes nothing. The dry-run of the unsaved form is agents.version_views."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from agents.drafts import PUBLISHED_IS_FINAL, version_draft_new, version_draft_save
from agents.editor import (
    Draft,
    draft_apply,
    draft_content,
    draft_from_post,
    draft_from_version,
    editor_choices,
)
from agents.models import Agent, AgentVersion
from agents.permissions import agent_for_user
from agents.services import Conflict, ServiceError
from agents.versions import version_of
from console.http import signed_in

TEMPLATE = "agents/editor.html"
SAVED = "v{number} saved: still a draft, publish it from the rollout page"
UNCHANGED = "v{number} is as it was: nothing to save"
CREATED = "v{number} is a new draft ({note}): edit it, then publish it from the rollout page"
UNKNOWN_ACTION = "this button is not known here: reload the page and try again"


def editor_render(
    request: HttpRequest,
    agent: Agent,
    version: AgentVersion,
    draft: Draft,
    status: int = 200,
    **more: Any,
) -> HttpResponse:
    context = {
        "agent": agent,
        "version": version,
        "draft": draft,
        "published": version.published_at is not None,
        "n": request.POST.get("n", "") or "200",
        **editor_choices(agent),
        **more,
    }
    return render(request, TEMPLATE, context, status=status)


@require_POST
@login_required
def version_new(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    source = version_of(agent, request.POST["from"]) if request.POST.get("from") else None
    try:
        program = request.POST.get("program", "")
        version = version_draft_new(
            agent=agent, user=signed_in(request), from_version=source, program=program
        )
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("agent", slug=agent.slug)
    messages.success(request, CREATED.format(number=version.number, note=version.note or "empty"))
    return redirect("version-edit", slug=agent.slug, number=version.number)


@require_http_methods(["GET", "POST"])
@login_required
def version_edit(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    version = version_of(agent, number)
    if request.method == "GET":
        return editor_render(request, agent, version, draft_from_version(version))
    draft = draft_from_post(request.POST)
    if version.published_at is not None:
        error = PUBLISHED_IS_FINAL.format(number=version.number)
        return editor_render(request, agent, version, draft, 409, error=error)
    action = request.POST.get("action", "save")
    if action != "save":
        known = draft_apply(draft, action)
        status = 400 if draft.has_errors or not known else 200
        error = "" if known else UNKNOWN_ACTION
        return editor_render(request, agent, version, draft, status, unsaved=True, error=error)
    content = draft_content(draft)
    if content is None:
        return editor_render(request, agent, version, draft, 400)
    try:
        changed = version_draft_save(
            version=version,
            policy=content.policy,
            config=content.config,
            note=content.note,
            user=signed_in(request),
        )
    except ServiceError as exc:
        status = 409 if isinstance(exc, Conflict) else 400
        return editor_render(request, agent, version, draft, status, error=str(exc))
    messages.success(request, (SAVED if changed else UNCHANGED).format(number=version.number))
    return redirect("version-edit", slug=agent.slug, number=version.number)
