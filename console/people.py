"""The People pages: an admin's people, what each may do where and why, and the forms
that change it. Every request is checked on the server (agents.people and
agents.permissions decide); the services refuse bad input with a message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from agents import people
from agents.permissions import may_manage_people
from agents.roles import GRANT_CAPABILITIES
from agents.services import ServiceError
from console.http import HtmxHttpRequest, signed_in

NOT_AN_ADMIN = "Only those who administer a team or an agent manage people."


def _admin(request: HttpRequest) -> Any:
    user = signed_in(request)
    if not may_manage_people(user):
        raise PermissionDenied(NOT_AN_ADMIN)
    return user


def _after(request: HttpRequest, person_id: int, change: Callable[[], str]) -> HttpResponse:
    """Run a change; say what happened (or why nothing did); back to the person's page."""
    try:
        done = change()
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return redirect("person", user_id=person_id)


@require_GET
@login_required
def people_list(request: HtmxHttpRequest) -> HttpResponse:
    user = _admin(request)
    query = request.GET.get("q", "").strip()
    found = people.people_for_admin(user)
    if query:
        found = found.filter(username__icontains=query)
    context = {
        "people": found[:200],
        "q": query,
        "targets": people.grant_targets(user),
        "grant_roles": list(GRANT_CAPABILITIES),
    }
    template = "people/people.html#list" if request.htmx else "people/people.html"
    return render(request, template, context)


def _invite_link(request: HttpRequest) -> Callable[[Any], str]:
    """How an invitation's link is made: the welcome page with Django's password reset
    token, on BATON_BASE_URL (the address people use) or else the address of this request."""

    def link(person: Any) -> str:
        path = reverse(
            "welcome",
            kwargs={
                "uidb64": urlsafe_base64_encode(force_bytes(person.pk)),
                "token": default_token_generator.make_token(person),
            },
        )
        base = settings.BATON_BASE_URL
        return f"{base}{path}" if base else request.build_absolute_uri(path)

    return link


@never_cache  # the page shows the new password, once
@require_POST
@login_required
def person_create(request: HttpRequest) -> HttpResponse:
    user = _admin(request)
    data = request.POST
    target = people.target_for_user(user, data["target"]) if data.get("target") else None
    try:
        person, password = people.person_create(
            username=data.get("username", ""),
            email=data.get("email", ""),
            name=data.get("name", ""),
            role=data.get("role") or None,
            target=target,
            by=user,
            invite_link=_invite_link(request) if data.get("invite") else None,
        )
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("people")
    # Rendered, not redirected: a message would keep the password in the session store.
    return render(request, "people/created.html", {"person": person, "password": password})


@require_POST
@login_required
def person_invite(request: HttpRequest, user_id: int) -> HttpResponse:
    """Send the invitation again to someone who has not chosen a password yet."""
    user = _admin(request)
    person = people.person_for_admin(user, user_id)

    def change() -> str:
        people.person_invite(person=person, by=user, invite_link=_invite_link(request))
        return f"An invitation is on its way to {person.email}."

    return _after(request, person.pk, change)


@require_POST
@login_required
def person_reactivate(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _admin(request)
    person = people.person_for_admin(user, user_id)

    def change() -> str:
        people.person_reactivate(person=person, by=user, reason=request.POST.get("reason", ""))
        return f"{person.username} may sign in again."

    return _after(request, person.pk, change)


class Welcome(auth_views.PasswordResetConfirmView):
    """Where an invitation's link leads: the new person chooses their password, once
    (Django's password reset token: it stops working when a password is set). Then they
    sign in."""

    template_name = "registration/welcome.html"
    success_url = reverse_lazy("login")
    post_reset_login = False

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(self.request, "Your password is set: sign in with it.")
        return response


@require_GET
@login_required
def person_detail(request: HtmxHttpRequest, user_id: int) -> HttpResponse:
    user = _admin(request)
    person = people.person_for_admin(user, user_id)
    context = {
        "person": person,
        "access": people.person_access(user, person),
        "targets": people.grant_targets(user),
        "grant_roles": list(GRANT_CAPABILITIES),
        "model_roles": [r for r in people.MODEL_WIDE_ROLES if people.may_assign_role(user, r)],
        "person_roles": [g.name for g in person.groups.all()],
    }
    template = "people/person.html#access" if request.htmx else "people/person.html"
    return render(request, template, context)


@require_POST
@login_required
def grant_add(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _admin(request)
    person = people.person_for_admin(user, user_id)
    target = people.target_for_user(user, request.POST.get("target", ""))
    role = request.POST.get("role", "")

    def change() -> str:
        people.grant_add(person=person, role=role, target=target, by=user)
        return f"{person.username} is now {role} of {target.slug}."

    return _after(request, person.pk, change)


@require_POST
@login_required
def grant_revoke(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _admin(request)
    person = people.person_for_admin(user, user_id)
    target = people.target_for_user(user, request.POST.get("target", ""))
    role = request.POST.get("role", "")

    def change() -> str:
        people.grant_revoke(
            person=person, role=role, target=target, by=user, reason=request.POST.get("reason", "")
        )
        return f"{person.username} is no longer {role} of {target.slug}."

    return _after(request, person.pk, change)


@require_POST
@login_required
def role_change(request: HttpRequest, user_id: int) -> HttpResponse:
    """Give (or, with `remove`, take away) a model-wide role."""
    user = _admin(request)
    person = people.person_for_admin(user, user_id)
    role = request.POST.get("role", "")

    def change() -> str:
        if request.POST.get("remove"):
            people.role_remove(
                person=person, role=role, by=user, reason=request.POST.get("reason", "")
            )
            return f"{person.username} no longer has the role {role}."
        people.role_assign(person=person, role=role, by=user)
        return f"{person.username} has the role {role}."

    return _after(request, person.pk, change)


@require_POST
@login_required
def person_deactivate(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _admin(request)
    person = people.person_for_admin(user, user_id)

    def change() -> str:
        ended = people.person_deactivate(
            person=person, by=user, reason=request.POST.get("reason", "")
        )
        return f"{person.username} is deactivated; {ended} session(s) ended."

    return _after(request, person.pk, change)
