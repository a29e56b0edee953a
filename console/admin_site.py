"""The admin site: open to active superusers only (console.admin registers its models).
Apart from console.admin so the site class can be imported while the admin loads."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect


class SuperuserAdminSite(admin.AdminSite):
    """Open to active superusers only; to everyone else it does not exist (404), whatever
    their is_staff, and a signed-out visitor is sent to the console's own login."""

    site_header = "Baton admin"
    site_title = "Baton admin"
    final_catch_all_view = False

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and user.is_superuser)

    def admin_view(self, view: Any, cacheable: bool = False) -> Any:
        inner = super().admin_view(view, cacheable)

        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not self.has_permission(request):
                raise Http404
            return inner(request, *args, **kwargs)

        guarded.admin_site = self  # type: ignore[attr-defined]
        return guarded

    def login(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.GET.get("next", "/admin/"))
        if self.has_permission(request):
            return redirect("admin:index")
        raise Http404
