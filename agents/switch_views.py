"""Kill switches from the console: engage (pause or halt) an agent, a team or everything,
and release them. Every request re-checks who may, on the server."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from agents.forms import PASSWORD_REQUIRED, PASSWORD_WRONG, EngageForm, ReleaseForm
from agents.models import KillSwitch
from agents.permissions import agent_for_user, team_for_user
from agents.services import ServiceError, killswitch_engage, killswitch_release
from console.http import signed_in
from console.signin import is_locked_out, locked_out_message, password_confirm

GLOBAL_NOT_ALLOWED = "You may not stop or restart everything."


def _back(request: HttpRequest) -> HttpResponse:
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("overview")


def _form_errors(request: HttpRequest, form: Any) -> HttpResponse:
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, error)
    response = _back(request)
    response.status_code = 303
    return response


def _check_global(request: HttpRequest, password: str) -> str | None:
    """Who may touch the global switch, re-authenticated: an error message or None."""
    if not request.user.has_perm("agents.engage_global"):
        raise PermissionDenied(GLOBAL_NOT_ALLOWED)
    if not password:
        return PASSWORD_REQUIRED
    if not password_confirm(request, password):
        # Counted like a failed login (django-axes); once locked, the middleware answers
        # with the lock-out page instead of this message.
        return locked_out_message() if is_locked_out(request) else PASSWORD_WRONG
    return None


@require_POST
@login_required
def engage(request: HttpRequest) -> HttpResponse:
    form = EngageForm(request.POST)
    if not form.is_valid():
        return _form_errors(request, form)
    data = form.cleaned_data
    target: dict[str, Any] = {}
    if data["scope"] == KillSwitch.Scope.AGENT:
        target["agent"] = agent_for_user(request.user, data["agent"], "supervise")
    elif data["scope"] == KillSwitch.Scope.TEAM:
        target["team"] = team_for_user(request.user, data["team"], "supervise")
    else:
        problem = _check_global(request, data["password"])
        if problem:
            messages.error(request, problem)
            return _back(request)
    try:
        killswitch_engage(
            scope=data["scope"],
            mode=data["mode"],
            reason=data["reason"],
            user=signed_in(request),
            **target,
        )
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Kill switch engaged: {data['mode']}.")
    return _back(request)


@require_POST
@login_required
def release(request: HttpRequest, switch_id: int) -> HttpResponse:
    switch = KillSwitch.objects.select_related("agent", "team").filter(pk=switch_id).first()
    if switch is None:
        raise Http404("No such kill switch.")
    form = ReleaseForm(request.POST)
    if not form.is_valid():
        return _form_errors(request, form)
    if switch.scope == KillSwitch.Scope.AGENT and switch.agent is not None:
        agent_for_user(request.user, switch.agent.slug, "supervise")
    elif switch.scope == KillSwitch.Scope.TEAM and switch.team is not None:
        team_for_user(request.user, switch.team.slug, "supervise")
    else:
        problem = _check_global(request, form.cleaned_data["password"])
        if problem:
            messages.error(request, problem)
            return _back(request)
    try:
        requeued = killswitch_release(
            switch=switch,
            user=signed_in(request),
            reason=form.cleaned_data["reason"],
        )
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Kill switch released; {requeued} paused run(s) resumed.")
    return _back(request)
