from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic.base import RedirectView

from agents import (
    alert_views,
    api,
    catalog_views,
    editor_views,
    kpi_views,
    review_views,
    rollout_views,
    switch_views,
    version_views,
)
from agents import views as agent_views
from agents.mcp import views as mcp_views
from approvals import views as approval_views
from console import health, telemetry
from console import people as people_views
from console import views as console_views

urlpatterns = [
    path("", console_views.overview, name="overview"),
    path("agents/<slug:slug>/", agent_views.agent_detail, name="agent"),
    # Teams and agents, the admin agent page and its API keys (issue 11).
    path("teams/", catalog_views.teams, name="teams"),
    path("teams/new", catalog_views.team_create, name="team-create"),
    path("teams/<slug:team>/", catalog_views.team_detail, name="team"),
    path("teams/<slug:team>/edit", catalog_views.team_edit, name="team-edit"),
    path("teams/<slug:team>/archive", catalog_views.team_archive, name="team-archive"),
    # A team's approver analytics and weekly exception review (issue 14).
    path("teams/<slug:team>/approvers/", review_views.approvers, name="team-approvers"),
    path("teams/<slug:team>/review/", review_views.weekly_review, name="team-review"),
    path(
        "teams/<slug:team>/review/download",
        review_views.review_download,
        name="team-review-download",
    ),
    path("agents/new", catalog_views.agent_create, name="agent-create"),
    path("agents/<slug:slug>/edit", catalog_views.agent_edit, name="agent-edit"),
    path("agents/<slug:slug>/archive", catalog_views.agent_archive, name="agent-archive"),
    path("agents/<slug:slug>/unarchive", catalog_views.agent_unarchive, name="agent-unarchive"),
    path("agents/<slug:slug>/admin/", catalog_views.agent_admin, name="agent-admin"),
    path("agents/<slug:slug>/keys/new", catalog_views.key_create, name="key-create"),
    path(
        "agents/<slug:slug>/keys/<int:key_id>/rotate", catalog_views.key_rotate, name="key-rotate"
    ),
    path(
        "agents/<slug:slug>/keys/<int:key_id>/revoke", catalog_views.key_revoke, name="key-revoke"
    ),
    # An agent's upstream MCP servers (issue 12); the endpoint itself is /mcp/ (console.asgi).
    path("agents/<slug:slug>/mcp/", mcp_views.mcp_servers, name="agent-mcp"),
    path("agents/<slug:slug>/mcp/add", mcp_views.mcp_server_add, name="agent-mcp-add"),
    path(
        "agents/<slug:slug>/mcp/<int:server_id>/remove",
        mcp_views.mcp_server_remove,
        name="agent-mcp-remove",
    ),
    path("agents/<slug:slug>/versions/diff/", version_views.diff, name="version-diff"),
    # The policy editor (issue 11): a new draft, and a draft's rules edited.
    path("agents/<slug:slug>/versions/new", editor_views.version_new, name="version-new"),
    path(
        "agents/<slug:slug>/versions/<int:number>/edit/",
        editor_views.version_edit,
        name="version-edit",
    ),
    path(
        "agents/<slug:slug>/versions/<int:number>/dry-run/",
        version_views.dry_run,
        name="version-dry-run",
    ),
    # The rollout (issue 11): the page, publishing, the moves, and publish requests.
    path("agents/<slug:slug>/rollout/", rollout_views.rollout, name="agent-rollout"),
    path("agents/<slug:slug>/rollout/publish", rollout_views.publish, name="rollout-publish"),
    *(
        path(
            f"agents/<slug:slug>/rollout/{move}",
            rollout_views.change,
            {"move": move},
            name=f"rollout-{move}",
        )
        for move in rollout_views.MOVES
    ),
    *(
        path(
            f"agents/<slug:slug>/rollout/requests/<int:publish_id>/{verdict}",
            rollout_views.publish_decide,
            {"verdict": verdict},
            name=f"rollout-request-{verdict}",
        )
        for verdict in ("approve", "reject")
    ),
    path("agents/<slug:slug>/kpis/", kpi_views.agent_kpis, name="agent-kpis"),
    path("kpis/", kpi_views.fleet_kpis, name="kpis"),
    # Alert rules and circuit breakers (issue 14).
    path("alerts/", alert_views.alert_list, name="alerts"),
    path("alerts/new", alert_views.alert_create, name="alert-create"),
    path("alerts/<int:rule_id>/", alert_views.alert_detail, name="alert"),
    path("alerts/<int:rule_id>/edit", alert_views.alert_edit, name="alert-edit"),
    path(
        "alerts/<int:rule_id>/disable",
        alert_views.alert_enabled,
        {"enabled": False},
        name="alert-disable",
    ),
    path(
        "alerts/<int:rule_id>/enable",
        alert_views.alert_enabled,
        {"enabled": True},
        name="alert-enable",
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
    path("live/parts", console_views.live_parts, name="live-parts"),
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
    # Probes and metrics: answered by console.health.ProbeMiddleware before any other
    # middleware; named here so they can be reversed and are walked by the tests.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", telemetry.metrics, name="metrics"),
    # Browsers ask for /favicon.ico on their own; answer instead of logging a 404 each time.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("audit/", include("audit.urls")),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # The API for remote agents (django-ninja): its OpenAPI document and docs are under it.
    path("api/v1/", api.urls()),
    # The API answers JSON, even a 404 — for any rest of the address, control characters
    # and line breaks included (`.` alone stops at a decoded %0A and Django's HTML 404 answers).
    re_path(r"^api/(?P<rest>(?s:.*))$", api.not_found),
]
