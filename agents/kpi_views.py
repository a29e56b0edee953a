"""The KPI pages: one agent's, and the fleet's by team (agents.kpis computes them).

Everyone who may see an agent sees its KPIs and its alert rules; the fleet page covers
the agents the person sees (a supervisor their teams', compliance all). The agent's page
shows its drift too (agents.drift): the fleet page does not, as drift reads samples of
every agent's runs."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agents import alerts, drift, kpis
from agents.permissions import agent_for_user, reviewable_team_ids


def _window(request: HttpRequest) -> tuple[kpis.Window, str]:
    """The window the request names (the default when it names none), and an error."""
    try:
        return kpis.window_named(request.GET.get("window") or kpis.DEFAULT_WINDOW), ""
    except ValueError as exc:
        return kpis.window_named(kpis.DEFAULT_WINDOW), str(exc)


def _base(window: kpis.Window, error: str) -> dict[str, object]:
    return {"window": window, "windows": list(kpis.WINDOWS), "error": error}


@require_GET
@login_required
def agent_kpis(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug)
    window, error = _window(request)
    context = {**_base(window, error), **kpis.agent_page(agent, window)}
    context["drift"] = drift.drift_report(agent, window, drift.baseline_before(window))
    context["alert_rules"] = alerts.agent_rules(agent)
    return render(request, "agents/kpis.html", context, status=400 if error else 200)


@require_GET
@login_required
def fleet_kpis(request: HttpRequest) -> HttpResponse:
    window, error = _window(request)
    context = {
        **_base(window, error),
        **kpis.fleet_page(request.user, window),
        # The teams whose approvers and weekly review the person may open (None: all).
        "reviewable": reviewable_team_ids(request.user),
    }
    return render(request, "agents/fleet_kpis.html", context, status=400 if error else 200)
