"""Read-only pages about an agent's versions: the dry-run of one (or of the editor's
unsaved form, posted), the diff of two."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from agents.dryrun import BAD_LAST_N, DEFAULT_LAST_N, MAX_LAST_N, policy_dry_run
from agents.editor import draft_content, draft_from_post
from agents.editor_views import editor_render
from agents.models import Agent, AgentVersion
from agents.permissions import agent_for_user
from agents.versions import version_diff, version_of


def _last_n(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LAST_N else None


@require_http_methods(["GET", "POST"])
@login_required
def dry_run(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    version = version_of(agent, number)
    if request.method == "POST":
        return _dry_run_unsaved(request, agent, version)
    n = request.GET.get("n", "") or str(DEFAULT_LAST_N)
    context = {"agent": agent, "version": version, "n": n, "max_n": MAX_LAST_N}
    if _last_n(n) is None:
        context["error"] = BAD_LAST_N
        return render(request, "agents/dry_run.html", context, status=400)
    context["result"] = policy_dry_run(
        user=request.user, agent=agent, policy=version, last_n=int(n)
    )
    return render(request, "agents/dry_run.html", context)


def _dry_run_unsaved(request: HttpRequest, agent: Agent, version: AgentVersion) -> HttpResponse:
    """The editor's form as posted, tried on recent steps and drawn again with the counts
    beside it: nothing is saved (the Dry-run button posts here, not to the editor)."""
    draft = draft_from_post(request.POST)
    content = draft_content(draft)
    last_n = _last_n(request.POST.get("n", "") or str(DEFAULT_LAST_N))
    if content is None or last_n is None:
        error = BAD_LAST_N if last_n is None else ""
        return editor_render(request, agent, version, draft, 400, error=error, n_error=error)
    result = policy_dry_run(user=request.user, agent=agent, policy=content.policy, last_n=last_n)
    return editor_render(request, agent, version, draft, dry_run=result, unsaved=True)


@require_GET
@login_required
def diff(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug)
    versions = list(agent.versions.order_by("-number").values_list("number", flat=True))
    # Without a choice: the newest version against the one before it.
    b = request.GET.get("b") or (versions[0] if versions else "")
    a = request.GET.get("a") or (versions[1] if len(versions) > 1 else b)
    context = {
        "agent": agent,
        "numbers": versions,
        "diff": version_diff(version_of(agent, a), version_of(agent, b)),
    }
    return render(request, "agents/version_diff.html", context)
