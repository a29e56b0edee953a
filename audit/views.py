"""The compliance officer's audit trail screens: the filtered list, one event, and the
decision chain of a run or of one action. Read-only: every view is GET."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, QueryDict
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit import selectors
from audit.evidence import integrity
from audit.filters import AuditFilter
from console.http import HtmxHttpRequest

NO_AUDIT_ACCESS = "You may not read the audit trail."
# The page shows the start of a record this long or longer; the export carries it whole.
BODY_SHOWN = 20_000
BODY_CUT = "The record is longer than this page shows; an export of it carries every byte."


@require_GET
@login_required
def events(request: HtmxHttpRequest) -> HttpResponse:
    if not selectors.can_browse(request.user):
        raise PermissionDenied(NO_AUDIT_ACCESS)
    form = AuditFilter(request.GET, user=request.user)
    # A malformed filter shows its message and no rows: never a guess at what was meant.
    page = selectors.audit_page(request.user, form.cleaned_data) if form.is_valid() else None
    context = {
        "form": form,
        "page": page,
        "integrity": None if request.htmx else integrity(),  # the rows alone show no badge
        "can_export": request.user.has_perm("audit.export_auditevent"),
        "can_sign": request.user.has_perm("audit.sign_checkpoint"),
        **_links(request.GET, page),
    }
    template = "audit/events.html#rows" if request.htmx else "audit/events.html"
    return render(request, template, context, status=400 if page is None else 200)


def _links(params: QueryDict, page: selectors.AuditPage | None) -> dict[str, Any]:
    """Query strings for the pagers and the export: the filters as given, new cursor."""
    filters = params.copy()
    filters.pop("before", None)
    older = filters.copy()
    if page is not None and page.older is not None:
        older["before"] = str(page.older)
    return {
        "filter_query": filters.urlencode(),
        "older_query": older.urlencode(),
        # The export form posts the same filters (hidden fields).
        "export_filters": [(k, v) for k, values in filters.lists() for v in values],
    }


@require_GET
@login_required
def event(request: HtmxHttpRequest, seq: int) -> HttpResponse:
    found = selectors.event_for_user(request.user, seq)
    context = {
        "row": selectors.rows_for([found])[0],
        "e": found,
        "step": selectors.step_of(found),
        "body_shown": BODY_SHOWN,
        "body_cut": BODY_CUT,
    }
    return render(request, "audit/event.html", context)


@require_GET
@login_required
def run_chain(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    chain = selectors.decision_chain(request.user, run_id)
    return render(request, "audit/chain.html", {"chain": chain})


@require_GET
@login_required
def action_chain(request: HtmxHttpRequest, run_id: int, step: int) -> HttpResponse:
    chain = selectors.decision_chain(request.user, run_id, step=step)
    return render(request, "audit/chain.html", {"chain": chain})
