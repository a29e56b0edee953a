"""A team's approver analytics and weekly exception review (with its download): for the
team's supervisors and compliance only (agents.permissions.may_review_team). Someone who
cannot see the team gets 404, someone who sees it without leading or auditing it 403."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from agents import kpis
from agents.approver_stats import approver_stats
from agents.models import Team
from agents.permissions import NOT_A_REVIEWER, may_review_team, team_for_user
from agents.review import (
    COLUMNS,
    Week,
    current_week,
    last_complete_week,
    review,
    week_named,
)
from audit.services import Actor, audit_record
from audit.verbs import Verb
from console.http import signed_in

FORMATS = ("csv", "json")
# A cell a spreadsheet would take for a formula: a rejecter's reason or an upstream's error
# text must not run in the reader's spreadsheet (OWASP's CSV injection), so it is written
# after an apostrophe, which the spreadsheet shows as text. The JSON carries it as it is.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


BAD_FORMAT = "Download the review as csv or json."


def _team(request: HttpRequest, slug: str) -> Team:
    team = team_for_user(request.user, slug)
    if not may_review_team(request.user, team):
        raise PermissionDenied(NOT_A_REVIEWER)
    return team


@require_GET
@login_required
def approvers(request: HttpRequest, team: str) -> HttpResponse:
    found = _team(request, team)
    error = ""
    try:
        window = kpis.window_named(request.GET.get("window") or kpis.DEFAULT_WINDOW)
    except ValueError as exc:
        window, error = kpis.window_named(kpis.DEFAULT_WINDOW), str(exc)
    context = {
        "team": found,
        "window": window,
        "windows": list(kpis.WINDOWS),
        "error": error,
        "stats": approver_stats(found, window),
    }
    return render(request, "teams/approvers.html", context, status=400 if error else 200)


def _week(request: HttpRequest, data: QueryDict | None = None) -> tuple[Week, str]:
    """The week the request names (the last complete one when it names none), and an
    error for a malformed or future one."""
    named = (request.GET if data is None else data).get("week", "")
    if not named:
        return last_complete_week(), ""
    try:
        return week_named(named), ""
    except ValueError as exc:
        return last_complete_week(), str(exc)


@require_GET
@login_required
def weekly_review(request: HttpRequest, team: str) -> HttpResponse:
    found = _team(request, team)
    week, error = _week(request)
    context: dict[str, Any] = {
        "team": found,
        "error": error,
        "week": week,
        "review": None if error else review(found, week),
        "current": current_week(),
        "last_complete": last_complete_week(),
    }
    return render(request, "teams/review.html", context, status=400 if error else 200)


# A POST with its CSRF token, as the audit trail's own export: taking the report writes
# to the trail, so another site must not be able to make a lead's browser take one.
@require_POST
@login_required
def review_download(request: HttpRequest, team: str) -> HttpResponse:
    found = _team(request, team)
    week, error = _week(request, request.POST)
    form = request.POST.get("format") or "csv"
    if not error and form not in FORMATS:
        error = BAD_FORMAT
    if error:
        return HttpResponse(error, status=400, content_type="text/plain; charset=utf-8")
    base = request.build_absolute_uri("/").rstrip("/")
    rows = [item.row(week, base) for item in review(found, week).items]
    name = f"baton-review-{found.slug}-{week.name}.{form}"
    with transaction.atomic():
        # The report is evidence taken out of Baton: who took which team's week, as what.
        audit_record(
            verb=Verb.REVIEW_EXPORTED,
            actor=Actor.user(signed_in(request)),
            subject_type="team",
            subject_id=found.pk,
            team=found,
            payload={"team": found.slug, "week": week.name, "format": form, "rows": len(rows)},
        )
    if form == "json":
        body = json.dumps(
            {
                "team": found.slug,
                "week": week.name,
                "start": week.start.isoformat(),
                "end": week.end.isoformat(),
                "rows": rows,
            },
            indent=1,
        )
        response = HttpResponse(body, content_type="application/json")
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
