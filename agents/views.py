from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agents import selectors
from agents.permissions import agent_for_user, user_can
from console.http import HtmxHttpRequest

BAD_RUNS_PAGE = "This page link is broken: start again from the newest runs."


@require_GET
@login_required
def workers(request: HtmxHttpRequest) -> HttpResponse:
    template = "agents/workers.html#list" if request.htmx else "agents/workers.html"
    return render(request, template, {"workers": selectors.workers(request.user)})


@require_GET
@login_required
def agent_detail(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug)
    before = request.GET.get("before", "")
    if before and not (before.isascii() and before.isdigit() and len(before) <= 18):
        context = selectors.agent_detail(agent)
        context["error"] = BAD_RUNS_PAGE
        return render(request, "agents/agent.html", context, status=400)
    context = selectors.agent_detail(agent, before=int(before) if before else None)
    context["can_administer"] = user_can(request.user, "administer", agent)
    return render(request, "agents/agent.html", context)


@require_GET
@login_required
def run_detail(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    run = selectors.run_for_user(request.user, run_id)
    template = "agents/run.html#journal" if request.htmx else "agents/run.html"
    return render(request, template, {"run": run, "journal": selectors.journal(run)})
