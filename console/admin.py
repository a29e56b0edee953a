"""The Django admin, for superusers only, to inspect everything: people, groups, agents
and teams (with who holds which object permission, via django-guardian), runs, approvals
and the trail. It changes nothing: every change is a service that writes its audit event
(people and grants on /people/), and the admin's forms would bypass them."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from guardian.admin import GuardedModelAdmin

from agents.models import (
    Action,
    Agent,
    AgentVersion,
    ApiKey,
    KillSwitch,
    Run,
    Team,
    WorkerBeat,
)
from approvals.models import ApprovalDecision, ApprovalRequest
from audit.models import AuditEvent, Checkpoint, Verification

READ_ONLY = "The admin only shows; change people and grants on /people/, where it is audited."


class ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class GuardedReadOnly(GuardedModelAdmin):  # type: ignore[misc]
    """Who holds which permission on the object is shown; granting goes through /people/
    (guardian's forms would assign without an audit event)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in self.model._meta.fields]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        raise PermissionDenied(READ_ONLY)

    def obj_perms_manage_user_view(self, request: HttpRequest, object_pk: Any, user_id: Any) -> Any:
        if request.method == "POST":
            raise PermissionDenied(READ_ONLY)
        return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(
        self, request: HttpRequest, object_pk: Any, group_id: Any
    ) -> Any:
        if request.method == "POST":
            raise PermissionDenied(READ_ONLY)
        return super().obj_perms_manage_group_view(request, object_pk, group_id)


class UserView(ReadOnly, UserAdmin):  # type: ignore[misc]
    pass


class GroupView(ReadOnly, GroupAdmin):
    pass


site = admin.site
for auth_model in (get_user_model(), Group):
    if site.is_registered(auth_model):
        site.unregister(auth_model)
site.register(get_user_model(), UserView)
site.register(Group, GroupView)
site.register(Team, GuardedReadOnly)
site.register(Agent, GuardedReadOnly)
for model in (
    AgentVersion,
    Run,
    Action,
    KillSwitch,
    ApiKey,
    WorkerBeat,
    ApprovalRequest,
    ApprovalDecision,
    AuditEvent,
    Checkpoint,
    Verification,
):
    site.register(model, ReadOnly)
