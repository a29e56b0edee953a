"""Read-only pages about an agent's versions: the dry-run of one, the diff of two."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agents.dryrun import BAD_LAST_N, DEFAULT_LAST_N, MAX_LAST_N, policy_dry_run
from agents.permissions import agent_for_user
from agents.versions import version_diff, version_of


@require_GET
@login_required
def dry_run(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    version = version_of(agent, number)
    n = request.GET.get("n", "") or str(DEFAULT_LAST_N)
    context = {"agent": agent, "version": version, "n": n, "max_n": MAX_LAST_N}
    if not (n.isascii() and n.isdigit() and 1 <= int(n) <= MAX_LAST_N):
        context["error"] = BAD_LAST_N
        return render(request, "agents/dry_run.html", context, status=400)
    context["result"] = policy_dry_run(
        user=request.user, agent=agent, policy=version, last_n=int(n)
    )
    return render(request, "agents/dry_run.html", context)


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
