from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic.base import RedirectView

from agents import api, switch_views, version_views
from agents import views as agent_views
from approvals import views as approval_views
from console import people as people_views
from console import views as console_views

urlpatterns = [
    path("", console_views.overview, name="overview"),
    path("agents/<slug:slug>/", agent_views.agent_detail, name="agent"),
    path("agents/<slug:slug>/versions/diff/", version_views.diff, name="version-diff"),
    path(
        "agents/<slug:slug>/versions/<int:number>/dry-run/",
        version_views.dry_run,
        name="version-dry-run",
    ),
    path("workers/", agent_views.workers, name="workers"),
    path("runs/<int:run_id>/", agent_views.run_detail, name="run"),
    path("approvals/", approval_views.queue, name="approvals"),
    path("approvals/badge", approval_views.badge, name="approvals-badge"),
    path("approvals/batch", approval_views.batch, name="approvals-batch"),
    path("approvals/<int:request_id>/", approval_views.detail, name="approval"),
    path("approvals/<int:request_id>/decide", approval_views.decide, name="approval-decide"),
    path("switches/engage", switch_views.engage, name="switch-engage"),
    path("switches/<int:switch_id>/release", switch_views.release, name="switch-release"),
    path("live/events", console_views.live_events, name="live-events"),
    # People and their access (issue 11); the admin, for superusers only.
    path("admin/", admin.site.urls),
    path("people/", people_views.people_list, name="people"),
    path("people/new", people_views.person_create, name="people-create"),
    path("people/<int:user_id>/", people_views.person_detail, name="person"),
    path("people/<int:user_id>/grant", people_views.grant_add, name="person-grant"),
    path("people/<int:user_id>/revoke", people_views.grant_revoke, name="person-revoke"),
    path("people/<int:user_id>/role", people_views.role_change, name="person-role"),
    path(
        "people/<int:user_id>/deactivate", people_views.person_deactivate, name="person-deactivate"
    ),
    path(
        "people/<int:user_id>/reactivate", people_views.person_reactivate, name="person-reactivate"
    ),
    path("people/<int:user_id>/invite", people_views.person_invite, name="person-invite"),
    path("welcome/<uidb64>/<token>/", people_views.Welcome.as_view(), name="welcome"),
    # Browsers ask for /favicon.ico on their own; answer instead of logging a 404 each time.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("audit/", include("audit.urls")),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # The API for remote agents (django-ninja): its OpenAPI document and docs are under it.
    path("api/v1/", api.urls()),
    re_path(r"^api/(?P<rest>.*)$", api.not_found),  # the API answers JSON, even a 404
]
