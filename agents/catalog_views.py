"""The Teams pages, the agent forms, the admin agent page and its API keys. Every request
is checked here (agents.permissions) and again by the service (agents.catalog); bad input
is shown next to its field with a 400, and nothing is changed."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents import catalog, remote
from agents.catalog import Invalid
from agents.models import Agent, ApiKey
from agents.permissions import (
    agent_for_user,
    may_review_team,
    team_can,
    team_for_user,
    user_can,
)
from agents.registry import all_programs
from agents.services import ServiceError
from console.http import signed_in

KEY_NAME_REQUIRED = "Name the key (where it is used): at most 100 characters."
KEY_DAYS = "A key lasts a whole number of days from 1 to {max}."
KEY_DAYS_MAX = 365
OVERLAP = "The overlap is a whole number of hours from 0 to {max}."


def _errors(exc: ServiceError, field: str = "form") -> dict[str, str]:
    return {getattr(exc, "field", field): str(exc)}


def _number(text: str, field: str, low: int, high: int, message: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise Invalid(field, message)
    return int(text)


# --- teams --------------------------------------------------------------------------------


@require_GET
@login_required
def teams(request: HttpRequest) -> HttpResponse:
    user = signed_in(request)
    context = {"teams": catalog.teams_visible(user), "may_create": catalog.may_create_team(user)}
    return render(request, "teams/teams.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def team_create(request: HttpRequest) -> HttpResponse:
    user = signed_in(request)
    if not catalog.may_create_team(user):
        raise PermissionDenied(catalog.NOT_TEAM_CREATOR)
    form = request.POST
    if request.method == "POST":
        try:
            team = catalog.team_create(
                user=user, slug=form.get("slug", ""), name=form.get("name", "")
            )
        except ServiceError as exc:
            context = {"form": form, "errors": _errors(exc)}
            return render(request, "teams/team_form.html", context, status=400)
        messages.success(request, f"Team {team.name} created; you administer it.")
        return redirect("team", team=team.slug)
    return render(request, "teams/team_form.html", {"form": {}})


@require_GET
@login_required
def team_detail(request: HttpRequest, team: str) -> HttpResponse:
    found = team_for_user(request.user, team)
    context = {
        "team": found,
        "agents": catalog.team_agents(request.user, found),
        "can_administer": team_can(request.user, "administer", found),
        "can_review": may_review_team(request.user, found),
    }
    return render(request, "teams/team.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def team_edit(request: HttpRequest, team: str) -> HttpResponse:
    found = team_for_user(request.user, team, "administer")
    if request.method == "POST":
        form = request.POST
        try:
            found = catalog.team_update(
                team=found,
                user=signed_in(request),
                slug=form.get("slug", ""),
                name=form.get("name", ""),
                four_eyes=bool(form.get("four_eyes")),
            )
        except ServiceError as exc:
            context = {"team": found, "form": form, "errors": _errors(exc)}
            return render(request, "teams/team_form.html", context, status=400)
        messages.success(request, f"Team {found.name} saved.")
        return redirect("team", team=found.slug)
    form_values = {
        "slug": found.slug,
        "name": found.name,
        "four_eyes": found.publish_needs_second_admin,
    }
    return render(request, "teams/team_form.html", {"team": found, "form": form_values})


@require_POST
@login_required
def team_archive(request: HttpRequest, team: str) -> HttpResponse:
    found = team_for_user(request.user, team, "administer")
    try:
        catalog.team_archive(
            team=found, user=signed_in(request), reason=request.POST.get("reason", "")
        )
    except ServiceError as exc:
        context = {
            "team": found,
            "agents": catalog.team_agents(request.user, found),
            "can_administer": True,
            "errors": _errors(exc, "reason"),
        }
        return render(request, "teams/team.html", context, status=400)
    messages.success(request, f"Team {found.name} is archived.")
    return redirect("team", team=found.slug)


# --- agents -------------------------------------------------------------------------------


def _agent_form(
    request: HttpRequest, agent: Agent | None, form: Any, status: int = 200, **extra: Any
) -> HttpResponse:
    context = {
        "agent": agent,
        "form": form,
        "teams": catalog.teams_administered(request.user),
        "kinds": Agent.Kind.choices,
        **extra,
    }
    return render(request, "agents/admin/agent_form.html", context, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def agent_create(request: HttpRequest) -> HttpResponse:
    user = signed_in(request)
    if request.method == "GET":
        return _agent_form(request, None, {"team": request.GET.get("team", "")})
    form = request.POST
    team = team_for_user(user, form.get("team", ""), "administer")
    try:
        agent = catalog.agent_create(
            user=user,
            team=team,
            slug=form.get("slug", ""),
            name=form.get("name", ""),
            kind=form.get("kind", ""),
            description=form.get("description", ""),
            owner=form.get("owner", ""),
        )
    except ServiceError as exc:
        return _agent_form(request, None, form, status=400, errors=_errors(exc))
    messages.success(request, f"{agent.name} created: give it a first version.")
    return redirect("agent-admin", slug=agent.slug)


@require_http_methods(["GET", "POST"])
@login_required
def agent_edit(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    if request.method == "GET":
        owner = agent.owner.get_username() if agent.owner else ""
        values = {
            "slug": agent.slug,
            "name": agent.name,
            "team": agent.team.slug,
            "kind": agent.kind,
            "description": agent.description,
            "owner": owner,
            "decision_sla_minutes": agent.decision_sla_minutes,
        }
        return _agent_form(request, agent, values)
    form = request.POST
    team = team_for_user(request.user, form.get("team", ""), "view")
    try:
        agent = catalog.agent_update(
            agent=agent,
            user=signed_in(request),
            team=team,
            slug=form.get("slug", ""),
            name=form.get("name", ""),
            kind=form.get("kind", ""),
            description=form.get("description", ""),
            owner=form.get("owner", ""),
            decision_sla_minutes=form.get("decision_sla_minutes"),
        )
    except ServiceError as exc:
        return _agent_form(request, agent, form, status=400, errors=_errors(exc))
    messages.success(request, f"{agent.name} saved.")
    return redirect("agent-admin", slug=agent.slug)


def _archive(request: HttpRequest, slug: str, archive: bool) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    change = catalog.agent_archive if archive else catalog.agent_unarchive
    try:
        change(agent=agent, user=signed_in(request), reason=request.POST.get("reason", ""))
    except ServiceError as exc:
        return _admin_page(request, agent, status=400, errors=_errors(exc, "reason"))
    done = "archived: it starts no new runs" if archive else "restored"
    messages.success(request, f"{agent.name} is {done}.")
    return redirect("agent-admin", slug=agent.slug)


@require_POST
@login_required
def agent_archive(request: HttpRequest, slug: str) -> HttpResponse:
    return _archive(request, slug, archive=True)


@require_POST
@login_required
def agent_unarchive(request: HttpRequest, slug: str) -> HttpResponse:
    return _archive(request, slug, archive=False)


# --- the admin agent page -----------------------------------------------------------------


def _admin_page(
    request: HttpRequest, agent: Agent, status: int = 200, **extra: Any
) -> HttpResponse:
    context = {
        "agent": agent,
        "versions": list(agent.versions.select_related("author").order_by("-number")),
        "keys": catalog.agent_keys(agent) if agent.kind == Agent.Kind.REMOTE else [],
        "history": catalog.agent_history(agent),
        "can_administer": user_can(request.user, "administer", agent),
        "key_days_max": KEY_DAYS_MAX,
        "overlap_max": remote.ROTATE_OVERLAP_MAX_HOURS,
        # A hosted agent's first version names its program (a later one copies it).
        "programs": all_programs(),
        "errors": {},
        **extra,
    }
    return render(request, "agents/admin/admin.html", context, status=status)


@require_GET
@login_required
def agent_admin(request: HttpRequest, slug: str) -> HttpResponse:
    """Versions and rollout, API keys and the configuration history: readable by whoever
    may see the agent (archived or not); its forms only for those who administer it."""
    return _admin_page(request, agent_for_user(request.user, slug))


# --- API keys: the secret is in the one response that creates it, never stored --------------


def _key(agent: Agent, key_id: int) -> ApiKey:
    return get_object_or_404(ApiKey, pk=key_id, agent=agent)


def _shown_once(request: HttpRequest, agent: Agent, key: ApiKey, secret: str) -> HttpResponse:
    # Rendered, not redirected: a message would keep the secret in the session store.
    return render(
        request, "agents/admin/key_shown.html", {"agent": agent, "key": key, "secret": secret}
    )


@never_cache
@require_POST
@login_required
def key_create(request: HttpRequest, slug: str) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    name = request.POST.get("name", "").strip()
    try:
        if not name or len(name) > 100:
            raise Invalid("name", KEY_NAME_REQUIRED)
        days = _number(
            request.POST.get("days", ""), "days", 1, KEY_DAYS_MAX, KEY_DAYS.format(max=KEY_DAYS_MAX)
        )
        key, secret = remote.apikey_create(
            agent=agent, name=name, user=signed_in(request), days=days
        )
    except ServiceError as exc:
        return _admin_page(request, agent, status=400, errors=_errors(exc, "name"))
    return _shown_once(request, agent, key, secret)


@never_cache
@require_POST
@login_required
def key_rotate(request: HttpRequest, slug: str, key_id: int) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    key = _key(agent, key_id)
    top = remote.ROTATE_OVERLAP_MAX_HOURS
    try:
        hours = _number(
            request.POST.get("overlap_hours", ""), "overlap_hours", 0, top, OVERLAP.format(max=top)
        )
        new, secret = remote.apikey_rotate(key=key, user=signed_in(request), overlap_hours=hours)
    except ServiceError as exc:
        errors = _errors(exc, "overlap_hours")
        return _admin_page(request, agent, status=400, errors=errors, error_key=key.pk)
    return _shown_once(request, agent, new, secret)


@require_POST
@login_required
def key_revoke(request: HttpRequest, slug: str, key_id: int) -> HttpResponse:
    agent = agent_for_user(request.user, slug, "administer")
    key = _key(agent, key_id)
    try:
        remote.apikey_revoke(
            key=key, user=signed_in(request), reason=request.POST.get("reason", "")
        )
    except ServiceError as exc:
        errors = _errors(exc, "reason")
        return _admin_page(request, agent, status=400, errors=errors, error_key=key.pk)
    messages.success(request, f"Key {key.name} (bk_{key.prefix}…) is revoked.")
    return redirect("agent-admin", slug=agent.slug)
